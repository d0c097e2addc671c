r"""Probabilistic PCA as a VAE: the oracle every estimator is tested against.

    p(z) = N(0, I_{z_dim}),   p(x | z) = N(W z + b, s^2 I_{x_dim})

with ``weight`` W ``[x_dim, z_dim]``, ``bias`` b ``[x_dim]`` and ``noise_scale``
s. Both the marginal and the posterior are Gaussian in closed form:

    p(x)     = N(x; b, W W^T + s^2 I)
    p(z | x) = N(z; S W^T (x - b) / s^2, S),   S = (I + W^T W / s^2)^{-1}

The amortised guide comes from a linear encoder, as the exact posterior mean
does. A ``diagonal`` Normal guide is exact only when W^T W is diagonal
(orthogonal columns), so a gap remains otherwise; a ``full`` one can be exact.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from models.base import SingleLatentModel
from models.guides import make_guide
from models.registry import register_model
from pyro_vae.errors import ConfigError


@register_model("linear-gaussian")
class LinearGaussianVAE(SingleLatentModel):
    """Linear decoder with Gaussian noise of fixed scale; linear encoder into a guide head (``diagonal``, ``full``)."""

    def __init__(self, x_dim: int, z_dim: int, noise_scale: float = 0.5, guide: str = "diagonal"):
        super().__init__()
        if min(x_dim, z_dim) < 1 or not 1e-6 <= noise_scale < float("inf"):
            raise ConfigError(f"LinearGaussianVAE needs x_dim, z_dim >= 1 and a noise_scale in [1e-6, inf), got "
                              f"{x_dim}, {z_dim}, {noise_scale}")
        self.x_dim, self.z_dim, self.noise_scale = x_dim, z_dim, float(noise_scale)
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim) / z_dim**0.5)
        self.bias = nn.Parameter(torch.zeros(x_dim))
        self.guide_name = guide
        self.posterior_head = make_guide(guide, z_dim)
        self.encoder = nn.Linear(x_dim, self.posterior_head.num_inputs)

    def init_kwargs(self) -> dict[str, Any]:
        return {"x_dim": self.x_dim, "z_dim": self.z_dim, "noise_scale": self.noise_scale, "guide": self.guide_name}

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(z @ self.weight.T + self.bias, self.noise_scale).to_event(1)

    @torch.no_grad()
    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in closed form for ``x [B, x_dim]``: ``[B]``, nats."""
        cov_diag = torch.full_like(self.bias, self.noise_scale**2)
        return dist.LowRankMultivariateNormal(self.bias, self.weight, cov_diag).log_prob(x)

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z | x) for ``x [B, x_dim]``: batch shape ``[B]``, event shape ``[z_dim]``."""
        w, s2 = self.weight, self.noise_scale**2
        precision = torch.eye(self.z_dim, dtype=w.dtype, device=w.device) + w.T @ w / s2
        cov = torch.linalg.inv(precision)
        cov = (cov + cov.T) / 2
        loc = (x - self.bias) @ w @ cov / s2  # rows of S W^T (x - b) / s^2 (S is symmetric)
        return dist.MultivariateNormal(loc, covariance_matrix=cov)
