r"""The shape every model family here shares: p(z) p(x|z) with an amortised guide.

    model:  z_i ~ p(z) = N(0, I_{z_dim}),   x_i ~ p(x | z_i)          i in pyro.plate("data")
    guide:  z_i ~ q(z | x_i) = guide_family(encoder(x_i))

A subclass sets ``z_dim``, ``encoder`` (a module mapping ``[..., x_dim]`` to
the guide family's raw parameters) and ``guide_family``, and defines
``observation(z)``. The latent site is ``"z"``, the observed site ``"x"``.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method

from models.guides import GuideFamily


class LatentModel(PyroModule):
    """Base of the VAE families: the prior, the amortised posterior and the two Pyro programs."""

    z_dim: int
    encoder: torch.nn.Module
    guide_family: GuideFamily

    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (stored in checkpoints)."""
        raise NotImplementedError

    # --- the three distributions -------------------------------------------------
    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = N(0, I), event shape ``[z_dim]``, on ``x``'s device and dtype."""
        return dist.Normal(x.new_zeros(self.z_dim), x.new_ones(self.z_dim)).to_event(1)

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) for latents ``z [..., z_dim]``, event shape ``[x_dim]``."""
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for images ``x [..., x_dim]``, event shape ``[z_dim]``."""
        return self.guide_family.build(self.encoder(x), self.z_dim)

    # --- the Pyro programs -------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor) -> torch.Tensor:
        """p(z) p(x|z) for images ``x [B, x_dim]``; returns ``x``."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            return pyro.sample("x", self.observation(z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> torch.Tensor:
        """q(z|x) for images ``x [B, x_dim]``; returns ``z [B, z_dim]``."""
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    # --- pictures ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, num_images: int) -> torch.Tensor:
        """Mean images E[x|z] for ``z ~ p(z)``: ``[num_images, x_dim]``."""
        anchor = next(self.parameters())
        z = self.prior(anchor).sample((num_images,))
        return self.observation(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z] at the posterior mean of q(z|x): ``[B, x_dim]``."""
        return self.observation(self.posterior(x).mean).mean
