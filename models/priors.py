r"""Priors of the (top) latent layer, picked by name (``--prior``): ``standard`` N(0, I) or ``vamp``.

N(0, I) is `StandardNormal.of_size` (``.to_event(1)``): ``dist.Normal(zeros, ones)`` with a log-density that
skips the location and the scale, the same values to the bit.

The VampPrior (Tomczak & Welling 2018) is the aggregate posterior of K learned pseudo-inputs u_k,

    p(z) = (1/K) sum_k q(z | u_k),        u_k = sigmoid(pseudo_logits_k) in (0, 1)^{x_dim},

computed with the model's own guide: `VampPrior` holds the pseudo-inputs ``[K, x_dim]`` and turns any
``posterior(x) -> q(z|x)`` (batch ``[K]``, event ``[z_dim]``) into the mixture. A family composes it: the
one-layer `models.vae.VAE` passes its q(z|x), `models.hierarchical.HierarchicalVAE` its top layer's
q(z_L | ...) along the bottom-up path. The pseudo-inputs start as nearly blank images, every pixel
0.05 + 0.01 N(0, 1) (the start of Tomczak & Welling's code for MNIST, `PSEUDO_INPUT_START`), and learn with
the rest of the model; the sigmoid keeps them the pixels the encoder expects. Whether the VampPrior learns at
all depends on the decoder's start: from PyTorch's initialisation (every pixel's logit near 0) it collapsed
in the first epoch; from the ``burda2015`` start (`pyro_vae.config.INITS`, the default under the Bernoulli
likelihood: p(x|z) at the training images' mean pixel) it learns (BENCHMARKS.md, "Model families").

Diagonal-Normal components give `DiagonalNormalMixture`, whose log-density never forms the
``[N, K, z_dim]`` differences that ``MixtureSameFamily`` does: with precisions P = 1/sigma^2,

    sum_d (z_d - mu_kd)^2 P_kd = (z*z) @ P^T - 2 z @ (mu*P)^T + sum_d mu_kd^2 P_kd        [N, K],

two matmuls in float64 (no cancellation at sigma down to the guides' floor, 1e-3), so memory is N x K, not
N x K x z_dim: 50,000 importance particles against K = 500 take 0.2 GB instead of 5 GB. Other components
(the full-covariance guide) get torch's ``MixtureSameFamily``.

No KL divergence is registered for a mixture, so ``TraceMeanField_ELBO`` (``--elbo meanfield``) falls back,
for this site, to the sampled log p(z) - log q(z|x) of ``Trace_ELBO`` (tests/test_hierarchical.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from pyro_vae.config import DEFAULT_PSEUDO_INPUTS, PRIORS
from pyro_vae.errors import ConfigError


class StandardNormal(dist.Normal):
    """N(0, 1) in each coordinate, made by `of_size` (batch shape ``[size]``; ``.to_event(1)`` for p(z) = N(0, I)):
    ``dist.Normal(zeros, ones)`` in every respect (sampling, KL divergences, expand, Normal's constructor, which
    Pyro's reparametrisers call with other locations and scales), but its ``log_prob`` skips the location and the
    scale, which make most of ``Normal.log_prob``'s ops.

    The values and their gradients are bit for bit Normal's: with loc 0 and scale 1, ``-((z - 0) ** 2) / (2 * 1)
    - log 1 - c`` is ``-0.5 z^2 - c`` exactly in floating point (c = log sqrt(2 pi)). Three elementwise ops instead
    of nine (and fewer backward), at every training step and every AIS evaluation (BENCHMARKS.md, "A
    standard-Normal prior"). A value of another dtype, or one that broadcasts against the batch shape, gets
    Normal's own log-density, as does an instance built by ``StandardNormal(loc, scale)``.
    """

    _standard = False  # made by `of_size`: loc 0 and scale 1

    @classmethod
    def of_size(cls, size: int, like: torch.Tensor) -> "StandardNormal":
        """N(0, 1) in ``size`` coordinates, on ``like``'s device and dtype."""
        standard = cls(like.new_zeros(size), like.new_ones(size))
        standard._standard = True
        return standard

    def expand(self, batch_shape: torch.Size, _instance: "StandardNormal | None" = None) -> "StandardNormal":
        new = super().expand(batch_shape, _instance)
        new._standard = self._standard
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if not (self._standard and isinstance(value, torch.Tensor) and value.dtype == self.loc.dtype
                and value.shape == torch.broadcast_shapes(value.shape, self.loc.shape)):
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        return value.square().mul(-0.5).sub(_LOG_SQRT_2PI)


#: Normal.log_prob's constant, written as torch writes it (the same float, hence the same float32 rounding).
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class DiagonalNormalMixture(TorchDistribution):
    r"""(1/K) sum_k N(z; loc_k, diag(scale_k^2)) for ``loc, scale [K, D]``: batch shape ``[]``, event ``[D]``.

    ``log_prob(z [..., D]) -> [...]`` by the matmul form of the module doc; ``sample`` picks a component
    uniformly, then draws from it (not reparameterised: a prior is scored, never sampled, in training).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        if loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(f"loc and scale must both be [K, D], got {tuple(loc.shape)} and {tuple(scale.shape)}")
        self.loc, self.scale = loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.loc.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.mean(0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z, loc, precision = value.double(), self.loc.double(), self.scale.double().pow(-2)
        squared = (z * z) @ precision.T - 2 * z @ (loc * precision).T + (loc * loc * precision).sum(-1)  # [..., K]
        log_norm = -self.scale.double().log().sum(-1) - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)  # [K]
        log_p = torch.logsumexp(log_norm - 0.5 * squared, dim=-1) - math.log(self.num_components)
        return log_p.to(value.dtype)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            k = torch.randint(self.num_components, shape, device=self.loc.device)
            return self.loc[k] + self.scale[k] * torch.randn(shape + self.event_shape, dtype=self.loc.dtype,
                                                             device=self.loc.device)


def mixture_of(components: dist.TorchDistribution) -> dist.TorchDistribution:
    """The equal-weight mixture of ``components`` (batch ``[K]``, event ``[D]``): batch ``[]``, event ``[D]``."""
    if len(components.batch_shape) != 1 or len(components.event_shape) != 1:
        raise ValueError(f"the components must have batch shape [K] and event shape [D], got "
                         f"{tuple(components.batch_shape)} and {tuple(components.event_shape)}")
    base = getattr(components, "base_dist", None)
    if (isinstance(components, torch.distributions.Independent) and components.reinterpreted_batch_ndims == 1
            and isinstance(base, torch.distributions.Normal)):
        return DiagonalNormalMixture(base.loc, base.scale)
    k = components.batch_shape[0]
    weights = dist.Categorical(logits=torch.zeros(k, dtype=components.mean.dtype, device=components.mean.device))
    return dist.MixtureSameFamily(weights, components)


#: Mean and standard deviation of the pseudo-inputs' pixels at the start, as fractions of a full-intensity pixel.
PSEUDO_INPUT_START = (0.05, 0.01)


class VampPrior(nn.Module):
    """K learned pseudo-inputs ``[K, x_dim]``; ``forward(posterior)`` is (1/K) sum_k posterior(u_k).

    ``pixel_scale``: the data value of a full-intensity pixel (``top`` for data served as levels 0..top), so that
    the pseudo-inputs are images in the data's units."""

    def __init__(self, x_dim: int, num_pseudo_inputs: int = DEFAULT_PSEUDO_INPUTS, pixel_scale: float = 1.0):
        super().__init__()
        self.pixel_scale = float(pixel_scale)
        if isinstance(num_pseudo_inputs, bool) or not isinstance(num_pseudo_inputs, int) or num_pseudo_inputs < 1:
            raise ConfigError(f"--pseudo-inputs must be a positive integer, got {num_pseudo_inputs!r}")
        mean, std = PSEUDO_INPUT_START
        start = (mean + std * torch.randn(num_pseudo_inputs, x_dim)).clamp(1e-3, 1 - 1e-3)
        self.pseudo_logits = nn.Parameter(torch.logit(start))  # sigmoid -> pixels in (0, 1)

    @property
    def num_pseudo_inputs(self) -> int:
        return self.pseudo_logits.shape[0]

    def pseudo_inputs(self) -> torch.Tensor:
        """u ``[K, x_dim]``, pixels in (0, ``pixel_scale``)."""
        return self.pixel_scale * torch.sigmoid(self.pseudo_logits)

    def forward(self, posterior: Callable[[torch.Tensor], dist.TorchDistribution]) -> dist.TorchDistribution:
        """p(z) = (1/K) sum_k posterior(u_k); ``posterior`` maps images ``[K, x_dim]`` to q with batch ``[K]``."""
        return mixture_of(posterior(self.pseudo_inputs()))


def make_prior(name: str, x_dim: int, num_pseudo_inputs: int = DEFAULT_PSEUDO_INPUTS,
               pixel_scale: float = 1.0) -> VampPrior | None:
    """The learned part of the prior named ``name``: None for ``standard`` (N(0, I) has none), else a `VampPrior`
    whose pseudo-inputs have pixels in (0, ``pixel_scale``)."""
    if name not in PRIORS:
        raise ConfigError(f"unknown prior {name!r}; choose one of {', '.join(PRIORS)}")
    return VampPrior(x_dim, num_pseudo_inputs, pixel_scale) if name == "vamp" else None
