"""``python -m inference.compare``: paired per-image differences of reports on the same images, and its refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from inference.compare import main
from inference.reports.report import write_per_image

from conftest import REPO

IMAGES = {"dataset": "mnist", "split": "test", "binarize": "dynamic", "test_seed": 0}


def write_report(folder: Path, log_px, elbo, ais=None, num_samples: int = 5000, **fields) -> Path:
    """A report folder as ``inference.evaluate`` writes it: ``report.json`` and ``per_image.csv`` (by its writer)."""
    folder.mkdir(parents=True)
    n = len(log_px)
    summary = {**IMAGES, "n_images": n, "num_samples": num_samples, "model": {"likelihood": "bernoulli"}, **fields}
    (folder / "report.json").write_text(json.dumps(summary))
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    est = SimpleNamespace(log_px=t(log_px), elbo=t(elbo), khat=t([0.3] * n), ess=t([100.0] * n))
    write_per_image(folder / "per_image.csv", est, None if ais is None else SimpleNamespace(log_px=t(ais),
                                                                                             se=t([0.1] * len(ais))))
    return folder


@pytest.fixture
def two_reports(tmp_path) -> tuple[Path, Path]:
    base = write_report(tmp_path / "base", [-100.0, -90.0, -95.0, -85.0], [-104.0, -93.0, -99.0, -88.0],
                        ais=[-99.5, -89.0, -94.0])
    other = write_report(tmp_path / "other", [-99.0, -88.0, -95.5, -84.0], [-103.0, -92.5, -99.0, -86.0],
                         ais=[-99.0, -88.0])
    return base, other


def test_paired_differences_match_a_hand_computation(two_reports, tmp_path, capsys):
    base, other = two_reports
    assert main([str(base), str(other), "--out", str(tmp_path / "cmp.json")]) == 0
    result = json.loads((tmp_path / "cmp.json").read_text())
    d = result["comparisons"][0]["difference"]
    # log p(x): d = 1, 2, -0.5, 1; mean 0.875; sum of squared deviations 3.1875, sd = sqrt(3.1875 / 3)
    assert d["log_px"]["n"] == 4 and d["log_px"]["mean"] == pytest.approx(0.875)
    assert d["log_px"]["sd"] == pytest.approx(math.sqrt(3.1875 / 3))
    assert d["log_px"]["se"] == pytest.approx(math.sqrt(3.1875 / 3) / 2)
    # ELBO: d = 1, 0.5, 0, 2; mean 0.875; deviations 0.125, -0.375, -0.875, 1.125 -> 2.1875
    assert d["elbo"]["mean"] == pytest.approx(0.875) and d["elbo"]["se"] == pytest.approx(math.sqrt(2.1875 / 3) / 2)
    # AIS on the images both ran it on (0 and 1): d = 0.5, 1.0
    assert d["ais_log_px"] == pytest.approx({"mean": 0.75, "sd": math.sqrt(0.125), "se": 0.25, "n": 2})
    assert result["images"] == {**IMAGES, "n_images": 4} and result["notes"] == []
    assert result["baseline"]["log_px"]["mean"] == pytest.approx(-92.5)
    table = capsys.readouterr().out
    assert "+0.875 ± 0.515" in table and "+0.750 ± 0.250 (n = 2)" in table and f"`{other}`" in table
    assert main([str(base), str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result


def test_a_run_folder_holding_its_report_and_several_others(tmp_path, capsys):
    base = write_report(tmp_path / "run" / "report", [-1.0, -2.0], [-2.0, -3.0])
    same = write_report(tmp_path / "same", [-1.0, -2.0], [-2.0, -3.0], num_samples=100)
    better = write_report(tmp_path / "better", [-0.5, -1.0], [-1.0, -2.5])
    assert main([str(tmp_path / "run"), str(same), str(better), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baseline"]["report"] == str(base)
    assert [c["difference"]["log_px"]["mean"] for c in result["comparisons"]] == [0.0, 0.75]
    assert result["comparisons"][0]["difference"]["ais_log_px"] is None
    assert any("different K" in note for note in result["notes"])


def test_the_module_runs_from_the_command_line(two_reports):
    base, other = two_reports
    done = subprocess.run([sys.executable, "-m", "inference.compare", str(base), str(other)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "| report | K |" in done.stdout and done.stderr == ""


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and captured.out == "", captured
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(two_reports, tmp_path, capsys):
    base, other = two_reports
    assert main([str(base), str(tmp_path / "nowhere")]) == 2
    assert _error_line(capsys) == f"error: {tmp_path / 'nowhere'}: no such folder"
    (tmp_path / "empty").mkdir()
    assert main([str(base), str(tmp_path / "empty")]) == 2
    assert "holds no report.json" in _error_line(capsys)

    damaged = write_report(tmp_path / "damaged", [-1.0] * 4, [-2.0] * 4)
    (damaged / "report.json").write_text('{"dataset": "mnist", ')
    assert main([str(base), str(damaged)]) == 2
    assert "report.json is damaged: not JSON" in _error_line(capsys)

    short = write_report(tmp_path / "short", [-1.0] * 4, [-2.0] * 4)
    lines = (short / "per_image.csv").read_text().splitlines()
    (short / "per_image.csv").write_text("\n".join(lines[:-1]) + "\n")
    assert main([str(base), str(short)]) == 2
    assert "has 3 images but its report.json says 4" in _error_line(capsys)

    garbled = write_report(tmp_path / "garbled", [-1.0] * 4, [-2.0] * 4)
    (garbled / "per_image.csv").write_text((garbled / "per_image.csv").read_text().replace("-1,", "oops,", 1))
    assert main([str(base), str(garbled)]) == 2
    assert "log_px at line 2 is 'oops', not a number" in _error_line(capsys)

    assert main([str(base)]) == 2
    assert "at least two report folders" in _error_line(capsys)


def test_reports_on_other_images_are_refused(two_reports, tmp_path, capsys):
    base, _ = two_reports
    reseeded = write_report(tmp_path / "reseeded", [-1.0] * 4, [-2.0] * 4, test_seed=1)
    assert main([str(base), str(reseeded)]) == 2
    assert _error_line(capsys) == (f"error: {reseeded} is not on the test images of {base}: test_seed 1 (baseline 0); "
                                   "a paired comparison needs the same images")
    fewer = write_report(tmp_path / "first-3", [-1.0] * 3, [-2.0] * 3)
    assert main([str(base), str(fewer)]) == 2
    assert _error_line(capsys).endswith("n_images 3 (baseline 4); evaluate both with the same --test-limit")
    fewer = write_report(tmp_path / "fewer", [-1.0] * 3, [-2.0] * 3, binarize="static")
    assert main([str(base), str(fewer)]) == 2
    assert "binarize 'static' (baseline 'dynamic'); n_images 3 (baseline 4)" in _error_line(capsys)
    folder = {"dataset": "folder:/data/faces"}
    a = write_report(tmp_path / "folder-a", [-1.0] * 2, [-2.0] * 2, **folder)
    b = write_report(tmp_path / "folder-b", [-1.0] * 2, [-2.0] * 2, **folder)
    assert main([str(a), str(b)]) == 2
    assert "its dataset folder:/data/faces is split by test_fraction, split_seed" in _error_line(capsys)
    assert not (tmp_path / "cmp.json").exists()


def test_folder_reports_that_record_their_split_are_compared(tmp_path, capsys):
    split = {"dataset": "array:/data/x.npy", "test_fraction": 0.1, "split_seed": 0, "image_size": None,
             "channels": None, "channels_first": False, "held_out_from": 500}
    a = write_report(tmp_path / "a", [-1.0, -3.0], [-2.0, -4.0], **split)
    b = write_report(tmp_path / "b", [-1.5, -2.0], [-2.0, -4.0], **split)
    assert main([str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["comparisons"][0]["difference"]["log_px"]["mean"] == pytest.approx(0.25)
    c = write_report(tmp_path / "c", [-1.0, -3.0], [-2.0, -4.0], **{**split, "split_seed": 1})
    assert main([str(a), str(c)]) == 2
    assert "split_seed 1 (baseline 0)" in _error_line(capsys)
