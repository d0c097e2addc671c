"""More than one process: ``torchrun`` shares out the report's work and the report stays the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inference.svi import train
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.distributed import Group, current, sharded_map

from conftest import REPO

TIMEOUT = 600  # a hung rank fails the test instead of hanging CI


def test_one_process_is_rank_0_of_1_and_sharded_map_is_a_plain_map():
    assert current() == Group(0, 1) and current().is_main
    assert sharded_map(lambda v: v * v, [3, 1, 2]) == [9, 1, 4]


def test_training_under_torchrun_is_refused_in_one_line_until_it_is_built(tmp_path, capsys, monkeypatch):
    from inference import svi

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert svi.main(["--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training under torchrun") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def _flatten(report: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_evaluation_sharded_over_two_processes_equals_one_process(mnist_root, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(model=ModelConfig(z_dim=4, hidden_dims=(32,)), preset=None, data_dir=str(mnist_root),
                      train_limit=1000, test_limit=200, epochs=1, device="cpu", out=str(run)), progress=False)
    flags = ["--num-samples", "100", "--test-limit", "230", "--batch-size", "50", "--gaps", "--gap-limit", "60",
             "--ais-steps", "5", "--ais-chains", "3", "--ais-limit", "120", "--bdmc", "60", "--device", "cpu",
             "--no-progress"]
    # one thread in each process, as torchrun gives its workers: float reductions then run in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DATA": str(mnist_root),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    single = subprocess.run([sys.executable, "-m", "inference.evaluate", str(run), *flags, "--out", str(tmp_path / "one")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-2000:]
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "inference.evaluate", str(run),
                              *flags, "--out", str(tmp_path / "two")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert sharded.stdout.count("# Marginal-likelihood report") == 1  # rank 0 alone prints it
    one = _flatten(json.loads((tmp_path / "one" / "report.json").read_text()))
    two = _flatten(json.loads((tmp_path / "two" / "report.json").read_text()))
    assert (one.pop("processes"), two.pop("processes")) == (1, 2)
    timings = [k for k in one if k.endswith("seconds") or k.startswith("seconds")]
    assert {"ais.seconds", "bdmc.seconds", "seconds", "seconds_log_px"} <= set(timings)
    for key in timings:
        one.pop(key), two.pop(key)
    assert one.keys() == two.keys()
    for key, value in one.items():
        if isinstance(value, float):
            assert two[key] == pytest.approx(value, rel=0, abs=1e-9), key
        else:
            assert two[key] == value, key
    assert (tmp_path / "one" / "per_image.csv").read_text() == (tmp_path / "two" / "per_image.csv").read_text()
