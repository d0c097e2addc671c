r"""The shape every model family here shares: p(z) p(x|z) with an amortised guide.

    model:  z_i ~ p(z) = N(0, I_{z_dim}),   x_i ~ p(x | z_i)          i in pyro.plate("data")
    guide:  z_i ~ q(z | x_i) = guide_family(encoder(x_i))

A subclass sets ``z_dim``, ``encoder`` (a module mapping ``[..., x_dim]`` to
the raw parameters of the guide head) and ``posterior_head`` (see
``models.guides``), and defines ``observation(z)``. The latent site is ``"z"``,
the observed site ``"x"``.

``kl_weight`` scales the latent site in both programs (``poutine.scale``), so
the ELBO becomes E_q[log p(x|z)] - kl_weight * KL(q(z|x) || p(z)): the beta-VAE
objective, and KL warm-up when the weight grows from 0 to 1. Estimators of
log p(x) read unscaled densities, so it does not change what they measure.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from models.guides import GuideHead


class LatentModel(PyroModule):
    """Base of the VAE families: the prior, the amortised posterior and the two Pyro programs."""

    z_dim: int
    encoder: torch.nn.Module
    posterior_head: GuideHead
    code_site: str = "z"  # the latent site that `encode` / `decode` work on (figures title the latent map by it)

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
        return self.posterior_head(self.encoder(x))

    # --- the Pyro programs -------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """p(z) p(x|z) for images ``x [B, x_dim]``; returns ``x``."""
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(x))
            return pyro.sample("x", self.observation(z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """q(z|x) for images ``x [B, x_dim]``; returns ``z [B, z_dim]``."""
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            return pyro.sample("z", self.posterior(x))

    # --- pictures ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, num_images: int) -> torch.Tensor:
        """Mean images E[x|z] for ``z ~ p(z)``: ``[num_images, x_dim]``."""
        anchor = next(self.parameters())
        z = self.prior(anchor).sample((num_images,))
        return self.decode(z)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """A central code of q(z|x) for images ``x [B, x_dim]``: ``[B, z_dim]``.

        q's mean; for a flow (no closed-form mean), its base mean pushed
        through the transforms.
        """
        q = self.posterior(x)
        try:
            return q.mean
        except NotImplementedError:
            z = q.base_dist.mean
            for transform in q.transforms:
                z = transform(z)
            return z

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z] for codes ``z [..., z_dim]``: ``[..., x_dim]``."""
        return self.observation(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z] at the central code `encode` gives: ``[B, x_dim]``."""
        return self.decode(self.encode(x))
