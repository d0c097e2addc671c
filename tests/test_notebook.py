"""The quickstart notebook runs top to bottom (tiny budget)."""

import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO


def test_quickstart_notebook_runs(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(mnist_root))
    monkeypatch.setenv("PYRO_VAE_QUICKSTART_EPOCHS", "1")
    monkeypatch.setenv("PYRO_VAE_QUICKSTART_TRAIN_LIMIT", "512")
    monkeypatch.setenv("PYRO_VAE_QUICKSTART_TEST_LIMIT", "256")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("parameters identical: True" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # ELBO curve, samples, reconstructions
    assert (tmp_path / "runs" / "quickstart" / "checkpoint.pt").exists()
