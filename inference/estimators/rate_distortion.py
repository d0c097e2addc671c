r"""The ELBO split into rate and distortion, per datapoint, from Pyro traces.

For one draw z ~ q(z|x_i) of the guide, with the model replayed on it,

    rate(x_i)       = log q(z|x_i) - log p(z)      (a one-sample estimate of KL(q(z|x_i) || p(z)), nats)
    distortion(x_i) = -log p(x_i|z)                (nats)
    ELBO(x_i)       = -(rate + distortion)

(Alemi et al. 2018, "Fixing a broken ELBO"). The latent sites are those the
guide samples; every observed site of the model counts toward distortion. The
rate is also split by latent site (``site_rates``): rate_s(x_i) = log q(z_s|...)
- log p(z_s|...), each site's densities at the same draw, so in a model with
several stochastic layers each layer's term (a one-sample estimate of its KL
given the layers it depends on) and sum_s rate_s = rate.
Densities are unscaled (a KL weight does not change them) and summed within
each datapoint by `inference.estimators.importance.trace_sum`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pyro import poutine

from inference.estimators.importance import inspect_programs, trace_sum
from pyro_vae.device import forked_rng


@dataclass
class RateDistortion:
    """Per-datapoint float64 tensors ``[B]`` on ``x``'s device, nats."""

    rate: torch.Tensor
    distortion: torch.Tensor
    site_rates: dict[str, torch.Tensor] = field(default_factory=dict)  # latent site -> its share of the rate [B]

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.rate + self.distortion)


@torch.no_grad()
def rate_distortion(model: Callable, guide: Callable, x: torch.Tensor, seed: int = 0,
                    batch_size: int = 1000) -> RateDistortion:
    """One-sample rate and distortion of every image in ``x [N, ...]``, ``batch_size`` images at a time.

    ``model`` and ``guide`` take a batch of images and put them in
    ``pyro.plate("data")``. Runs under a forked RNG seeded once by ``seed``:
    the caller's random stream is left as it was, and the draws are those a
    ``Trace_ELBO`` loss over the same batches on the same seed would make.
    """
    site_rates: dict[str, list[torch.Tensor]] = {}
    distortions = []
    with forked_rng(x.device):
        layout = inspect_programs(model, guide, x[:1])
        observed = [n for n in layout.model_sites if n not in layout.guide_sites]
        torch.manual_seed(seed)
        for xb in x.split(batch_size):
            guide_trace = poutine.trace(guide).get_trace(xb)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(xb)
            args = (layout.particle_dim, 1, len(xb))  # one particle: trace_sum gives [1, len(xb)]
            for site in layout.guide_sites:
                rate = trace_sum(guide_trace, [site], *args) - trace_sum(model_trace, [site], *args)
                site_rates.setdefault(site, []).append(rate[0])
            distortions.append(-trace_sum(model_trace, observed, *args)[0])
    by_site = {site: torch.cat(parts) for site, parts in site_rates.items()}
    return RateDistortion(sum(by_site.values()), torch.cat(distortions), by_site)
