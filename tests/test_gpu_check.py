"""benchmarks/gpu_check.py at toy sizes on the CPU (``--device cpu --tiny``), so the one command a GPU node runs
cannot rot between nodes: every stage ends with figures or an error, the files come back, and the protocol run
it brings back is continued by the next."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from inference.svi import main as train_main

from conftest import REPO

CHECK = REPO / "benchmarks" / "gpu_check.py"
STAGES = ("environment", "tests", "agreement", "throughput", "report", "training")


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], cwd=REPO, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def bundle(mnist_root, tmp_path_factory):
    """What gpu_bundle.sh makes, without the wheels (the packages here are used): data and a small checkpoint."""
    folder = tmp_path_factory.mktemp("bundle")
    (folder / "data").symlink_to(mnist_root)
    assert train_main(["--epochs", "1", "--train-limit", "1000", "--test-limit", "200", "--latent-dim", "8",
                       "--hidden-dims", "64", "--data-dir", str(mnist_root), "--out", str(folder / "run"),
                       "--no-progress"]) == 0
    return folder


def test_every_stage_reports_figures_or_an_error_and_the_next_node_continues_the_protocol_run(bundle, tmp_path):
    out = tmp_path / "out"
    done = _check("--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--tiny")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert set(results["stages"]) == set(STAGES)
    for name, stage in results["stages"].items():
        assert "error" in stage or len(stage) > 1, f"stage {name} recorded nothing"
    assert len(list(out.iterdir())) <= 8  # what a device call brings back
    env = results["stages"]["environment"]
    assert env["cuda_available"] is False and env["versions"]["torch"] and env["pyro"]

    # every CUDA test was collected and, here, skipped for want of CUDA
    summary = results["stages"]["tests"]["summary"]
    collected = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "cuda", "tests"],
                               cwd=REPO, capture_output=True, text=True).stdout
    assert summary["tests"] == summary["skipped"] == collected.count("::") > 0

    # the same device on both sides, the same seed: the same estimate; the compile check's error is measured
    agreement = results["stages"]["agreement"]
    assert agreement["importance_cpu_vs_device"]["max_abs_difference"] == 0
    assert all(0 <= row["max_gradient"] < agreement["tolerances"]["COMPILE_RTOL"] for row in agreement["compile_check"])
    assert "needs CUDA" in agreement["graph_check"]["error"]

    report = results["stages"]["report"]
    assert report["importance"]["n_images"] == 100 and report["importance"]["log_px"]["mean"] < 0
    assert report["ais"]["seconds_per_image"] > 0
    assert any(table for table in results["stages"]["throughput"]["train"]["tables"])

    training = results["stages"]["training"]
    assert training["default"]["epochs"] >= 1 and training["default"]["steps_per_second"] > 0
    first = training["burda2015"]["epochs"]
    assert first >= 1 and training["burda2015"]["exit"] == 143  # stopped by SIGTERM, checkpointed
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check: no GPU") and "## Targets" in markdown and "| burda2015 |" in markdown

    # the next node: the run brought back travels in the bundle and is resumed, not restarted; with no time
    # left for it, it still logs one epoch of its own before the SIGTERM
    next_bundle = tmp_path / "next"
    shutil.copytree(bundle, next_bundle, symlinks=True)
    shutil.copy(out / "burda2015_run.tar.gz", next_bundle / "burda2015_run.tar.gz")
    with tarfile.open(out / "burda2015_run.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    again = _check("--bundle", str(next_bundle), "--out", str(tmp_path / "out2"), "--device", "cpu", "--tiny",
                   "--stages", "training", "--budget-s", "20")  # burda's share: 1 s, less than Python's start
    assert again.returncode == 0, again.stderr[-2000:]
    burda = json.loads((tmp_path / "out2" / "gpu_check.json").read_text())["stages"]["training"]["burda2015"]
    assert burda["resumed_from_epoch"] == first and burda["epochs"] > first, burda.get("tail")


def test_a_bundle_without_a_checkpoint_or_an_unknown_stage_is_one_line(tmp_path):
    done = _check("--bundle", str(tmp_path), "--out", str(tmp_path / "out"), "--tiny")
    assert done.returncode == 2 and done.stderr.startswith("error:") and "gpu_bundle.sh" in done.stderr
    assert not (tmp_path / "out").exists()
    done = _check("--bundle", str(tmp_path), "--out", str(tmp_path / "out"), "--stages", "tests,nope")
    assert done.returncode == 2 and "unknown stage nope" in done.stderr
