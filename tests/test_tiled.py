"""The tiled observation (models.tiled): the same log-densities as the plain one, without the [K, B, D] outputs."""

from __future__ import annotations

import pytest
import torch

from inference.estimators.importance import estimate_log_marginal
from models import tiled
from models.hierarchical import HierarchicalVAE
from models.tiled import TiledObservation, tiled_observation, untiled
from models.vae import VAE


def _binary(batch: int, dim: int = 784, seed: int = 1) -> torch.Tensor:
    return (torch.rand(batch, dim, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "discretized-logistic"])
def test_tiled_log_prob_equals_the_plain_one(likelihood, monkeypatch):
    monkeypatch.setattr(tiled, "TILE_ROWS", 7)  # tiles of 1 particle x 5 images, then a ragged last tile
    levels = {"mixture_components": 3} if likelihood == "discretized-logistic" else {}
    vae = VAE(x_dim=12, z_dim=3, hidden_dims=(8,), likelihood=likelihood, **levels).eval()
    z = torch.randn(13, 5, 3)
    x = torch.randint(0, 256, (5, 12)).float() if likelihood == "discretized-logistic" else torch.rand(5, 12)
    with torch.no_grad():
        got = TiledObservation(vae.observation, z).log_prob(x)
        want = vae.observation(z).log_prob(x)
    assert got.shape == want.shape == (13, 5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_tiling_follows_the_leading_dim_with_other_plates_inside(monkeypatch):
    monkeypatch.setattr(tiled, "TILE_ROWS", 10)
    vae = VAE(x_dim=6, z_dim=2, hidden_dims=(4,)).eval()
    z = torch.randn(9, 3, 4, 2)  # [particles, another plate, images, z_dim]
    x = _binary(4, 6)
    with torch.no_grad():
        d = TiledObservation(vae.observation, z)
        assert d.batch_shape == (9, 3, 4) and d.event_shape == (6,) and d.tile == 1  # 12 rows per slice
        torch.testing.assert_close(d.log_prob(x), vae.observation(z).log_prob(x), rtol=1e-6, atol=1e-5)
        # a value with batch dims of its own broadcasts as it would against the plain distribution
        wide = _binary(5 * 9 * 3 * 4, 6).reshape(5, 9, 3, 4, 6)
        torch.testing.assert_close(d.log_prob(wide), vae.observation(z).log_prob(wide), rtol=1e-6, atol=1e-5)


def test_the_rest_of_the_distribution_is_the_plain_one():
    vae = VAE(x_dim=6, z_dim=2, hidden_dims=(4,)).eval()
    z = torch.randn(300, 4, 2)
    with torch.no_grad():
        d, plain = TiledObservation(vae.observation, z), vae.observation(z)
        torch.testing.assert_close(d.mean, plain.mean)
        torch.testing.assert_close(d.variance, plain.variance)
        assert d.support is plain.support or type(d.support) is type(plain.support)
        assert d.sample().shape == (300, 4, 6) and d.expand((2, 300, 4)).batch_shape == (2, 300, 4)


def test_tiled_observation_tiles_only_many_rows_without_gradients():
    vae = VAE(x_dim=6, z_dim=2, hidden_dims=(4,)).eval()
    many, few = torch.randn(300, 10, 2), torch.randn(2, 10, 2)
    with torch.no_grad():
        assert isinstance(tiled_observation(vae.observation, many), TiledObservation)
        assert not isinstance(tiled_observation(vae.observation, few), TiledObservation)
        with untiled():
            assert not isinstance(tiled_observation(vae.observation, many), TiledObservation)
        assert isinstance(tiled_observation(vae.observation, many), TiledObservation)  # restored
    assert not isinstance(tiled_observation(vae.observation, many), TiledObservation)  # gradients: plain


def _decoder_rows(model, decoder: torch.nn.Module, x: torch.Tensor, **kwargs) -> tuple[object, int]:
    """estimate_log_marginal's result and the most (particle, image) rows one decoder call saw."""
    seen = []
    hook = decoder.register_forward_hook(lambda m, args, out: seen.append(args[0].numel() // args[0].shape[-1]))
    try:
        result = estimate_log_marginal(model.model, model.guide, x, **kwargs)
    finally:
        hook.remove()
    return result, max(seen)


@pytest.mark.parametrize("family", ["vae", "hierarchical"])
def test_the_tiled_estimator_equals_the_plain_one_per_image(family):
    torch.manual_seed(0)
    model = (VAE(x_dim=784, z_dim=10, hidden_dims=(64,)) if family == "vae"
             else HierarchicalVAE(x_dim=784, latent_dims=(8, 4), layer_hidden_dims=((64,), (16,)))).eval()
    x = _binary(12)
    kwargs = dict(num_samples=600, chunk_size=300, seed=3)
    got, rows = _decoder_rows(model, model.decoder, x, **kwargs)
    with untiled():
        want, plain_rows = _decoder_rows(model, model.decoder, x, **kwargs)
    assert plain_rows == 300 * 12 and rows <= tiled.TILE_ROWS  # no call decodes the whole chunk
    torch.testing.assert_close(got.log_px, want.log_px, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.elbo, want.elbo, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.khat, want.khat, rtol=0, atol=1e-3, equal_nan=True)


def test_the_bernoulli_log_density_is_torchs_to_float32_rounding_with_the_exact_gradient():
    from models.likelihoods import BernoulliPixels, bernoulli_log_prob_sum

    # logits from -100 to 100 and exact zeros; 150 pixels: two full products of 64 and a padded one
    logits = torch.cat([torch.randn(6, 4, 140) * 8, torch.linspace(-100, 100, 6 * 4 * 10).reshape(6, 4, 10)], -1)
    logits[0, 0, :5] = 0.0
    x = (torch.rand(4, 150, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    exact = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double(), x.double().expand(6, 4, 150), reduction="none").sum(-1)
    got = bernoulli_log_prob_sum(logits, x)
    torch_float32 = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert got.shape == (6, 4)
    # as close to the float64 value as torch's own float32 log-density is (both round a sum of 150 terms)
    assert (got.double() - exact).abs().max() <= 2 * (torch_float32.double() - exact).abs().max() + 1e-5
    torch.testing.assert_close(BernoulliPixels(logits).log_prob(x), got)
    # its gradient is the exact one, x - sigmoid(l), at l = 0 too, for the logits and (soft targets) the value
    leaf, target = logits.clone().requires_grad_(True), x.clone().requires_grad_(True)
    grad_logits, grad_value = torch.autograd.grad(BernoulliPixels(leaf).log_prob(target).sum(), (leaf, target))
    torch.testing.assert_close(grad_logits, torch.sigmoid(logits).neg().add(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_value, logits.sum(0), rtol=1e-6, atol=1e-5)
    # with a gradient to take it is torch's fused kernel: the same values to float32 rounding
    with_grad = bernoulli_log_prob_sum(leaf, target)
    assert with_grad.requires_grad
    assert (with_grad.detach().double() - exact).abs().max() <= 2 * (torch_float32.double() - exact).abs().max() + 1e-5
    assert BernoulliPixels(logits).expand((3, 6, 4)).log_prob(x).shape == (3, 6, 4)


def test_the_bernoulli_log_density_traces_with_its_gradient():
    """AIS traces its potential (from inputs that do not require grad) and checks the traced gradients against
    the plain ones: the log-density (torch's fused kernel where a gradient is taken) must trace with its backward."""
    import warnings

    from inference.estimators.ais import ais_log_marginal

    vae = VAE(x_dim=784, z_dim=4, hidden_dims=(16,)).eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="AIS runs its potential uncompiled")
        estimate = ais_log_marginal(vae.model, vae.guide, _binary(3), num_chains=2, num_steps=3, leapfrog_steps=2)
    assert estimate.compiled
