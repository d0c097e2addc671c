"""The whole toolchain on models written from scratch against the contract (`models.base.LatentModel`): other
site names, several latent sites, two stochastic layers, no attribute of `VAE`. Training, resume, the report (with
the gaps, AIS and BDMC), per-site rate and active units, and the figures."""

from __future__ import annotations

import dataclasses
import math

import pyro
import pytest
import torch

from inference.estimators import predictive
from inference.estimators.active_units import active_units
from inference.evaluate import evaluate
from inference.figures import figures_for_run
from inference.estimators.gaps import inference_gaps
from inference.svi import train
from models import VAE, LinearGaussianVAE
from models.base import LatentModel
from pyro_vae.config import TrainConfig

from user_models import USER_MODELS

LATENTS = {"style-content": {"style": 2, "content": 6}, "two-layer": {"bottom": 16, "top": 8}}


@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_a_user_model_trains_resumes_reports_and_draws(name, mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    config = TrainConfig(epochs=1, train_limit=600, test_limit=100, batch_size=100, data_dir=str(mnist_root),
                         out=str(out))
    first = train(config, model=USER_MODELS[name](), progress=False)
    assert not first.interrupted and len(first.history) == 1
    assert first.config.elbo == ("trace" if name == "two-layer" else "meanfield")  # the run records what it trained
    resumed = train(dataclasses.replace(first.config, epochs=2), resume=True, progress=False)
    assert len(resumed.history) == 2 and type(resumed.model) is USER_MODELS[name]
    printed = capsys.readouterr().out
    assert "a lower bound on log p(x)" in printed  # Bernoulli pixels: a probability, whatever the model's attributes
    if name == "two-layer":  # a bottom-up guide against a top-down model: the closed-form KL does not apply
        assert "note: training --elbo trace, not the default meanfield" in printed
    assert "no latent map or interpolations: the model has no central code" in printed
    figures = out / "figures"
    assert (figures / "samples.png").stat().st_size > 0 and (figures / "reconstructions.png").stat().st_size > 0
    assert not (figures / "latent.png").exists() and not (figures / "manifold.png").exists()

    report = evaluate(out, num_samples=60, test_limit=16, batch_size=8, gaps=True, gap_limit=8, ais_steps=5,
                      ais_chains=2, bdmc_images=4, device="cpu", progress=False)
    assert report["log_px"]["mean"] >= report["elbo"]["mean"]
    sites = report["latent_sites"]
    assert set(sites) == set(LATENTS[name])
    assert all(sites[s]["units"] == n and 0 <= sites[s]["active_units"] <= n for s, n in LATENTS[name].items())
    assert sum(s["rate"]["mean"] for s in sites.values()) > 0
    assert "AutoNormal" in report["gaps"]["q_star"] and report["gaps"]["n_images"] == 8
    assert report["gaps"]["total"] == pytest.approx(report["gaps"]["approximation"] + report["gaps"]["amortization"])
    assert math.isfinite(report["ais"]["log_px"]["mean"]) and report["bdmc"]["n_images"] == 4
    markdown = (out / "report" / "report.md").read_text()
    assert all(f"| {s} |" in markdown for s in LATENTS[name]) and "AutoNormal" in markdown

    written = figures_for_run(out, out=tmp_path / "again", test_limit=50, device="cpu")  # from the checkpoint alone
    assert {p.name for p in written} == {"samples.png", "reconstructions.png", "elbo.png"}


def test_the_rate_splits_by_site_and_sums_to_the_rate():
    from inference.estimators.rate_distortion import rate_distortion

    model = USER_MODELS["two-layer"]()
    x = torch.bernoulli(torch.full((40, 784), 0.3))
    terms = rate_distortion(model.model, model.guide, x, seed=3)
    assert set(terms.site_rates) == {"bottom", "top"}
    assert torch.allclose(terms.site_rates["bottom"] + terms.site_rates["top"], terms.rate)
    # each site's term is log q - log p at the draw: recompute one by hand from traces on the same seed
    torch.manual_seed(3)
    guide_trace = pyro.poutine.trace(model.guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    by_hand = (guide_trace.nodes["top"]["fn"].log_prob(guide_trace.nodes["top"]["value"])
               - model_trace.nodes["top"]["fn"].log_prob(model_trace.nodes["top"]["value"]))
    assert torch.allclose(terms.site_rates["top"], by_hand.double(), atol=1e-4)


def test_active_units_are_the_variance_over_images_of_the_exact_posterior_mean():
    """Probabilistic PCA's guide mean is linear in x, so Cov_x(E_q[z]) is known from the encoder's weights."""
    torch.manual_seed(0)
    model = LinearGaussianVAE(x_dim=6, z_dim=3, noise_scale=0.5).double()
    with torch.no_grad():
        model.encoder.weight[:3] = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0.05, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0.3]],
                                                dtype=torch.float64)
    x = torch.randn(5000, 6, dtype=torch.float64)
    found = active_units(model.model, model.guide, x, num_draws=4)["z"]
    means = model.encode(x)
    assert torch.allclose(found.activity, means.var(0, unbiased=False), rtol=1e-6)
    assert found.units == 3 and found.active == 2  # variances about 1, 0.0025 and 0.09 against 0.01


def test_prior_samples_and_reconstructions_from_traces_are_the_vaes_own():
    vae = VAE(z_dim=4, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((10, 784), 0.4))
    torch.manual_seed(5)
    own = vae.generate(12)
    torch.manual_seed(5)
    assert torch.allclose(predictive.prior_means(vae.model, vae.guide, x, 12), own)  # the same draws, every latent
    torch.manual_seed(6)
    z = vae.posterior(x).sample()
    torch.manual_seed(6)
    assert torch.allclose(predictive.guide_reconstructions(vae.model, vae.guide, x), vae.decode(z))


def test_whether_log_p_x_is_a_probability_is_read_from_the_observed_distribution():
    x = torch.bernoulli(torch.full((4, 784), 0.5))
    binary = VAE(z_dim=2, hidden_dims=(8,))
    assert predictive.observation_is_discrete(binary.model, binary.guide, x) is True
    grey = VAE(z_dim=2, hidden_dims=(8,), likelihood="continuous-bernoulli")
    assert predictive.observation_is_discrete(grey.model, grey.guide, x * 0.5) is False
    style = USER_MODELS["style-content"]()
    assert predictive.observation_is_discrete(style.model, style.guide, x) is True
    assert predictive.observed_site(style.model, style.guide, x) == "image"


class _Renamed(LatentModel):
    """Probabilistic PCA's programs under another latent name, without the encoder/posterior_head capability."""

    def __init__(self, inner: LinearGaussianVAE):
        super().__init__()
        self.inner = inner

    def init_kwargs(self):
        return {}

    def model(self, x, kl_weight=1.0):
        return _rename(self.inner.model, x)

    def guide(self, x, kl_weight=1.0):
        return _rename(self.inner.guide, x)


def _rename(program, x):
    """Run ``program`` with its site ``z`` called ``code``."""
    from pyro.poutine.messenger import Messenger

    class Rename(Messenger):
        def _pyro_sample(self, msg):
            if msg["name"] == "z":
                msg["name"] = "code"

    with Rename():
        return program(x)


def test_gaps_of_any_model_fit_a_diagonal_normal_over_its_latents_and_find_no_approximation_gap_when_it_holds():
    """Orthogonal columns of W: the exact posterior is a diagonal Normal, so q* (AutoNormal) holds it: the
    approximation gap vanishes and the whole gap is amortization (the encoder here is deliberately off)."""
    torch.manual_seed(0)
    inner = LinearGaussianVAE(x_dim=5, z_dim=2, noise_scale=0.6).double()
    with torch.no_grad():
        inner.weight.copy_(torch.tensor([[1.0, 0], [0, 1.5], [0, 0], [1.0, 0], [0, 0]], dtype=torch.float64))
        inner.encoder.weight.mul_(0.1)
    x = inner.observation(torch.randn(30, 2, dtype=torch.float64)).sample()
    model = _Renamed(inner)
    gaps = inference_gaps(model, x, num_samples=2000, seed=0, max_steps=3000)
    assert "AutoNormal" in gaps.family
    assert abs(gaps.approximation.mean().item()) < 0.05
    assert gaps.amortization.mean().item() > 0.2
    exact = inner.exact_log_marginal(x)
    assert (gaps.log_px - exact).abs().max() < 0.05  # q* is the posterior: importance sampling from it is exact
    assert len(pyro.get_param_store()) == 0 or not any("AutoNormal" in k for k in pyro.get_param_store().keys())


def test_a_user_model_without_pyro_method_still_compiles_its_parameters_as_inputs():
    """`LatentModel` runs a subclass's own programs in the module's Pyro context: its parameters are Pyro
    parameters there, so a traced loss takes them as inputs."""
    model = USER_MODELS["style-content"]()
    x = torch.bernoulli(torch.full((3, 784), 0.5))
    with pyro.poutine.trace(param_only=True) as params:
        model.guide(x)
    assert {name for name, _ in model.named_parameters() if name.startswith("encoder_net")} <= {
        n.replace("$$$", ".") for n in params.trace.nodes}
