r"""Amortised guide families q(z|x), chosen by name.

A guide head is a small module: ``num_inputs`` says how many numbers the
encoder must output per datapoint, and ``forward(raw)`` turns them into a
distribution with event shape ``[z_dim]``. Add one to `GUIDES`; the guide code
does not change.

- ``diagonal``: N(mu, diag(sigma^2)), sigma = softplus(.) + `MIN_SCALE` (mean field).
- ``full``: N(mu, L L^T) with L lower-triangular from the encoder (``scale_tril``),
  its diagonal positive and bounded away from 0 the same way.
- ``iaf``: the diagonal Normal pushed through ``flow_steps`` affine inverse
  autoregressive flows (Kingma et al. 2016) from ``pyro.distributions.transforms``,
  each conditioned on the encoder output so the whole flow is amortised.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn

#: Smallest posterior standard deviation. Keeps log q finite and the
#: reparameterised gradient bounded when the encoder pushes a scale to 0.
MIN_SCALE = 1e-3


class GuideHead(nn.Module):
    """Base: ``forward(raw [..., num_inputs])`` gives q(z|x) with event shape ``[z_dim]``."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    @property
    def num_inputs(self) -> int:
        raise NotImplementedError

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError


class DiagonalNormal(GuideHead):
    @property
    def num_inputs(self) -> int:
        return 2 * self.z_dim

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        loc, scale_raw = raw.split(self.z_dim, dim=-1)
        return dist.Normal(loc, F.softplus(scale_raw) + MIN_SCALE).to_event(1)


class FullNormal(GuideHead):
    def __init__(self, z_dim: int):
        super().__init__(z_dim)
        rows, cols = torch.tril_indices(z_dim, z_dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    @property
    def num_inputs(self) -> int:
        return 2 * self.z_dim + self.z_dim * (self.z_dim - 1) // 2

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        z = self.z_dim
        loc, diag_raw, off_diagonal = raw.split([z, z, raw.shape[-1] - 2 * z], dim=-1)
        scale_tril = torch.diag_embed(F.softplus(diag_raw) + MIN_SCALE)
        scale_tril[..., self._rows, self._cols] = off_diagonal
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


class InverseAutoregressiveFlow(GuideHead):
    """Diagonal Normal base, then ``flow_steps`` conditional affine autoregressive transforms."""

    def __init__(self, z_dim: int, flow_steps: int = 2):
        super().__init__(z_dim)
        if flow_steps < 1:
            raise ValueError(f"--flow-steps must be at least 1, got {flow_steps}")
        self.base = DiagonalNormal(z_dim)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(z_dim, context_dim=self.base.num_inputs) for _ in range(flow_steps))

    @property
    def num_inputs(self) -> int:
        return self.base.num_inputs

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return dist.TransformedDistribution(self.base(raw), [flow.condition(raw) for flow in self.flows])


GUIDES: dict[str, type[GuideHead]] = {"diagonal": DiagonalNormal, "full": FullNormal, "iaf": InverseAutoregressiveFlow}


def make_guide(name: str, z_dim: int, flow_steps: int = 2) -> GuideHead:
    """The guide head named ``name``; ``flow_steps`` is used by ``iaf`` only."""
    if name not in GUIDES:
        raise ValueError(f"unknown guide {name!r}; choose one of {', '.join(GUIDES)}")
    return InverseAutoregressiveFlow(z_dim, flow_steps) if name == "iaf" else GUIDES[name](z_dim)
