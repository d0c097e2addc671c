"""Networks that map inputs to distribution parameters (plain ``torch.nn``):
an MLP of any depth, width and activation, and a small conv net for 28x28.

The networks know nothing about probability: an encoder's output is split
into q(z|x)'s parameters by a guide family, a decoder's output becomes
p(x|z)'s parameters by a likelihood (see ``models.guides``,
``models.likelihoods``). Leading dimensions pass through untouched, so a
``[K, B, D]`` stack of particles works as well as ``[B, D]``.

``ARCHITECTURES`` builds an (encoder, decoder) pair by name.
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


def _over_leading_dims(net: nn.Module, x: torch.Tensor, item_shape: tuple[int, ...]) -> torch.Tensor:
    """``net`` on ``x [*lead, *item_shape]`` as one batch ``[N, *item_shape]``; output ``[*lead, -1]``."""
    lead = x.shape[: x.dim() - len(item_shape)]
    return net(x.reshape(-1, *item_shape)).reshape(*lead, -1)


class ConvEncoder(nn.Module):
    """28x28 images ``[..., 784]`` -> two stride-2 convolutions (32, 64 channels) -> linear ``out_dim``."""

    def __init__(self, out_dim: int, activation: str = "relu", side: int = 28):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.side = side
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), act(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), act(),
            nn.Flatten(), nn.Linear(64 * (side // 4) ** 2, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = (1, self.side, self.side)
        return _over_leading_dims(self.net, x.reshape(*x.shape[:-1], *image), image)


class ConvDecoder(nn.Module):
    """Latents ``[..., z_dim]`` -> linear -> two stride-2 transposed convolutions -> ``[..., channels * 784]``.

    Output is channel-major (all pixels of channel 0, then channel 1), the
    layout the likelihoods split with ``chunk``.
    """

    def __init__(self, z_dim: int, channels: int = 1, activation: str = "relu", side: int = 28):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.z_dim, self.side = z_dim, side
        self.net = nn.Sequential(
            nn.Linear(z_dim, 64 * (side // 4) ** 2), act(),
            nn.Unflatten(1, (64, side // 4, side // 4)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _over_leading_dims(self.net, z, (self.z_dim,))


ARCHITECTURES = ("mlp", "conv")


def make_networks(arch: str, x_dim: int, z_dim: int, hidden_dims: Sequence[int], activation: str,
                  encoder_out: int, decoder_channels: int) -> tuple[nn.Module, nn.Module]:
    """Encoder ``[..., x_dim] -> [..., encoder_out]`` and decoder ``[..., z_dim] -> [..., decoder_channels * x_dim]``.

    ``mlp``: ``hidden_dims`` for the encoder, mirrored for the decoder. ``conv``:
    28x28 images only; ``hidden_dims`` is not used.
    """
    if arch == "mlp":
        return (MLP(x_dim, hidden_dims, encoder_out, activation),
                MLP(z_dim, tuple(reversed(tuple(hidden_dims))), decoder_channels * x_dim, activation))
    if arch == "conv":
        if x_dim != 784:
            raise ValueError(f"--arch conv takes 28x28 images (x_dim 784), got x_dim {x_dim}")
        return ConvEncoder(encoder_out, activation), ConvDecoder(z_dim, decoder_channels, activation)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
