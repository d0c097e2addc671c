r"""What any model/guide pair says about images, read from Pyro traces (no attribute of the model assumed).

For a model with one observed site o (the contract of `models.base.LatentModel`):

- `prior_means`: E[x|z] for z ~ p(z): the mean of o's distribution in a trace of
  the model with its observation released (``poutine.uncondition``), every
  latent site (all layers) drawn from the model's own prior;
- `guide_reconstructions`: E[x|z] for one draw z ~ q(z|x): the model replayed on
  a trace of the guide;
- `observation_is_discrete`: whether o's distribution has a discrete support,
  i.e. whether log p(x) is the log-probability of the data (a binary or
  integer image) or a log-density.

Shapes: images ``[B, D]``; the means ``[B, D]`` in the data's units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine

from inference.estimators.importance import inspect_programs
from pyro_vae.device import forked_rng
from pyro_vae.errors import EstimationError


def observed_site(model: Callable, guide: Callable, x: torch.Tensor) -> str:
    """The name of the model's one observed site (the sites the model samples that the guide does not). Traces
    under a forked RNG: the caller's random stream is left as it was."""
    with forked_rng(x.device):
        layout = inspect_programs(model, guide, x)
    observed = [n for n in layout.model_sites if n not in layout.guide_sites]
    if len(observed) != 1:
        raise EstimationError(f"the model should observe one site, but it has {len(observed)} ({observed}) beside the "
                              "guide's latents")
    return observed[0]


def _mean(fn, name: str) -> torch.Tensor:
    try:
        return fn.mean
    except NotImplementedError:
        raise EstimationError(f"the distribution of the observed site {name!r} has no mean to draw") from None


@torch.no_grad()
def prior_means(model: Callable, guide: Callable, like: torch.Tensor, num_images: int) -> torch.Tensor:
    """Mean images ``[num_images, D]`` for latents drawn from the model's prior (all its latent sites).

    ``like``: real images whose rows give the batch its shape (repeated when fewer than ``num_images``); their
    values are not used: the observation is released.
    """
    name = observed_site(model, guide, like[:1])
    rows = like[torch.arange(num_images, device=like.device) % len(like)]
    trace = poutine.trace(poutine.uncondition(model)).get_trace(rows)
    return _mean(trace.nodes[name]["fn"], name)


@torch.no_grad()
def guide_reconstructions(model: Callable, guide: Callable, x: torch.Tensor) -> torch.Tensor:
    """Mean images ``[B, D]`` given one draw of every latent site from the guide ``q(z|x)`` for images ``x``."""
    name = observed_site(model, guide, x[:1])
    guide_trace = poutine.trace(guide).get_trace(x)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return _mean(trace.nodes[name]["fn"], name)


@torch.no_grad()
def observation_is_discrete(model: Callable, guide: Callable, x: torch.Tensor) -> bool:
    """Whether the observed site's distribution has a discrete support (its log_prob is a log-probability).
    Traces under a forked RNG: the caller's random stream is left as it was."""
    name = observed_site(model, guide, x[:1])
    with forked_rng(x.device):
        guide_trace = poutine.trace(guide).get_trace(x[:1])
        fn = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x[:1]).nodes[name]["fn"]
    return bool(getattr(fn.support, "is_discrete", False))
