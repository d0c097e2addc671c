"""Variants: every family trains and evaluates; guides, objectives and the KL weight do what they claim."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from inference import svi
from inference.evaluate import evaluate
from inference.evaluate import main as evaluate_main
from inference.estimators.importance import estimate_log_marginal
from inference.training.objectives import make_elbo
from inference.svi import train
from inference.training.loop import kl_weight_at
from models import VAE
from models.linear import LinearGaussianVAE
from models.mixture_prior import MixturePriorVAE
from pyro_vae.checkpoint import load
from pyro_vae.config import ModelConfig, TrainConfig

SMALL = ["--epochs", "1", "--train-limit", "256", "--test-limit", "32", "--latent-dim", "6", "--hidden-dims", "48",
         "--batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("flags", [
    ["--guide", "full"],
    ["--guide", "iaf", "--flow-steps", "2"],
    ["--elbo", "iwae", "--num-particles", "4"],
    ["--elbo", "meanfield"],
    ["--likelihood", "gaussian", "--obs-scale", "0.3"],
    ["--likelihood", "gaussian-learned"],
    ["--likelihood", "continuous-bernoulli", "--kl-warmup", "1"],
    ["--arch", "conv", "--activation", "relu"],
    ["--preset", "burda2015-iwae", "--num-particles", "3"],
], ids=lambda flags: "-".join(f.strip("-") for f in flags))
def test_every_family_trains_from_the_cli_and_evaluates(mnist_root, tmp_path, flags):
    out = tmp_path / "run"
    assert svi.main([*SMALL, *flags, "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    assert evaluate_main([str(out), "--num-samples", "40", "--chunk-size", "20", "--test-limit", "32", "--gaps",
                          "--gap-limit", "8", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert math.isfinite(report["log_px"]["mean"]) and math.isfinite(report["elbo"]["mean"])
    assert report["log_px"]["mean"] >= report["elbo"]["mean"]
    assert all(math.isfinite(report["gaps"][k]) for k in ("approximation", "amortization", "total"))
    continuous = "--likelihood" in flags
    assert report["binarize"] == ("none" if continuous else "dynamic")
    assert ("not comparable with binarised-MNIST" in (out / "report" / "report.md").read_text()) == continuous


def _correlated_oracle(guide: str):
    torch.manual_seed(2)
    model = LinearGaussianVAE(x_dim=10, z_dim=3, noise_scale=0.5, guide=guide)
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 3) @ torch.tensor([[1.0, 0.9, 0.6], [0.0, 1.0, 0.8], [0.0, 0.0, 1.0]]))
    x = model.observation(torch.randn(64, 3)).sample()
    return model, x


def _fitted_gap(guide: str) -> float:
    pyro.clear_param_store()
    model, x = _correlated_oracle(guide)
    weight = model.weight.clone()
    fixed_model = poutine.block(model.model, hide=["weight", "bias"])  # the model is fixed: only the guide learns
    fit = SVI(fixed_model, model.guide, pyro.optim.Adam({"lr": 2e-2}), make_elbo("trace", num_particles=8))
    for _ in range(1500):
        fit.step(x)
    assert torch.equal(model.weight, weight)
    elbo = estimate_log_marginal(model.model, model.guide, x, num_samples=4000, ladder=(), seed=0).elbo
    return (model.exact_log_marginal(x) - elbo).mean().item()


def test_full_covariance_guide_closes_the_gap_that_a_diagonal_one_leaves():
    full, diagonal = _fitted_gap("full"), _fitted_gap("diagonal")
    assert abs(full) < 0.05, full
    assert diagonal > 0.2, diagonal


def test_iwae_objective_is_a_tighter_bound_than_the_elbo():
    model, x = _correlated_oracle("diagonal")
    exact = model.exact_log_marginal(x).sum().item()
    torch.manual_seed(0)
    iwae = -sum(make_elbo("iwae", num_particles=10).loss(model.model, model.guide, x) for _ in range(20)) / 20
    torch.manual_seed(0)
    elbo = -sum(make_elbo("trace", num_particles=10).loss(model.model, model.guide, x) for _ in range(20)) / 20
    assert elbo < iwae < exact


def test_gaussian_with_variance_c_equals_unit_weight_with_kl_weight_2c():
    """C = 1/(2c): the Gaussian-c loss is (SE + 2c KL) / (2c) + const, gradients and all."""
    c = 0.09
    torch.manual_seed(0)
    gaussian_c = VAE(z_dim=4, hidden_dims=(16,), likelihood="gaussian", obs_scale=math.sqrt(c))
    unit = VAE(z_dim=4, hidden_dims=(16,), likelihood="gaussian", obs_scale=math.sqrt(0.5))  # C = 1
    unit.load_state_dict(gaussian_c.state_dict())
    x = torch.rand(8, 784)

    def loss_and_grads(model, kl_weight):
        torch.manual_seed(1)
        loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x, kl_weight)
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    loss_c, grads_c = loss_and_grads(gaussian_c, 1.0)
    loss_1, grads_1 = loss_and_grads(unit, 2 * c)
    for g_c, g_1 in zip(grads_c, grads_1):  # equal up to float32 rounding, relative to each tensor's scale
        assert (g_c - g_1 / (2 * c)).abs().max() <= 1e-5 * g_c.abs().max()
    constant = 784 * len(x) * (0.5 * math.log(2 * math.pi * c) - math.log(math.pi) / (4 * c))
    assert (loss_c - loss_1 / (2 * c)).item() == pytest.approx(constant, rel=1e-4)


def test_kl_warmup_schedule():
    config = TrainConfig(kl_weight=0.5, kl_warmup=2)
    assert kl_weight_at(config, epoch=0, step=4, num_batches=10) == pytest.approx(0.5 * 0.25)
    assert kl_weight_at(config, epoch=1, step=9, num_batches=10) == pytest.approx(0.5)
    assert kl_weight_at(config, epoch=5, step=0, num_batches=10) == pytest.approx(0.5)
    assert kl_weight_at(TrainConfig(kl_weight=0.3), 0, 0, 10) == 0.3


def test_presets_set_their_training_and_report_the_published_number(mnist_root, tmp_path):
    iwae = svi.config_from_args(svi.build_parser().parse_args(["--preset", "burda2015-iwae"]))
    assert iwae.elbo == "iwae" and iwae.num_particles == 50 and iwae.model == ModelConfig()
    overridden = svi.config_from_args(svi.build_parser().parse_args(["--preset", "burda2015-iwae", "--num-particles", "5"]))
    assert overridden.num_particles == 5
    out = tmp_path / "run"
    assert svi.main(["--epochs", "1", "--train-limit", "128", "--test-limit", "8", "--device", "cpu", "--no-progress",
                     "--data-dir", str(mnist_root), "--out", str(out)]) == 0  # burda2015 as published
    report = evaluate(out, num_samples=20, test_limit=8, device="cpu", progress=False)
    assert report["published"]["nll"] == 86.76
    assert "Published for preset `burda2015`: NLL 86.76" in (out / "report" / "report.md").read_text()


def test_write_a_variant_mixture_prior_trains_and_evaluates_unchanged(mnist_root, tmp_path):
    config = TrainConfig(model=ModelConfig(z_dim=6, hidden_dims=(48,)), preset=None, data_dir=str(mnist_root),
                         train_limit=256, test_limit=32, epochs=1, batch_size=64, device="cpu", out=str(tmp_path / "run"))
    result = train(config, progress=False, model=MixturePriorVAE(z_dim=6, hidden_dims=(48,), num_components=5))
    assert -700 < result.history[0]["test_elbo"] < 0
    report = evaluate(tmp_path / "run", num_samples=40, test_limit=32, device="cpu", progress=False)
    assert report["log_px"]["mean"] >= report["elbo"]["mean"] and "published" not in report
    vae, _ = load(tmp_path / "run", device="cpu")
    assert isinstance(vae, MixturePriorVAE) and vae.num_components == 5
