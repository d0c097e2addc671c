"""Networks that map inputs to distribution parameters (plain ``torch.nn``).

The networks know nothing about probability: an encoder's output is split
into q(z|x)'s parameters by a guide family, a decoder's output becomes
p(x|z)'s parameters by a likelihood (see ``models.guides``,
``models.likelihoods``). Leading dimensions pass through untouched, so a
``[K, B, D]`` stack of particles works as well as ``[B, D]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """``in_dim -> hidden_dims... -> out_dim``, ``activation`` between layers, linear output."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "tanh"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        dims = [in_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)
