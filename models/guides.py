"""Amortised guide families q(z|x), chosen by name.

A `GuideFamily` says how many numbers the encoder must output for a latent of
size ``z_dim`` and turns them into a distribution with event shape ``[z_dim]``.
New families are added to `GUIDES`; the guide code does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F

#: Smallest posterior standard deviation. Keeps log q finite and the
#: reparameterised gradient bounded when the encoder pushes a scale to 0.
MIN_SCALE = 1e-3


@dataclass(frozen=True)
class GuideFamily:
    """``num_outputs(z_dim)`` encoder outputs; ``build(raw, z_dim)`` gives q(z|x)."""

    name: str
    num_outputs: Callable[[int], int]
    build: Callable[[torch.Tensor, int], dist.TorchDistribution]


def _diagonal(raw: torch.Tensor, z_dim: int) -> dist.TorchDistribution:
    loc, scale_raw = raw.split(z_dim, dim=-1)
    return dist.Normal(loc, F.softplus(scale_raw) + MIN_SCALE).to_event(1)


GUIDES: dict[str, GuideFamily] = {
    "diagonal": GuideFamily("diagonal", num_outputs=lambda z_dim: 2 * z_dim, build=_diagonal),
}
