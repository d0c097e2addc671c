"""The importance-sampling estimator against the closed-form oracle, and its invariances."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.importance import DRAW_BLOCK, estimate_log_marginal, log_weights_chunk
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


def test_streaming_reductions_equal_the_formulas_on_all_weights():
    """ESS, ELBO, IWAE-k and ArviZ's k-hat, computed from the full [K, B] weights in memory."""
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    k = 1000
    est = estimate_log_marginal(vae.model, vae.guide, x, num_samples=k, chunk_size=130, ladder=(10,), seed=3)
    lw = log_weights_chunk(vae.model, vae.guide, x, 0, k, seed=3).detach()
    assert torch.allclose(est.log_px, torch.logsumexp(lw, 0) - np.log(k))
    assert torch.allclose(est.elbo, lw.mean(0))
    assert torch.allclose(est.ess, lw.softmax(0).pow(2).sum(0).reciprocal())
    assert torch.allclose(est.iwae[10], (torch.logsumexp(lw.reshape(100, 10, -1), 1) - np.log(10)).mean(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

        _, khat = arviz.psislw(lw.T.numpy(), reff=1.0)
    assert np.allclose(est.khat.numpy(), khat, atol=1e-10)


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
