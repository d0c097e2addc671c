"""The Cremer et al. (2018) decomposition against the linear-Gaussian oracle."""

import torch

from inference.estimators.gaps import inference_gaps
from models.linear import LinearGaussianVAE


def _oracle(orthogonal: bool, n: int = 16):
    torch.manual_seed(1)
    model = LinearGaussianVAE(x_dim=10, z_dim=3, noise_scale=0.5)
    if orthogonal:  # W^T W diagonal: the exact posterior is diagonal, inside the guide family
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(10, 3))
            model.weight.copy_(q * torch.tensor([2.0, 1.5, 1.0]))
    x = model.observation(torch.randn(n, 3)).sample()
    return model, x


def test_when_the_family_holds_the_posterior_the_whole_gap_is_amortization():
    model, x = _oracle(orthogonal=True)
    gaps = inference_gaps(model, x, num_samples=2000, seed=0, max_steps=3000)
    assert gaps.steps < 3000  # stopped because the ELBO stopped improving
    assert (gaps.log_px - model.exact_log_marginal(x)).abs().max() < 0.05
    assert gaps.total.mean() > 1.0  # the untrained encoder is far from the posterior
    assert gaps.approximation.mean().abs() < 0.05
    assert (gaps.amortization.mean() - gaps.total.mean()).abs() < 0.05


def test_a_diagonal_family_leaves_an_approximation_gap_for_correlated_posteriors():
    model, x = _oracle(orthogonal=False)
    gaps = inference_gaps(model, x, num_samples=2000, seed=0)
    assert (gaps.log_px - model.exact_log_marginal(x)).abs().max() < 0.1
    assert gaps.approximation.mean() > 0.05
    assert (gaps.amortization > 0).float().mean() > 0.9  # q* improves on the amortised guide almost everywhere
