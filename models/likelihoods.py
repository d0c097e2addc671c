r"""Observation models p(x|z), chosen by name.

A likelihood is a small module: it turns a decoder's raw output
``[..., params_per_pixel * x_dim]`` (parameter-major: all pixels' first
parameter, then all pixels' second) into a distribution over the image with
event shape ``[x_dim]``. Add one to `LIKELIHOODS`; the model code does not change.

- ``bernoulli``: p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)); binary pixels (`BernoulliPixels`, whose
  log-density `bernoulli_log_prob_sum` takes one log per 64 pixels where no gradient is taken).
- ``gaussian``: N(x; mu(z), c I) with fixed variance c = obs_scale^2. Then
  log p(x|z) = -||x - mu||^2 / (2c) + const, so the ELBO is
  C * (-||x - mu||^2) - KL + const with C = 1 / (2c): maximising it is the same
  as maximising -||x - mu||^2 - 2c * KL, a squared-error autoencoder with KL
  weight beta = 2c (tested in tests/test_variants.py).
- ``gaussian-learned``: N(x; mu(z), sigma(z)^2) per pixel, sigma >= `MIN_OBS_SCALE`.
- ``continuous-bernoulli``: the normalised continuous Bernoulli of
  Loaiza-Ganem & Cunningham (2019) for pixels in [0, 1].
- ``discretized-logistic``: a mixture of K discretized logistics per pixel over
  the integer levels 0..top (top = 2^b - 1; PixelCNN++, Salimans et al. 2017,
  rescaled to integer levels), `DiscretizedLogisticMixture`; K =
  ``mixture_components`` (K = 1: the plain discretized logistic). Channels are
  *independent*: each of the C x H x W values has its own mixture (PixelCNN++
  couples a pixel's R, G, B means linearly; this does not).
- ``beta-binomial``: BetaBinomial(alpha, beta, n = top) per pixel (Pyro's), an
  exact pmf over 0..top with two parameters per pixel.

The two discrete likelihoods (``discrete_levels = True``) take integer levels
0..top as data (float tensors holding integers, `pyro_vae.images`), and their
log-likelihoods are log-probabilities of the discrete image: nats per image,
bits/dim = -log P(x) / (D ln 2). Densities of continuous likelihoods are in
nats per image *of density*: not comparable with log-probabilities, unless the
data are dequantized (``--dequantize uniform``: the report's bound
E_u[log p((x + u) / 2^b)] - D b log 2 <= log P(x)).
"""

from __future__ import annotations

import contextlib
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.util import ignore_jit_warnings
from torch import nn

from pyro_vae import config
from pyro_vae.config import DEFAULT_MIXTURE_COMPONENTS

#: Smallest learned pixel standard deviation (grey levels live in [0, 1]).
MIN_OBS_SCALE = 1e-2


#: Most pixels per product in `bernoulli_log_prob_sum`: each factor lies in (1, 2], so a product stays below 2^64.
PRODUCT_GROUP = 64


def _product_group(num_pixels: int) -> int:
    """Pixels per product: the largest divisor of ``num_pixels`` in [`PRODUCT_GROUP` / 2, `PRODUCT_GROUP`] (no
    padding copy: 56 for MNIST's 784), else `PRODUCT_GROUP` with the last group padded by ones."""
    for group in range(PRODUCT_GROUP, PRODUCT_GROUP // 2 - 1, -1):
        if num_pixels % group == 0:
            return group
    return PRODUCT_GROUP if num_pixels > PRODUCT_GROUP else max(num_pixels, 1)


def bernoulli_log_prob_sum(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    r"""sum_d log Bernoulli(value_d; sigmoid(logits_d)) over the last dim (broadcast), nats: ``[...]``.

    Where a gradient will be taken (grad mode on and an input requiring it: training, AIS's potential) it is
    torch's fused ``binary_cross_entropy_with_logits``, whose forward and backward together are the fastest
    there, and which a traced loss keeps without a Python node. Where none is (the report's forward passes):
    log Bernoulli(x; sigmoid(l)) = x l - softplus(l) and softplus(l) = max(l, 0) + log(1 + e^{-|l|}), so

        sum_d = sum_d [x_d l_d - max(l_d, 0)] - sum_g log prod_{d in g} (1 + e^{-|l_d|})

    over groups g of up to `PRODUCT_GROUP` pixels (`_product_group`): one ``log`` per 56 to 64 pixels where
    torch's takes a ``log1p`` of every pixel. Each factor is in (1, 2], so a group's product is exact to 64
    float32 roundings, a few 1e-6 of its log; the float32 sum over pixels rounds as much (`tests/test_tiled.py`).
    Measured (`benchmarks/step_phases.py`, Intel Xeon, 2 threads, torch 2.14.1, 2026-12-07; BENCHMARKS.md,
    "Where a training step's time goes"): forward and backward 0.104 ms (fused) against 0.141 ms (this form with
    its exact backward, as training used before) at [20, 784]; 0.216 against 0.263 ms at [100, 784]. A form with
    fewer passes for the forward-only case, ``softplus(l) - x l``, was 6% faster in the report's estimator (100
    images, K = 1,000) but made its results depend on the chunk size in the last bits
    (`tests/test_importance.py` asks for none), so this one stays there.
    """
    if torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad):
        logits, value = torch.broadcast_tensors(logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1).neg()
    return _log_prob_sum(logits, value)


def _log_prob_sum(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`bernoulli_log_prob_sum` where no gradient is taken (in place on its own buffers only: its inputs are
    untouched)."""
    factors = logits.abs().neg_().exp_().add_(1.0)  # 1 + e^{-|l|}, in one buffer
    # a trace freezes the grouping: right, the pixel count is the model's. Only then: catch_warnings resets
    # Python's once-per-location warning registry each time, which an eager step must not do
    with ignore_jit_warnings() if torch.jit.is_tracing() else contextlib.nullcontext():
        group = _product_group(factors.shape[-1])
        pad = -factors.shape[-1] % group
        if pad:
            factors = F.pad(factors, (0, pad), value=1.0)
    log_products = factors.reshape(*factors.shape[:-1], -1, group).prod(-1).log_().sum(-1)
    # max(l, 0) - x l, summed, then negated with the log-products: one buffer and a negation per row
    return (torch.addcmul(logits.clamp(min=0), value, logits, value=-1).sum(-1) + log_products).neg_()


class BernoulliPixels(dist.Independent):
    """Independent Bernoulli pixels on logits, event shape ``[D]``: ``Bernoulli(logits).to_event(1)`` whose
    log-density is `bernoulli_log_prob_sum` (the same values to float32 rounding, sooner)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "BernoulliPixels":
        return BernoulliPixels(self.base_dist.logits.expand(*batch_shape, *self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob_sum(self.base_dist.logits, value)


#: The top level of 8-bit data (levels 0..255).
TOP_8BIT = 255


class DiscretizedLogisticMixture(TorchDistribution):
    r"""A mixture of K logistics discretized to the integer levels 0..``top``, one mixture per batch element.

    ``logits``, ``loc``, ``log_scale``: ``[..., K]`` (mixture logits, means and log-scales in level units);
    batch shape ``[...]``, event shape ``()``, support the integers 0..top. Component j puts on level k

        P_j(k) = F_j(k + 1/2) - F_j(k - 1/2),   F_j(t) = sigmoid((t - loc_j) / s_j),

    with level 0 taking (-inf, 1/2] and level ``top`` taking [top - 1/2, inf), so the pmf sums to 1 for any
    parameters. Computed in log space: log F(k + 1/2) = logsigmoid(a), log(1 - F(k - 1/2)) = logsigmoid(-b), and
    for an interior bin the exact identity sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^{b - a}) with
    b - a = -1/s, so log P = logsigmoid(a) + logsigmoid(-b) + log(1 - e^{-1/s}): no difference of two rounded
    CDFs, so the mass never underflows to 0 (where PixelCNN++ falls back to the mid-bin density, this form is
    exact at any distance from the mean); log(1 - e^{-w}) is taken as log w - w/2 for w < 1e-5 (huge scales).
    ``log_scale`` is floored at ``log_scale_min`` (gradients stop below it, as PixelCNN++'s clamp).
    """

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "log_scale": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, top: int = TOP_8BIT,
                 log_scale_min: float | None = None, validate_args: bool | None = None):
        logits, loc, log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        self.top = int(top)
        self.log_scale_min = math.log(self.top / 2) - 7.0 if log_scale_min is None else log_scale_min
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.loc = loc
        self.log_scale = log_scale.clamp(min=self.log_scale_min)
        super().__init__(logits.shape[:-1], torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.top)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        new.top, new.log_scale_min = self.top, self.log_scale_min
        new.logits, new.loc, new.log_scale = (t.expand(shape) for t in (self.logits, self.loc, self.log_scale))
        super(DiscretizedLogisticMixture, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P_j(value) of each component: ``[..., K]``."""
        x = value.unsqueeze(-1)
        inv_s = torch.exp(-self.log_scale)
        a = inv_s * (x - self.loc + 0.5)  # (k + 1/2 - loc) / s
        b = inv_s * (x - self.loc - 0.5)  # (k - 1/2 - loc) / s
        log_cdf_upper = F.logsigmoid(a)  # log F(k + 1/2): level 0's mass
        log_sf_lower = F.logsigmoid(-b)  # log (1 - F(k - 1/2)): the top level's mass
        w = inv_s  # the bin's width over the scale
        small = w < 1e-5
        log_width = torch.where(small, -self.log_scale - w / 2,
                                torch.log(-torch.expm1(-torch.where(small, torch.ones_like(w), w))))
        interior = log_cdf_upper + log_sf_lower + log_width
        return torch.where(x <= 0, log_cdf_upper, torch.where(x >= self.top, log_sf_lower, interior))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.logsumexp(self.logits + self.component_log_prob(value), dim=-1)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """A component by its weight, a logistic draw from it, rounded to the nearest level and clamped to
        0..top (the clamp is the edge bins' tails)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        j = torch.distributions.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
        loc = self.loc.expand(shape + self.loc.shape[-1:]).gather(-1, j).squeeze(-1)
        scale = self.log_scale.expand(shape + self.loc.shape[-1:]).gather(-1, j).squeeze(-1).exp()
        u = torch.rand(shape, dtype=loc.dtype, device=loc.device).clamp(1e-6, 1 - 1e-6)
        return (loc + scale * (torch.log(u) - torch.log1p(-u))).round().clamp(0, self.top)

    @property
    def mean(self) -> torch.Tensor:
        """E[X] = sum_{k=1}^{top} P(X >= k) = sum_k sum_j pi_j sigmoid((loc_j + 1/2 - k) / s_j), summed exactly
        over the levels in blocks of 64."""
        weights, inv_s = self.logits.exp(), torch.exp(-self.log_scale)
        total = torch.zeros_like(self.loc)
        for start in range(1, self.top + 1, 64):
            k = torch.arange(start, min(start + 64, self.top + 1), dtype=self.loc.dtype, device=self.loc.device)
            total = total + torch.sigmoid((self.loc.unsqueeze(-1) + 0.5 - k) * inv_s.unsqueeze(-1)).sum(-1)
        return (weights * total).sum(-1)


class Likelihood(nn.Module):
    """Base: ``forward(raw)`` gives p(x|z). ``binary_data``: needs 0/1 pixels. ``discrete_levels``: takes the
    integer levels 0..``top`` (a pmf over them; the data are served as levels, not scaled to [0, 1])."""

    params_per_pixel = 1
    binary_data = False
    discrete_levels = False
    top = 1

    @property
    def pixel_scale(self) -> float:
        """The data value of a full-intensity pixel: ``top`` for level data, else 1. Encoders divide by it, so
        that they see pixels in [0, 1] whatever the encoding."""
        return float(self.top) if self.discrete_levels else 1.0

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def output_bias(self, mean_pixels: torch.Tensor) -> torch.Tensor | None:
        """The decoder's output bias ``[params_per_pixel * D]`` at which p(x|z) has mean ``mean_pixels [D]`` when
        the last layer's weights contribute nothing, or None where this likelihood has no such start (its own
        initialisation is kept). Burda et al. (2015) start their decoder so."""
        return None


class Bernoulli(Likelihood):
    binary_data = True

    def output_bias(self, mean_pixels: torch.Tensor) -> torch.Tensor:
        """logit of the mean pixel, clamped to [1e-3, 1 - 1e-3] (a pixel never on in the training images)."""
        return torch.logit(mean_pixels.clamp(1e-3, 1 - 1e-3))

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        # no validation: the data are checked once before training, not on every step.
        return BernoulliPixels(logits)


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


class DiscretizedLogistic(Likelihood):
    """K discretized logistics per pixel over the levels 0..top, channels independent
    (`DiscretizedLogisticMixture`). The decoder's ``3K * D`` outputs, parameter-major: K mixture logits, K means,
    K log-scales per pixel. Means are ``top * (1/2 + raw)`` (the middle level at raw 0), log-scales
    ``raw + log(top / 8)``."""

    discrete_levels = True

    def __init__(self, components: int = DEFAULT_MIXTURE_COMPONENTS, top: int = TOP_8BIT):
        super().__init__()
        if components < 1:
            raise ValueError(f"--mixture-components must be at least 1, got {components}")
        self.components, self.top = int(components), int(top)
        self.params_per_pixel = 3 * self.components

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        k = self.components
        params = raw.unflatten(-1, (3 * k, -1)).movedim(-2, -1)  # [..., D, 3K]
        logits, loc, log_scale = params.split(k, dim=-1)
        return DiscretizedLogisticMixture(logits, self.top * (0.5 + loc), log_scale + math.log(self.top / 8),
                                          self.top, validate_args=False).to_event(1)


class BetaBinomialLikelihood(Likelihood):
    """BetaBinomial(alpha, beta, n = top) per pixel, ``alpha, beta = softplus(raw)`` kept in
    [`MIN_CONCENTRATION`, `MAX_CONCENTRATION`]."""

    params_per_pixel = 2
    discrete_levels = True
    MIN_CONCENTRATION, MAX_CONCENTRATION = 1e-3, 1e4

    def __init__(self, top: int = TOP_8BIT):
        super().__init__()
        self.top = int(top)

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        a, b = (F.softplus(r).clamp(self.MIN_CONCENTRATION, self.MAX_CONCENTRATION) for r in raw.chunk(2, dim=-1))
        return dist.BetaBinomial(a, b, total_count=self.top, validate_args=False).to_event(1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-learned": LearnedGaussian,
    "continuous-bernoulli": ContinuousBernoulli,
    "discretized-logistic": DiscretizedLogistic,
    "beta-binomial": BetaBinomialLikelihood,
}
#: The likelihoods over integer levels 0..top (their data are levels; ``discrete_levels``).
DISCRETE_LIKELIHOODS = tuple(name for name, cls in LIKELIHOODS.items() if cls.discrete_levels)
assert DISCRETE_LIKELIHOODS == config.DISCRETE_LIKELIHOODS  # the data layer's copy of the names


def make_likelihood(name: str, obs_scale: float = 1.0, mixture_components: int = DEFAULT_MIXTURE_COMPONENTS,
                    top: int = TOP_8BIT) -> Likelihood:
    """The likelihood named ``name``; ``obs_scale`` is used by ``gaussian`` only, ``mixture_components`` by
    ``discretized-logistic``, ``top`` (2^b - 1) by the discrete ones."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    if name == "gaussian":
        return Gaussian(obs_scale)
    if name == "discretized-logistic":
        return DiscretizedLogistic(mixture_components, top)
    if name == "beta-binomial":
        return BetaBinomialLikelihood(top)
    return LIKELIHOODS[name]()


def drop_level_kwargs(kwargs: dict, config) -> dict:
    """``kwargs`` (a model's ``init_kwargs``) without ``mixture_components`` and ``bit_depth`` where the likelihood
    does not use them, as checkpoints written before they existed."""
    if config.likelihood != "discretized-logistic":
        kwargs.pop("mixture_components", None)
    if not config.discrete_levels:
        kwargs.pop("bit_depth", None)
    return kwargs
