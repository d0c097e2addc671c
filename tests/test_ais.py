"""Annealed importance sampling and BDMC against the closed-form oracle, on several latents, and their invariances."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.estimators.ais import WARMUP_TRANSITIONS, ais_log_marginal, annealing_schedule, bdmc, pilot_steps
from inference.estimators.importance import estimate_log_marginal
from models import build_from_config
from models.linear import LinearGaussianVAE
from pyro_vae.config import ModelConfig
from pyro_vae.errors import EstimationError

from conftest import cuda_only


@pytest.fixture
def ppca():
    """Probabilistic PCA in float64, 60 datapoints drawn from it, and a deliberately poor guide.

    The guide ignores x: q(z|x) = N(1, 2^2) in each coordinate, offset from and
    wider than the prior, far from every posterior (sd about 0.3).
    """
    torch.manual_seed(0)
    model = LinearGaussianVAE(x_dim=6, z_dim=2, noise_scale=0.7).double()
    x = model.observation(torch.randn(60, 2, dtype=torch.float64)).sample()
    with torch.no_grad():
        sd = torch.tensor(2.0, dtype=torch.float64)
        model.encoder.weight.zero_()
        model.encoder.bias[:2] = 1.0
        model.encoder.bias[2:] = sd + torch.log(-torch.expm1(-sd))  # inverse softplus
    return model, x


@pytest.mark.parametrize("init, tuning", [("prior", "pilot"), ("guide", "pilot"), ("guide", "two-pass")])
def test_ais_lands_within_two_hundredths_of_a_nat_of_the_exact_log_marginal(ppca, init, tuning):
    """Both tunings freeze the step sizes before the returned pass: from the poor guide and from the prior."""
    model, x = ppca
    est = ais_log_marginal(model.model, model.guide, x, num_chains=32, num_steps=500, leapfrog_steps=5, init=init,
                           initial_step_size=0.1, tuning=tuning)
    error = est.log_px - model.exact_log_marginal(x)
    assert abs(error.mean().item()) < 0.02
    assert est.se.mean().item() < 0.15  # the per-image Monte Carlo error it reports is of the size seen
    assert 0.5 < est.acceptance.mean().item() < 0.8  # tuned toward 0.65
    assert est.log_weights.shape == (32, 60) and est.log_weights.dtype == torch.float64
    assert est.step_size.shape == (32, 60) and (est.step_size > 0).all()
    assert est.tuning == tuning and est.compiled


def test_the_compiled_potential_gives_the_plain_result(ppca):
    model, x = ppca
    kwargs = dict(num_chains=4, num_steps=20, leapfrog_steps=3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback: the graph is used
        traced = ais_log_marginal(model.model, model.guide, x[:8], compiled=True, **kwargs)
    plain = ais_log_marginal(model.model, model.guide, x[:8], compiled=False, **kwargs)
    assert traced.compiled and traced.compiled_form == "graphs" and not plain.compiled and plain.compiled_form is None
    torch.testing.assert_close(traced.log_weights, plain.log_weights, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(traced.step_size, plain.step_size, rtol=1e-6, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # frozen for the run only


def test_a_potential_that_traces_wrongly_falls_back_with_one_warning():
    """A model that reads a latent into a Python number traces to a graph with that number frozen: the check at a
    second point catches it, and AIS runs uncompiled with the plain result."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z * float(z.detach().abs().max()), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    kwargs = dict(num_chains=3, num_steps=5, leapfrog_steps=2)
    with pytest.warns(RuntimeWarning, match="AIS runs its potential uncompiled") as caught:
        fallback = ais_log_marginal(model, guide, x, **kwargs)
    assert len([w for w in caught if "uncompiled" in str(w.message)]) == 1
    plain = ais_log_marginal(model, guide, x, compiled=False, **kwargs)
    assert not fallback.compiled
    assert torch.equal(fallback.log_weights, plain.log_weights)


@pytest.fixture
def autograd_calls(monkeypatch):
    """A list that grows by one at every ``torch.autograd.grad`` call."""
    calls, grad = [], torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *args, **kwargs: calls.append(1) or grad(*args, **kwargs))
    return calls


def _autograd_calls_by_steps(calls: list, model, guide, x, **kwargs) -> dict[int, int]:
    counts = {}
    for steps in (5, 30):
        calls.clear()
        ais_log_marginal(model, guide, x, num_steps=steps, **kwargs)
        counts[steps] = len(calls)
    return counts


def test_the_compiled_chains_evaluate_with_no_autograd(ppca, autograd_calls):
    """compiled=True records the values and gradients with their backward ops as frozen graphs: autograd runs while
    they are built and checked, at no evaluation, whatever the number of transitions (plain: at every one)."""
    model, x = ppca
    kwargs = dict(num_chains=3, leapfrog_steps=3)
    compiled = _autograd_calls_by_steps(autograd_calls, model.model, model.guide, x[:4], **kwargs)
    plain = _autograd_calls_by_steps(autograd_calls, model.model, model.guide, x[:4], compiled=False, **kwargs)
    assert compiled[5] == compiled[30] and plain[30] > plain[5] > compiled[5]


def test_a_model_the_graphs_cannot_record_runs_traced_with_no_warning():
    """A model that checks a latent's value in Python (``assert``) cannot be recorded with its backward ops (the
    check needs a number), while a trace keeps the branch taken, which agrees with the plain potential everywhere:
    AIS runs the traced potential under autograd, silently, with the plain result."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            scale = torch.nn.functional.softplus(z) + 0.1
            assert (scale > 0).all()
            pyro.sample("x", dist.Normal(z, scale), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, 1.0))

    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    kwargs = dict(num_chains=3, leapfrog_steps=2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        traced = ais_log_marginal(model, guide, x, num_steps=10, **kwargs)
    plain = ais_log_marginal(model, guide, x, num_steps=10, compiled=False, **kwargs)
    assert traced.compiled and traced.compiled_form == "traced"
    torch.testing.assert_close(traced.log_weights, plain.log_weights, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config, form", [
    (ModelConfig(z_dim=4, hidden_dims=(16,)), "graphs"),
    (ModelConfig(z_dim=4, hidden_dims=(16,), guide="full"), "graphs"),
    (ModelConfig(z_dim=4, hidden_dims=(16,), prior="vamp", pseudo_inputs=5), "graphs"),
    (ModelConfig(z_dim=4, hidden_dims=(16,), likelihood="discretized-logistic", bit_depth=3), "graphs"),
    (ModelConfig(z_dim=4, hidden_dims=(16,), likelihood="beta-binomial", bit_depth=3), "graphs"),
    (ModelConfig.hierarchical((4, 3), ((16,), (8,))), "graphs"),
    (ModelConfig(z_dim=4, hidden_dims=(16,), guide="iaf"), "traced"),  # its inverse indexes by a tensor
], ids=["vae", "full-guide", "vamp", "discretized-logistic", "beta-binomial", "two-layer", "iaf"])
def test_the_shipped_families_run_the_compiled_form_they_can(config, form):
    """Every shipped family runs compiled, in the fastest form its ops allow, from either start."""
    config = config.resolved()
    model = build_from_config(config)
    top = 2 ** config.bit_depth - 1
    levels = config.likelihood in ("discretized-logistic", "beta-binomial")
    x = torch.randint(0, top + 1, (3, 784)).float() if levels else torch.bernoulli(torch.full((3, 784), 0.3))
    for init in ("guide", "prior"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            est = ais_log_marginal(model.model, model.guide, x, num_chains=2, num_steps=3, leapfrog_steps=2,
                                   init=init)
        # from the prior, the guide's density is not part of the potential: the IAF's inverse is never run
        assert est.compiled_form == (form if init == "guide" else "graphs") and torch.isfinite(est.log_px).all()


@pytest.mark.parametrize("tuning", ["pilot", "two-pass"])
def test_gradient_evaluations_are_counted_per_image(ppca, tuning):
    """L per transition, one at each run's start; the tuning run's warm-up and transitions included."""
    model, x = ppca
    chains, steps, leapfrog = 3, 40, 4
    est = ais_log_marginal(model.model, model.guide, x[:5], num_chains=chains, num_steps=steps,
                           leapfrog_steps=leapfrog, tuning=tuning)
    # per chain: tuning run 1 + (20 warm-up + T_tune - 1 transitions) x 4, returned pass 1 + 39 x 4; pilot T_tune = 10
    assert WARMUP_TRANSITIONS == 20
    assert est.gradient_evaluations == {"pilot": 3 * (117 + 157), "two-pass": 3 * (237 + 157)}[tuning]
    assert pilot_steps(steps) == 10 and pilot_steps(1000) == 100 and pilot_steps(5) == 5


@pytest.mark.parametrize("tuning", ["pilot", "two-pass"])
def test_one_step_is_importance_sampling_with_no_transition_to_tune(ppca, tuning):
    """T = 1: the chains' start, weighted at b = 1; one evaluation per run, no warm-up transitions."""
    model, x = ppca
    est = ais_log_marginal(model.model, model.guide, x[:5], num_chains=3, num_steps=1, leapfrog_steps=4,
                           tuning=tuning)
    assert est.gradient_evaluations == 3 * (1 + 1)
    assert torch.isfinite(est.log_px).all() and torch.isnan(est.acceptance).all()


@cuda_only
def test_ais_on_cuda_lands_within_two_hundredths_of_a_nat_of_the_exact_log_marginal(ppca):
    model, x = ppca
    model, x = model.cuda(), x.cuda()
    est = ais_log_marginal(model.model, model.guide, x, num_chains=32, num_steps=500, leapfrog_steps=5,
                           initial_step_size=0.1)
    assert abs((est.log_px.cpu() - model.exact_log_marginal(x).cpu()).mean().item()) < 0.02
    assert 0.5 < est.acceptance.mean().item() < 0.8
    assert est.compiled_form == "graphs"  # recorded with their backward ops on CUDA too, not the traced fallback


def test_ais_beats_importance_sampling_with_as_many_draws_from_a_poor_guide(ppca):
    model, x = ppca
    exact = model.exact_log_marginal(x)
    ais = ais_log_marginal(model.model, model.guide, x, num_chains=16, num_steps=50, leapfrog_steps=5)
    importance = estimate_log_marginal(model.model, model.guide, x, num_samples=16, seed=0)
    assert (exact - ais.log_px).mean() < 0.5 * (exact - importance.log_px).mean()


def test_bdmc_brackets_the_exact_log_marginal_and_tightens_with_more_steps(ppca):
    """Each bound holds in expectation, so on 40 images it may cross the exact value by Monte Carlo noise only
    (3 standard errors over images); at 500 steps the two nearly meet."""
    model, x = ppca
    gaps = {}
    for steps in (50, 500):
        sandwich = bdmc(model.model, model.guide, 40, like=x[:1], num_chains=16, num_steps=steps, leapfrog_steps=5,
                        initial_step_size=0.1)
        exact = model.exact_log_marginal(sandwich.x)
        assert sandwich.x.shape == (40, 6)
        below, above = sandwich.lower - exact, sandwich.upper - exact
        assert below.mean() <= 3 * below.std() / 40**0.5
        assert above.mean() >= -3 * above.std() / 40**0.5
        assert torch.equal(sandwich.gap, sandwich.upper - sandwich.lower)
        gaps[steps] = sandwich.gap.mean().item()
    assert gaps[50] > 0.05 and gaps[500] < 0.5 * gaps[50]


def test_bdmc_under_two_pass_tuning_brackets_the_exact_log_marginal(ppca):
    model, x = ppca
    sandwich = bdmc(model.model, model.guide, 40, like=x[:1], num_chains=16, num_steps=100, leapfrog_steps=5,
                    initial_step_size=0.1, tuning="two-pass")
    exact = model.exact_log_marginal(sandwich.x)
    below, above = sandwich.lower - exact, sandwich.upper - exact
    assert below.mean() <= 3 * below.std() / 40**0.5
    assert above.mean() >= -3 * above.std() / 40**0.5
    assert sandwich.forward.tuning == sandwich.reverse.tuning == "two-pass"


def _posterior_gain(w: torch.Tensor, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For x ~ N(W z, noise^2), z ~ N(0, I): the matrix G with E[z|x] = G x, and 1.2 x the posterior sds."""
    cov = torch.linalg.inv(torch.eye(w.shape[1], dtype=w.dtype) + w.T @ w / noise**2)
    return cov @ w.T / noise**2, 1.2 * cov.diagonal().sqrt()


class TwoLatents(nn.Module):
    """x ~ N(A z1 + B z2, 0.5) with z1 in R^2 and z2 in R^1; a fair diagonal guide for each (posterior means, wider)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.a = torch.randn(5, 2, generator=gen, dtype=torch.float64)
        self.b = torch.randn(5, 1, generator=gen, dtype=torch.float64)
        self.gain, self.sd = _posterior_gain(torch.cat([self.a, self.b], 1), 0.5)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.a.T + z2 @ self.b.T, 0.5).to_event(1), obs=x)

    def guide(self, x):
        mean = x @ self.gain.T
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(mean[..., :2], self.sd[:2]).to_event(1))
            pyro.sample("z2", dist.Normal(mean[..., 2:], self.sd[2:]).to_event(1))


class PositiveScale(nn.Module):
    """x ~ N(W z, s) with z in R^2 and a constrained latent scale s ~ LogNormal(-0.5, 0.3) per datapoint."""

    def __init__(self):
        super().__init__()
        self.w = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        self.gain, self.sd = _posterior_gain(self.w, 0.6)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(x.new_tensor(-0.5), 0.3))
            pyro.sample("x", dist.Normal(z @ self.w.T, s.unsqueeze(-1)).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.gain.T, 1.5 * self.sd).to_event(1))
            pyro.sample("s", dist.LogNormal(x.new_full((x.shape[0],), -0.5), 0.4))


@pytest.mark.parametrize("program", [TwoLatents, PositiveScale], ids=["two-latent-sites", "constrained-latent"])
def test_ais_agrees_with_importance_sampling_at_large_k(program):
    p = program()
    with torch.no_grad():
        trace = pyro.poutine.trace(pyro.poutine.uncondition(p.model)).get_trace(torch.zeros(24, 5, dtype=torch.float64))
    x = trace.nodes["x"]["value"]
    reference = estimate_log_marginal(p.model, p.guide, x, num_samples=50_000, chunk_size=5_000, ladder=(), seed=0)
    assert (reference.khat < 0.7).all()  # so IS at this K is a trustworthy reference
    est = ais_log_marginal(p.model, p.guide, x, num_chains=16, num_steps=200, leapfrog_steps=5, initial_step_size=0.1)
    assert est.compiled_form == "graphs"  # several sites, and a transformed one, recorded with their backward ops
    assert abs((est.log_px - reference.log_px).mean().item()) < 0.03
    assert (est.log_px - reference.log_px).abs().max().item() < 0.3


def test_results_do_not_depend_on_how_images_are_batched(ppca):
    model, x = ppca
    kwargs = dict(num_chains=4, num_steps=15, leapfrog_steps=3, seed=7)
    whole = ais_log_marginal(model.model, model.guide, x[:6], **kwargs)
    parts = [ais_log_marginal(model.model, model.guide, x[lo:hi], first_index=lo, **kwargs) for lo, hi in ((0, 2), (2, 6))]
    assert torch.allclose(whole.log_weights, torch.cat([p.log_weights for p in parts], dim=1), atol=1e-9)
    other_seed = ais_log_marginal(model.model, model.guide, x[:6], **{**kwargs, "seed": 8})
    assert not torch.allclose(whole.log_weights, other_seed.log_weights)


def test_the_global_rng_is_left_alone(ppca):
    model, x = ppca
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ais_log_marginal(model.model, model.guide, x[:4], num_chains=2, num_steps=3, leapfrog_steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_schedules_run_from_zero_to_one():
    for name in ("sigmoid", "linear"):
        b = annealing_schedule(100, name)
        assert b[0] == 0 and b[-1] == 1 and len(b) == 101 and (b.diff() > 0).all()
    sigmoid = annealing_schedule(100)
    assert sigmoid[1] < 0.01 and sigmoid[50] == pytest.approx(0.5)  # slow at both ends, as Grosse et al.'s
    with pytest.raises(EstimationError, match="unknown schedule"):
        annealing_schedule(10, "cosine")


def test_a_discrete_latent_is_refused_with_the_reason():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(EstimationError, match="'c' is discrete.*continuous"):
        ais_log_marginal(model, guide, torch.zeros(3), num_steps=5)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_chains": 0}, "num_chains"), ({"num_steps": 0}, "num_steps"), ({"leapfrog_steps": 1.5}, "leapfrog_steps"),
    ({"init": "posterior"}, "unknown init"), ({"initial_step_size": float("nan")}, "initial_step_size"),
    ({"tuning": "adaptive"}, "unknown tuning"),
])
def test_bad_settings_are_named(ppca, kwargs, match):
    model, x = ppca
    with pytest.raises(EstimationError, match=match):
        ais_log_marginal(model.model, model.guide, x[:2], **{"num_steps": 3, **kwargs})


def _nested_model(x):
    """z ~ N(0, 1) per datapoint, w_j ~ N(z, 1) per pixel in an inner plate, x_j ~ N(w_j, 0.5): the data plate at -2."""
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("pixels", x.shape[1], dim=-1):
            w = pyro.sample("w", dist.Normal(z, 1.0))
            pyro.sample("x", dist.Normal(w, 0.5), obs=x)


def _nested_guide(x):
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 1.0))
        with pyro.plate("pixels", x.shape[1], dim=-1):
            pyro.sample("w", dist.Normal(x, 1.0))


def test_latents_in_a_nested_plate_and_a_latent_whose_transform_changes_rank():
    torch.manual_seed(4)
    x = 1.5 * torch.randn(30, 2, dtype=torch.float64)
    exact = dist.MultivariateNormal(x.new_zeros(2), torch.ones(2, 2, dtype=torch.float64)
                                    + 1.25 * torch.eye(2, dtype=torch.float64)).log_prob(x)
    est = ais_log_marginal(_nested_model, _nested_guide, x, num_chains=16, num_steps=200, leapfrog_steps=3,
                           initial_step_size=0.3)
    error = est.log_px - exact
    assert abs(error.mean().item()) < 3 * error.std().item() / 30**0.5 + 0.01

    def lkj_model(x):  # LKJCholesky: a 2x2 Cholesky factor from one unconstrained number
        with pyro.plate("data", x.shape[0]):
            chol = pyro.sample("L", dist.LKJCholesky(2, torch.tensor(1.0, dtype=torch.float64)))
            pyro.sample("x", dist.MultivariateNormal(x.new_zeros(2), scale_tril=chol), obs=x)

    def lkj_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("L", dist.LKJCholesky(2, torch.tensor(2.0, dtype=torch.float64)))

    reference = estimate_log_marginal(lkj_model, lkj_guide, x[:8], num_samples=20_000, chunk_size=5_000, ladder=(),
                                      seed=0)
    est = ais_log_marginal(lkj_model, lkj_guide, x[:8], num_chains=64, num_steps=200, leapfrog_steps=3,
                           initial_step_size=0.1, seed=1)
    difference = (est.log_px - reference.log_px).abs()
    assert difference.mean().item() < 0.05 and (difference < 4 * est.se + 0.03).all()


def test_a_guide_that_proposes_outside_the_models_support_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, s), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.Normal(1.0, 1.0))

    with pytest.raises(EstimationError, match="guide site 's' has support .*model's support"):
        ais_log_marginal(model, guide, torch.ones(3), num_steps=5)
