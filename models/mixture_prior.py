"""Write a variant: the VAE with a learned mixture-of-Gaussians prior.

Only the prior changes. The Pyro programs, the guide, training
(`inference.svi.train`) and every estimator (`inference.evaluate`) come
unchanged from `models.vae.VAE`:

    p(z) = sum_m pi_m N(z; mu_m, diag(sigma_m^2)),   pi = softmax(logits)
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model
from models.vae import VAE
from pyro_vae.errors import ConfigError


@register_model("mixture-prior")
class MixturePriorVAE(VAE):
    """`VAE` whose prior is a mixture of ``num_components`` diagonal Gaussians, learned with the rest."""

    def __init__(self, *args, num_components: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if self.vamp is not None:
            raise ConfigError("MixturePriorVAE's prior is its own learned mixture; it takes no --prior vamp")
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ConfigError(f"num_components must be a positive integer, got {num_components!r}")
        self.num_components = num_components
        self.mixture_logits = nn.Parameter(torch.zeros(num_components))
        self.mixture_locs = nn.Parameter(torch.randn(num_components, self.z_dim))
        self.mixture_scales = nn.Parameter(torch.zeros(num_components, self.z_dim))  # softplus -> standard deviation

    def init_kwargs(self) -> dict[str, Any]:
        return {**super().init_kwargs(), "num_components": self.num_components}

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        components = dist.Normal(self.mixture_locs, F.softplus(self.mixture_scales) + 1e-3).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.mixture_logits), components)
