r"""Observation models p(x|z), chosen by name.

A likelihood is a small module: it turns a decoder's raw output
``[..., params_per_pixel * x_dim]`` (parameter-major: all pixels' first
parameter, then all pixels' second) into a distribution over the image with
event shape ``[x_dim]``. Add one to `LIKELIHOODS`; the model code does not change.

- ``bernoulli``: p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)); binary pixels.
- ``gaussian``: N(x; mu(z), c I) with fixed variance c = obs_scale^2. Then
  log p(x|z) = -||x - mu||^2 / (2c) + const, so the ELBO is
  C * (-||x - mu||^2) - KL + const with C = 1 / (2c): maximising it is the same
  as maximising -||x - mu||^2 - 2c * KL, a squared-error autoencoder with KL
  weight beta = 2c (tested in tests/test_variants.py).
- ``gaussian-learned``: N(x; mu(z), sigma(z)^2) per pixel, sigma >= `MIN_OBS_SCALE`.
- ``continuous-bernoulli``: the normalised continuous Bernoulli of
  Loaiza-Ganem & Cunningham (2019) for pixels in [0, 1].

Densities of continuous likelihoods are in nats per image *of density*: not
comparable with Bernoulli log-probabilities.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

#: Smallest learned pixel standard deviation (grey levels live in [0, 1]).
MIN_OBS_SCALE = 1e-2


class Likelihood(nn.Module):
    """Base: ``forward(raw)`` gives p(x|z). ``binary_data``: needs 0/1 pixels."""

    params_per_pixel = 1
    binary_data = False

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError


class Bernoulli(Likelihood):
    binary_data = True

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        # validate_args=False: the data are checked once before training, not on every step.
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)


class Gaussian(Likelihood):
    """Fixed standard deviation ``obs_scale`` (variance c = obs_scale^2)."""

    def __init__(self, obs_scale: float = 1.0):
        super().__init__()
        if obs_scale <= 0:
            raise ValueError(f"--obs-scale must be positive, got {obs_scale}")
        self.obs_scale = float(obs_scale)

    def forward(self, loc: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, self.obs_scale).to_event(1)


class LearnedGaussian(Likelihood):
    params_per_pixel = 2

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        loc, scale_raw = raw.chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(scale_raw) + MIN_OBS_SCALE).to_event(1)


class ContinuousBernoulli(Likelihood):
    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).to_event(1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-learned": LearnedGaussian,
    "continuous-bernoulli": ContinuousBernoulli,
}


def make_likelihood(name: str, obs_scale: float = 1.0) -> Likelihood:
    """The likelihood named ``name``; ``obs_scale`` is used by ``gaussian`` only."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return Gaussian(obs_scale) if name == "gaussian" else LIKELIHOODS[name]()
