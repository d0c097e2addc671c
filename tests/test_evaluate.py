"""The report CLI on a trained checkpoint, and its refusals."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import pytest
import torch

from inference import evaluate as evaluate_module
from inference.evaluate import EvaluateConfig, main
from inference.reports.report import khat_summary, trust_line
from inference.svi import main as train_main
from pyro_vae.errors import ConfigError

from conftest import cuda_only

REQUIRED = {"dataset", "split", "n_images", "binarize", "test_seed", "num_samples", "log_px", "nll", "bits_per_dim",
            "elbo", "elbo_gap", "iwae_ladder", "khat", "ess", "gaps", "seconds", "versions", "checkpoint"}
# 8 steps from PyTorch's start (--init as-built): from burda2015's, p(x|z) would still be the mean image, z nearly
# unused, and the BDMC bounds on its log p(x) equal to within their Monte Carlo noise (either may come out higher).
TRAIN = ["--epochs", "1", "--train-limit", "512", "--test-limit", "64", "--latent-dim", "8", "--hidden-dims", "64",
         "--batch-size", "64", "--device", "cpu", "--no-progress", "--init", "as-built"]


@pytest.fixture(scope="module")
def run_dir(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_main([*TRAIN, "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    return out


def test_report_cli_writes_the_promised_fields(run_dir, tmp_path):
    out = tmp_path / "report"
    status = main([str(run_dir), "--num-samples", "150", "--chunk-size", "40", "--batch-size", "16", "--test-limit", "40",
                   "--gaps", "--gap-limit", "16", "--seed", "0", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert REQUIRED <= set(report)
    assert report["n_images"] == 40 and report["num_samples"] == 150 and report["split"] == "test"
    assert report["dataset"] == "mnist" and report["binarize"] == "dynamic" and report["test_seed"] == 0
    assert report["nll"] == pytest.approx(-report["log_px"]["mean"])
    assert report["bits_per_dim"] == pytest.approx(report["nll"] / (784 * math.log(2)))
    assert report["log_px"]["mean"] >= report["elbo"]["mean"]
    assert report["elbo_gap"]["mean"] == pytest.approx(report["log_px"]["mean"] - report["elbo"]["mean"])
    assert report["log_px"]["se"] > 0 and report["elbo"]["se"] > 0
    ladder = report["iwae_ladder"]
    assert list(ladder) == ["1", "10", "100"] and list(ladder.values()) == sorted(ladder.values())
    assert ladder["1"] == pytest.approx(report["elbo"]["mean"])
    assert set(report["khat"]) == {"median", "p95", "frac_above_0_7"} and 0 <= report["khat"]["frac_above_0_7"] <= 1
    assert 1 <= report["ess"]["mean"] <= 150
    gaps = report["gaps"]
    assert gaps["n_images"] == 16
    assert gaps["total"] == pytest.approx(gaps["approximation"] + gaps["amortization"])
    assert gaps["amortization"] > 0
    assert report["checkpoint"]["sha256"] == hashlib.sha256((run_dir / "checkpoint.pt").read_bytes()).hexdigest()
    assert {"torch", "pyro-ppl", "arviz", "numpy", "python"} <= set(report["versions"])
    markdown = (out / "report.md").read_text()
    assert f"{report['nll']:.2f}" in markdown and report["trust"] in markdown
    assert report["trust"].split(":")[0] in {"Reliable", "Usable", "Unreliable"}
    for name in ("khat.png", "gaps.png", "ladder.png"):
        assert (out / name).stat().st_size > 0


@cuda_only
def test_the_report_on_cuda_scores_the_same_images_as_on_the_cpu(run_dir, tmp_path):
    """Same checkpoint, images and seed on both devices: every field is there, the images are the same ones (one
    binarisation, drawn on the CPU), and log p(x) differs by Monte Carlo noise only."""
    flags = [str(run_dir), "--num-samples", "400", "--chunk-size", "100", "--test-limit", "40", "--gaps", "--gap-limit",
             "8", "--ais-steps", "20", "--ais-chains", "4", "--ais-limit", "8", "--bdmc", "8", "--no-progress"]
    reports = {}
    for device in ("cpu", "cuda"):
        assert main([*flags, "--device", device, "--out", str(tmp_path / device)]) == 0
        reports[device] = json.loads((tmp_path / device / "report.json").read_text())
    cpu, cuda = reports["cpu"], reports["cuda"]
    assert REQUIRED <= set(cuda) and cuda["device"].startswith("cuda") and cuda["n_images"] == 40
    assert all(math.isfinite(cuda[k]["mean"]) for k in ("log_px", "elbo")) and "ais" in cuda and "bdmc" in cuda
    per_image = {d: [float(line.split(",")[1]) for line in (tmp_path / d / "per_image.csv").read_text().splitlines()[1:]]
                 for d in reports}
    differences = torch.tensor(per_image["cuda"]) - torch.tensor(per_image["cpu"])
    assert differences.abs().max() < 1.5  # K = 400 draws: a per-image Monte Carlo error well under a nat
    assert abs(differences.mean()) < 4 * differences.std() / math.sqrt(len(differences)) + 1e-3


def test_ais_and_bdmc_join_the_report_and_ais_is_as_tight_as_importance_sampling_at_comparable_cost(run_dir, tmp_path):
    """On a briefly trained MNIST VAE: AIS with T=40, C=4, 10 leapfrog steps and the pilot tuning (2,728 gradient
    evaluations per image, pilot included) against importance sampling with K = 2,400 draws, on the same 16
    images. At this budget the two bounds are level within their noise (paired mean AIS - IS from -0.44 to +0.29
    nats over four seeds, standard errors 0.11 to 0.22): AIS must not fall below IS by more than 3 standard
    errors of the paired difference."""
    out = tmp_path / "report"
    status = main([str(run_dir), "--num-samples", "2400", "--batch-size", "8", "--test-limit", "24", "--ais-steps", "40",
                   "--ais-chains", "4", "--ais-limit", "16", "--bdmc", "6", "--gaps", "--gap-limit", "8",
                   "--device", "cpu", "--out", str(out), "--no-progress"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    ais = report["ais"]
    assert {"log_px", "elbo_gap", "n_images", "num_steps", "num_chains", "leapfrog_steps", "acceptance",
            "tuning", "compiled", "compiled_form", "gradient_evaluations", "seconds"} <= set(ais)
    assert (ais["n_images"], ais["num_steps"], ais["num_chains"], ais["leapfrog_steps"]) == (16, 40, 4, 10)
    assert (ais["tuning"], ais["compiled"], ais["compiled_form"]) == ("pilot", True, "graphs")
    assert ais["gradient_evaluations"] == 4 * ((1 + (20 + 10 - 1) * 10) + (1 + (40 - 1) * 10))
    assert ais["elbo"]["mean"] <= ais["importance"]["mean"] and ais["elbo"]["mean"] <= ais["log_px"]["mean"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    paired = torch.tensor([float(r["ais_log_px"]) - float(r["log_px"]) for r in rows if r["ais_log_px"]])
    assert len(paired) == 16 and paired.mean() > -3 * paired.std() / math.sqrt(len(paired))
    assert ais["elbo_gap"]["mean"] == pytest.approx(ais["log_px"]["mean"] - ais["elbo"]["mean"])
    assert 0.45 < ais["acceptance"] < 0.85  # the step sizes are tuned toward 0.65 even at so short a schedule
    bdmc = report["bdmc"]
    assert {"lower", "upper", "gap", "n_images", "num_steps"} <= set(bdmc)
    assert (bdmc["n_images"], bdmc["num_steps"], bdmc["tuning"]) == (6, 40, "pilot")
    assert list(bdmc["ladder"]) == ["1", "4", "40"]
    assert bdmc["lower"]["mean"] <= bdmc["upper"]["mean"] and bdmc["gap"]["mean"] == pytest.approx(
        bdmc["upper"]["mean"] - bdmc["lower"]["mean"])
    assert bdmc["ladder"]["40"] < bdmc["ladder"]["1"]
    # one log p(x) for all three gaps: the best of the estimates computed on these images
    gaps = report["gaps"]
    assert gaps["log_px_source"] in {"AIS, 40 steps", "importance sampling from q", "importance sampling from q*"}
    assert gaps["total"] == pytest.approx(gaps["approximation"] + gaps["amortization"])
    markdown = (out / "report.md").read_text()
    assert f"log p(x) >= {ais['log_px']['mean']:.2f} nats" in markdown and "BDMC brackets the truth within" in markdown
    assert f"{ais['gradient_evaluations']:,} gradient evaluations per image" in markdown
    assert "potential compiled with its gradients (graphs)" in markdown
    assert (out / "ais.png").stat().st_size > 0


def test_the_same_seed_gives_the_same_report(run_dir, tmp_path):
    reports = []
    for name in ("a", "b"):
        evaluate_module.evaluate(run_dir, num_samples=60, chunk_size=25, batch_size=10, test_limit=20, device="cpu",
                                 out=tmp_path / name, progress=False)
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert reports[0]["log_px"] == reports[1]["log_px"] and reports[0]["khat"] == reports[1]["khat"]


def test_options_come_as_an_evaluate_config_or_by_name(run_dir, tmp_path):
    options = EvaluateConfig(num_samples=20, batch_size=4, test_limit=8, device="cpu", out=tmp_path / "a")
    given = evaluate_module.evaluate(run_dir, options, progress=False)
    named = evaluate_module.evaluate(run_dir, num_samples=20, batch_size=4, test_limit=8, device="cpu",
                                     out=tmp_path / "b", progress=False)
    assert given["log_px"] == named["log_px"] and given["n_images"] == 8 and given["batch_size"] == 4
    overridden = evaluate_module.evaluate(run_dir, options, test_limit=4, out=tmp_path / "c", progress=False)
    assert overridden["n_images"] == 4 and overridden["num_samples"] == 20
    with pytest.raises(TypeError, match="EvaluateConfig"):
        evaluate_module.evaluate(run_dir, 20)  # the options once taken in order: now by name
    with pytest.raises(ConfigError, match="--num-samples must be a positive integer"):
        EvaluateConfig(num_samples=0).validated()
    with pytest.raises(ConfigError, match="--bdmc needs --ais-steps"):
        evaluate_module.evaluate(run_dir, bdmc_images=2, out=tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_training_with_eval_samples_writes_a_report(mnist_root, tmp_path):
    out = tmp_path / "run"
    assert train_main([*TRAIN, "--test-limit", "20", "--data-dir", str(mnist_root), "--out", str(out),
                       "--eval-samples", "30"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["num_samples"] == 30 and report["n_images"] == 20


def test_a_checkpoint_of_another_shape_is_refused(run_dir, tmp_path, capsys):
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    payload["model_kwargs"]["z_dim"] = 9
    torch.save(payload, tmp_path / "checkpoint.pt")
    assert main([str(tmp_path / "checkpoint.pt"), "--num-samples", "5", "--device", "cpu", "--no-progress"]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_missing_checkpoint_is_refused(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_khat_summary_and_trust_line():
    good = khat_summary(torch.linspace(0.0, 0.45, 100, dtype=torch.float64))
    assert good["median"] == pytest.approx(0.225) and good["frac_above_0_7"] == 0
    assert trust_line(good).startswith("Reliable")
    usable = khat_summary(torch.cat([torch.full((995,), 0.6), torch.full((5,), 0.9)]).double())
    assert usable["frac_above_0_7"] == pytest.approx(0.005) and trust_line(usable).startswith("Usable")
    bad = khat_summary(torch.linspace(0.5, 1.5, 100, dtype=torch.float64))
    assert trust_line(bad).startswith("Unreliable")
    none = khat_summary(torch.full((3,), float("nan"), dtype=torch.float64))
    assert none["median"] is None and "could not be computed" in trust_line(none)
