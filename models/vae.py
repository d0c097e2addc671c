r"""The variational autoencoder of Kingma & Welling (2014) as two Pyro programs.

Generative model and amortised guide, for a batch of ``B`` images ``x [B, D]``::

    model:  z_i ~ N(0, I_{z_dim}),   x_i ~ p(x | decoder(z_i))      i = 1..B
    guide:  z_i ~ q(z | encoder(x_i))

Both put the datapoints in ``pyro.plate("data", B)``; the latent site is
``"z"`` (event shape ``[z_dim]``) and the observed site ``"x"`` (event shape
``[D]``). Trained by maximising the ELBO
``E_q[log p(x, z) - log q(z|x)] <= log p(x)`` (nats per image).

The likelihood p(x|z) and the guide family q(z|x) are picked by name
(``models.likelihoods.LIKELIHOODS``, ``models.guides.GUIDES``); to change
another piece (the prior, say) subclass `VAE` and override one method. The
prior, the amortised posterior and the Pyro programs live in
`models.base.LatentModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyro.distributions as dist
import torch

from models.base import LatentModel
from models.guides import GUIDES
from models.likelihoods import LIKELIHOODS
from pyro_vae.config import ModelConfig
from pyro_vae.nets import MLP


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


class VAE(LatentModel):
    """A VAE ``x_dim -> hidden_dims -> z_dim`` with MLP encoder and (mirrored) decoder.

    Defaults are the ``burda2015`` preset: 784-200-200-50, tanh, Bernoulli
    likelihood on logits, diagonal-Normal guide.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden_dims: tuple[int, ...] = (200, 200),
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        guide: str = "diagonal",
    ):
        super().__init__()
        self.config = ModelConfig(x_dim, z_dim, tuple(hidden_dims), activation, likelihood, guide)
        self.z_dim = z_dim
        self.likelihood = _lookup(LIKELIHOODS, likelihood, "likelihood")
        self.guide_family = _lookup(GUIDES, guide, "guide")
        self.encoder = MLP(x_dim, hidden_dims, self.guide_family.num_outputs(z_dim), activation)
        self.decoder = MLP(z_dim, tuple(reversed(hidden_dims)), self.likelihood.params_per_pixel * x_dim, activation)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "VAE":
        return cls(**dataclasses.asdict(config))

    def init_kwargs(self) -> dict[str, Any]:
        kwargs = dataclasses.asdict(self.config)
        kwargs["hidden_dims"] = list(kwargs["hidden_dims"])
        return kwargs

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) for latents ``z [..., z_dim]``, event shape ``[x_dim]``."""
        return self.likelihood.build(self.decoder(z))
