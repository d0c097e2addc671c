"""Every notebook runs top to bottom with the tiny budget, and says something true; the committed ones are executed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = ("01_quickstart.ipynb", "02_pca_autoencoder_vae.ipynb", "03_reconstruction_vs_regularity.ipynb",
             "04_marginal_likelihood.ipynb")
PNG = b"\x89PNG\r\n\x1a\n"


def execute(name: str, tmp_path: Path, mnist_root: Path, monkeypatch) -> list[dict]:
    """Run notebook ``name`` in ``tmp_path`` with the tiny budget; return its code cells' outputs."""
    monkeypatch.setenv("PYRO_VAE_DATA", str(mnist_root))
    monkeypatch.setenv("PYRO_VAE_NOTEBOOK_SIZE", "tiny")
    monkeypatch.delenv("PYRO_VAE_NOTEBOOK_RUN", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def images_shown(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def text_of(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs)


def assert_pngs(folder: Path, *names: str) -> None:
    for name in names:
        assert (folder / name).read_bytes().startswith(PNG), name


def test_the_notebooks_are_the_four_of_the_story():
    assert sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")) == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_executed_with_their_command_and_machine(name):
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code)
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert images_shown(outputs) >= 3
    intro = notebook.cells[0].source
    assert "PYRO_VAE_NOTEBOOK_SIZE=full jupyter execute --inplace notebooks/" + name in intro and "CPU" in intro
    assert text_of(outputs).startswith("full {")  # the stored outputs come from the full budget


def test_quickstart(mnist_root, tmp_path, monkeypatch):
    outputs = execute(NOTEBOOKS[0], tmp_path, mnist_root, monkeypatch)
    assert "parameters identical: True" in text_of(outputs)
    run = tmp_path / "runs" / "quickstart" / "tiny"
    assert (run / "checkpoint.pt").exists()
    assert images_shown(outputs) >= 5  # ELBO curve, samples, reconstructions, latent space, interpolation
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"test_rate", "test_distortion"} <= set(lines[-1])


def test_pca_autoencoder_vae(mnist_root, tmp_path, monkeypatch):
    outputs = execute(NOTEBOOKS[1], tmp_path, mnist_root, monkeypatch)
    out = tmp_path / "runs" / "02_pca_autoencoder_vae" / "tiny"
    results = json.loads((out / "results.json").read_text())
    # SVI on probabilistic PCA turned a random W into one spanning (nearly) PCA's subspace
    assert max(results["pca_angles_after"]) < 30 < min(results["pca_angles_before"])
    # without the KL term the encoder's sigma shrinks toward a point; with it, it stays wide
    assert results["autoencoder_median_sigma"] < results["vae_median_sigma"]
    # the reparameterisation trick: a gradient reaches the encoder through rsample, none through sample
    assert results["encoder_grad_rsample"] > 0 and results["encoder_grad_sample"] is None
    assert_pngs(out, "latent_maps.png", "random_codes.png", "interpolations.png", "vae_manifold.png")
    assert images_shown(outputs) >= 4


def test_reconstruction_vs_regularity(mnist_root, tmp_path, monkeypatch):
    outputs = execute(NOTEBOOKS[2], tmp_path, mnist_root, monkeypatch)
    out = tmp_path / "runs" / "03_reconstruction_vs_regularity" / "tiny"
    results = json.loads((out / "results.json").read_text())
    for c in (0.01, 0.1, 1.0):
        assert results[f"C fitted, c={c:g}"] == pytest.approx(1 / (2 * c), rel=1e-4)
    points = results["rate_distortion"]
    assert points["0.01"]["rate"] > points["1"]["rate"]  # a larger decoder variance buys less rate
    assert_pngs(out, "reconstructions_and_samples.png", "latent_maps.png", "rate_distortion.png")
    assert images_shown(outputs) >= 3


def test_marginal_likelihood(mnist_root, tmp_path, monkeypatch):
    outputs = execute(NOTEBOOKS[3], tmp_path, mnist_root, monkeypatch)
    out = tmp_path / "runs" / "04_marginal_likelihood" / "tiny"
    results = json.loads((out / "results.json").read_text())
    assert results["n_images"] == 50 and results["log_px"] >= results["elbo"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["ais"]["n_images"] == 20 and report["bdmc"]["n_images"] == 10 and "gaps" in report
    assert_pngs(out, "elbo.png", "elbo_vs_log_px.png", "ladder.png", "khat_images.png", "gaps.png")
    assert "log p(x) >=" in text_of(outputs)
    assert images_shown(outputs) >= 6
