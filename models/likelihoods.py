"""Observation models p(x|z), chosen by name.

A `Likelihood` turns a decoder's raw output ``[..., params_per_pixel * x_dim]``
into a distribution over the image with event shape ``[x_dim]``. New
likelihoods are added to `LIKELIHOODS`; the model code does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch


@dataclass(frozen=True)
class Likelihood:
    """``build(raw)`` gives p(x|z); ``binary_data``: the data must be 0/1 pixels."""

    name: str
    params_per_pixel: int
    binary_data: bool
    build: Callable[[torch.Tensor], dist.TorchDistribution]


def _bernoulli(logits: torch.Tensor) -> dist.TorchDistribution:
    # validate_args=False: the data are checked once before training, not on every step.
    return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)


LIKELIHOODS: dict[str, Likelihood] = {
    "bernoulli": Likelihood("bernoulli", params_per_pixel=1, binary_data=True, build=_bernoulli),
}
