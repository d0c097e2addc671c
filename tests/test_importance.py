"""The importance-sampling estimator against the closed-form oracle, and its invariances."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.estimators.importance import (DRAW_BLOCK, MarginalEstimate, _khat_arviz_legacy, _khat_arviz_stats, _tail_size,
                                  estimate_log_marginal, log_weights_chunk, pareto_khat, psis_khat_function)
from models import VAE
from models.guides import MIN_SCALE
from models.linear import LinearGaussianVAE
from pyro_vae.errors import EstimationError


@pytest.fixture
def oracle():
    """Probabilistic PCA in float64, 16 datapoints drawn from it, and a close (not exact) diagonal guide.

    The encoder is set to the exact posterior mean with standard deviations 1.2 times the exact
    marginal ones: what a trained amortised guide looks like, with weights that still vary.
    """
    torch.manual_seed(0)
    model = LinearGaussianVAE(x_dim=12, z_dim=3, noise_scale=0.5).double()
    x = model.observation(torch.randn(16, 3, dtype=torch.float64)).sample()
    with torch.no_grad():
        w, b, s2 = model.weight, model.bias, model.noise_scale**2
        cov = torch.linalg.inv(torch.eye(3, dtype=torch.float64) + w.T @ w / s2)
        gain = cov @ w.T / s2  # posterior mean = gain @ (x - b)
        sd = 1.2 * cov.diagonal().sqrt() - MIN_SCALE
        model.encoder.weight.zero_()
        model.encoder.weight[:3] = gain
        model.encoder.bias[:3] = -gain @ b
        model.encoder.bias[3:] = sd + torch.log(-torch.expm1(-sd))  # inverse softplus
    return model, x


def test_the_oracle_guide_is_close_to_but_not_the_posterior(oracle):
    model, x = oracle
    q, p = model.posterior(x), model.exact_posterior(x)
    assert torch.allclose(q.mean, p.mean)
    assert torch.allclose(q.base_dist.scale, 1.2 * p.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt())


def exact_posterior_guide(model: LinearGaussianVAE):
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", model.exact_posterior(x))

    return guide


def test_estimate_is_within_three_standard_errors_of_the_exact_log_marginal(oracle):
    model, x = oracle
    exact = model.exact_log_marginal(x)
    est = estimate_log_marginal(model.model, model.guide, x, num_samples=20000, chunk_size=5000, seed=0)
    se = (1 / est.ess - 1 / est.num_samples).sqrt()  # delta method: Var(p-hat) / p^2 = (1/ESS - 1/K)
    assert ((est.log_px - exact).abs() < 3 * se).all(), ((est.log_px - exact) / se)
    assert (est.log_px - exact).mean().abs() < 3 * se.pow(2).mean().sqrt() / len(x) ** 0.5


def test_elbo_lies_below_the_exact_log_marginal(oracle):
    model, x = oracle
    est = estimate_log_marginal(model.model, model.guide, x, num_samples=2000, seed=0)
    assert (est.elbo < model.exact_log_marginal(x)).all()


def test_exact_posterior_as_guide_gives_constant_weights_and_the_exact_answer(oracle):
    model, x = oracle
    exact = model.exact_log_marginal(x)
    guide = exact_posterior_guide(model)
    one = estimate_log_marginal(model.model, guide, x, num_samples=1, seed=0)
    assert torch.allclose(one.log_px, exact, atol=1e-9, rtol=0)
    many = estimate_log_marginal(model.model, guide, x, num_samples=64, seed=1)
    weights = log_weights_chunk(model.model, guide, x, 0, 64, seed=1)
    assert torch.allclose(weights, exact.expand(64, -1), atol=1e-9, rtol=0)  # each datapoint its own constant
    assert torch.allclose(many.ess, torch.full_like(many.ess, 64.0))
    assert torch.allclose(many.elbo, exact, atol=1e-9, rtol=0)


def test_iwae_ladder_rises_with_k_toward_the_exact_value(oracle):
    model, x = oracle
    exact = model.exact_log_marginal(x).mean().item()
    est = estimate_log_marginal(model.model, model.guide, x, num_samples=4000, ladder=(1, 10, 100, 1000), seed=0)
    means = [est.iwae[k].mean().item() for k in (1, 10, 100, 1000)]
    assert means == sorted(means) and len(set(means)) == 4
    assert exact - means[-1] < (exact - means[0]) / 20
    assert means[-1] < exact + 0.05
    assert torch.equal(est.iwae[1], est.elbo)
    assert 5000 not in est.iwae  # k above K is left out


def test_log_px_is_at_least_the_elbo_on_a_vae():
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    est = estimate_log_marginal(vae.model, vae.guide, x, num_samples=300, seed=0)
    assert (est.log_px >= est.elbo).all()
    assert torch.isfinite(est.log_px).all() and (est.log_px < 0).all()


def test_results_do_not_depend_on_chunk_size():
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    k = 3 * DRAW_BLOCK + 17
    runs = [estimate_log_marginal(vae.model, vae.guide, x, num_samples=k, chunk_size=c, ladder=(1, 10, 100), seed=4)
            for c in (None, 7, DRAW_BLOCK, 64)]
    for run in runs[1:]:
        for a, b in [(run.log_px, runs[0].log_px), (run.elbo, runs[0].elbo), (run.ess, runs[0].ess),
                     *[(run.iwae[j], runs[0].iwae[j]) for j in (1, 10, 100)]]:
            assert torch.allclose(a, b, atol=1e-8, rtol=1e-10)
        assert torch.allclose(run.khat, runs[0].khat, atol=1e-8)


def test_the_seed_fixes_the_draws_and_the_global_rng_is_left_alone():
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    state = torch.get_rng_state()
    a = estimate_log_marginal(vae.model, vae.guide, x, num_samples=100, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = estimate_log_marginal(vae.model, vae.guide, x, num_samples=100, seed=1)
    c = estimate_log_marginal(vae.model, vae.guide, x, num_samples=100, seed=2)
    assert torch.equal(a.log_px, b.log_px) and not torch.equal(a.log_px, c.log_px)


def streamed_and_all_weights(k: int = 1000) -> tuple[MarginalEstimate, torch.Tensor]:
    """A small VAE's estimate for 5 images from K draws in chunks of 130, and its log weights ``[K, 5]`` in memory."""
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    est = estimate_log_marginal(vae.model, vae.guide, x, num_samples=k, chunk_size=130, ladder=(10,), seed=3)
    with torch.no_grad():  # as the estimator scores them (without gradients: the tiled, forward-only log-density)
        return est, log_weights_chunk(vae.model, vae.guide, x, 0, k, seed=3)


def test_streaming_reductions_equal_the_formulas_on_all_weights():
    """ESS, ELBO, IWAE-k and ArviZ's k-hat, computed from the full [K, B] weights in memory."""
    k = 1000
    est, lw = streamed_and_all_weights(k)
    assert torch.allclose(est.log_px, torch.logsumexp(lw, 0) - np.log(k))
    assert torch.allclose(est.elbo, lw.mean(0))
    assert torch.allclose(est.ess, lw.softmax(0).pow(2).sum(0).reciprocal())
    assert torch.allclose(est.iwae[10], (torch.logsumexp(lw.reshape(100, 10, -1), 1) - np.log(10)).mean(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        khat = psis_khat_function()(lw.T.numpy())  # the installed ArviZ's k-hat of all K weights
    assert np.allclose(est.khat.numpy(), khat, atol=1e-10, equal_nan=True) and np.isfinite(khat).all()


def legacy_psislw():
    """ArviZ 0.x's ``arviz.psislw``; skips where ArviZ >= 1 is installed, which has none to compare with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz
    if not hasattr(arviz, "psislw"):
        pytest.skip(f"ArviZ {arviz.__version__} has no arviz.psislw; arviz_stats is the only PSIS")
    return arviz.psislw


def arviz_stats_or_fail():
    """``arviz_stats.base.array_stats``: the test extra installs it (Python >= 3.11), so it fails, never skips, if absent."""
    if sys.version_info < (3, 11):
        pytest.skip("arviz-stats needs Python 3.11")
    try:
        from arviz_stats.base import array_stats
    except ImportError as e:
        pytest.fail(f"{e}: the test extra installs arviz-stats, pip install -e '.[test]'")
    return array_stats


def test_khat_falls_back_to_arviz_psislw_and_gives_the_same_khat_as_before(monkeypatch):
    """Without arviz_stats, k-hat is ArviZ 0.x's ``psislw`` of all K weights, as it was before arviz_stats."""
    psislw = legacy_psislw()
    monkeypatch.setitem(sys.modules, "arviz_stats", None)  # import arviz_stats now raises ImportError
    monkeypatch.setitem(sys.modules, "arviz_stats.base", None)
    assert psis_khat_function() is _khat_arviz_legacy
    est, lw = streamed_and_all_weights(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, khat = psislw(lw.T.numpy(), reff=1.0)
    assert np.allclose(est.khat.numpy(), khat, atol=1e-10) and np.isfinite(khat).all()


def test_arviz_stats_and_arviz_psislw_give_the_same_khat_on_the_same_weights(oracle):
    """The two PSIS implementations agree on the oracle's log weights, and both fit the upper tail.

    Same algorithm (the same generalised Pareto fit with its prior on k); they differ only in the
    tail size, M = ceil(min(K/5, 3 sqrt K)) in ArviZ 0.x and floor of it in arviz_stats, equal
    when 3 sqrt K (K > 225) or K/5 (K <= 225) is a whole number. There they agree to rounding
    (the profile weights of the fit are normalised two algebraically equal ways: ~1e-16
    observed); 1e-12 allows for other platforms' libm while one tail draw more or fewer moves
    k-hat by 1e-3 to 1e-1. At other K, ArviZ 0.x handed arviz_stats' tail (its M largest weights,
    the rest set to the cutoff) gives arviz_stats' k-hat to the same tolerance.
    """
    psislw, array_stats = legacy_psislw(), arviz_stats_or_fail()
    assert psis_khat_function() is _khat_arviz_stats  # the new home is preferred when importable
    model, x = oracle
    lw = log_weights_chunk(model.model, model.guide, x, 0, 5000, seed=0).detach().T.numpy()  # [16, 5000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (100, 225, 900, 2500):  # tail sizes 20, 45, 90, 150 in both
            _, legacy = psislw(lw[:, :k], reff=1.0)
            assert np.allclose(_khat_arviz_stats(lw[:, :k]), legacy, atol=1e-12, rtol=0)
            assert np.isfinite(legacy).all()
        for k in (1000, 5000):  # tail 95 / 94 and 213 / 212
            tail = math.floor(min(k / 5, 3 * math.sqrt(k)))
            top = np.sort(lw[:, :k], axis=1)[:, ::-1][:, : tail + 1]
            cut = np.concatenate([top, np.repeat(top[:, -1:], k - tail - 1, axis=1)], axis=1)
            _, legacy = psislw(cut, reff=1.0)
            new = _khat_arviz_stats(lw[:, :k])
            assert np.allclose(new, legacy, atol=1e-12, rtol=0) and np.isfinite(new).all()
            _, legacy_own_tail = psislw(lw[:, :k], reff=1.0)
            assert np.abs(new - legacy_own_tail).max() < 0.1  # one tail draw apart: close, not equal
        # the sign: Pareto weights w = U^(-k) have upper-tail shape k; un-negated, arviz_stats fits the lower tail
        u = np.random.default_rng(0).uniform(size=(200, 2500))
        for shape in (0.3, 0.9):
            lw_pareto = -shape * np.log(u)
            for fit in (_khat_arviz_stats(lw_pareto), psislw(lw_pareto, reff=1.0)[1]):
                assert abs(np.mean(fit) - shape) < 0.05
        assert np.mean(array_stats.psislw(lw_pareto, r_eff=1.0)[1]) < 0


def test_bad_input_is_named():
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    with pytest.raises(EstimationError, match="num_samples must be at least 1"):
        estimate_log_marginal(vae.model, vae.guide, x, num_samples=0)
    with pytest.raises(EstimationError, match="empty"):
        estimate_log_marginal(vae.model, vae.guide, x[:0], num_samples=10)

    def model_without_data_plate(x):
        with pyro.plate("batch", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide_without_data_plate(x):
        with pyro.plate("batch", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(EstimationError, match=r"no pyro.plate\('data'\)"):
        estimate_log_marginal(model_without_data_plate, guide_without_data_plate, x, num_samples=10)

    def model_with_global_site(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, scale), obs=x[:, 0])

    def guide_with_global_site(x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))

    with pytest.raises(EstimationError, match="'scale' is outside pyro.plate"):
        estimate_log_marginal(model_with_global_site, guide_with_global_site, x, num_samples=10)

    with pytest.raises(EstimationError, match=r"\['z'\] have no guide counterpart"):
        estimate_log_marginal(vae.model, lambda x: None, x, num_samples=10)

    with torch.no_grad():
        vae.decoder[-1].bias[0] = float("nan")
    with pytest.raises(EstimationError, match=r"NaN for datapoints \[0, 1, 2\]"):
        estimate_log_marginal(vae.model, vae.guide, x, num_samples=10)


@pytest.mark.parametrize("implementation", ["arviz", "arviz_stats"])
def test_khat_is_nan_where_no_tail_can_be_fitted(implementation, monkeypatch):
    """Too few weights for 5 tail draws, or a datapoint's weights all equal: NaN, for that datapoint only."""
    if implementation == "arviz":
        legacy_psislw()
        monkeypatch.setitem(sys.modules, "arviz_stats", None)
        monkeypatch.setitem(sys.modules, "arviz_stats.base", None)
    else:
        arviz_stats_or_fail()
    lw = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lw[:, 1] = -3.0  # every weight of datapoint 1 equal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        khat = pareto_khat(lw.topk(_tail_size(1000), dim=0).values, 1000)
        direct = torch.as_tensor(psis_khat_function()(lw.T.numpy()))
        direct[direct.isinf()] = float("nan")  # ArviZ 0.x's k-hat for datapoint 1
        assert torch.allclose(khat, direct, atol=1e-10, equal_nan=True)
        assert khat[1].isnan() and khat[[0, 2]].isfinite().all()
        for k in (1, 2, 4, 20, 21, 24, 25):  # fewer than 5 tail draws: K <= 20 in ArviZ 0.x, K < 25 in arviz_stats
            fitted = pareto_khat(lw[:k, [0, 2]].topk(min(k, _tail_size(k)), dim=0).values, k).isfinite()
            assert fitted.all() if k >= (21 if implementation == "arviz" else 25) else not fitted.any(), k
