"""Networks that map inputs to distribution parameters (plain ``torch.nn``):
an MLP of any depth, width and activation, and a conv net for square images of any side and channels.

The networks know nothing about probability: an encoder's output is split
into q(z|x)'s parameters by a guide family, a decoder's output becomes
p(x|z)'s parameters by a likelihood (see ``models.guides``,
``models.likelihoods``). Leading dimensions pass through untouched, so a
``[K, B, D]`` stack of particles works as well as ``[B, D]``.

``ARCHITECTURES`` builds an (encoder, decoder) pair by name. An encoder's
``input_scale`` multiplies its input first: data served as integer levels
0..top (the discrete likelihoods) reach the first layer as pixels in [0, 1],
as every other encoding does (raw levels saturate a tanh layer at
initialisation, and the encoder then ignores x).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """``in_dim -> hidden_dims... -> out_dim``, ``activation`` between layers, linear output; the input is
    multiplied by ``input_scale`` first (a constant, not a parameter: no state-dict entry)."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "tanh",
                 input_scale: float = 1.0):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        dims = [in_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.input_scale == 1.0 else x * self.input_scale)


def glorot_initialise(mlp: MLP, output_bias: torch.Tensor | None = None) -> None:
    """Glorot-uniform weights and zero biases in every linear layer of ``mlp`` (Burda et al. 2015's start), the
    last layer's bias set to ``output_bias`` where given. Draws from torch's global RNG."""
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    if output_bias is not None:
        with torch.no_grad():
            mlp[-1].bias.copy_(output_bias.to(mlp[-1].bias))


def _over_leading_dims(net: nn.Module, x: torch.Tensor, item_shape: tuple[int, ...]) -> torch.Tensor:
    """``net`` on ``x [*lead, *item_shape]`` as one batch ``[N, *item_shape]``; output ``[*lead, -1]``."""
    lead = x.shape[: x.dim() - len(item_shape)]
    return net(x.reshape(-1, *item_shape)).reshape(*lead, -1)


#: Channels of the stride-2 convolutions, outermost first (the encoder's order); deeper nets repeat the last.
CONV_CHANNELS = (32, 64, 128, 256)


def conv_halvings(side: int) -> int:
    """How many stride-2 convolutions take a ``side`` x ``side`` image down: halve while the side is even and
    above 7, so 28 -> 14 -> 7, 32 -> ... -> 4, 64 -> ... -> 4. Raises `ConfigError` when it cannot halve once."""
    halvings = 0
    while side % 2 == 0 and side > 7:
        side, halvings = side // 2, halvings + 1
    if halvings == 0:
        raise ConfigError("--arch conv needs square images with an even side of at least 8 (halved by strided "
                         f"convolutions down to 7x7 or 4x4), got side {side}; use --image-size or --arch mlp")
    return halvings


def _widths(halvings: int) -> list[int]:
    return [CONV_CHANNELS[min(i, len(CONV_CHANNELS) - 1)] for i in range(halvings)]


class ConvEncoder(nn.Module):
    """Images ``[..., C * S * S]`` -> stride-2 convolutions (32, 64, ... channels) down to ``S / 2^L`` -> linear.

    ``L`` = `conv_halvings` (S); for 28x28 grey images two convolutions, 32 and 64 channels (28 -> 14 -> 7).
    The input is multiplied by ``input_scale`` first.
    """

    def __init__(self, out_dim: int, activation: str = "relu", side: int = 28, channels: int = 1,
                 input_scale: float = 1.0):
        super().__init__()
        self.input_scale = float(input_scale)
        act = ACTIVATIONS[activation]
        self.side, self.channels = side, channels
        widths = _widths(conv_halvings(side))
        layers: list[nn.Module] = []
        for c_in, c_out in zip([channels, *widths[:-1]], widths):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]
        inner = side >> len(widths)
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * inner**2, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = (self.channels, self.side, self.side)
        if self.input_scale != 1.0:
            x = x * self.input_scale
        return _over_leading_dims(self.net, x.reshape(*x.shape[:-1], *image), image)


class ConvDecoder(nn.Module):
    """Latents ``[..., z_dim]`` -> linear -> stride-2 transposed convolutions -> ``[..., out_channels * S * S]``.

    The mirror of `ConvEncoder`. Output is channel-major: with ``out_channels``
    = P * C (P parameters per pixel of a C-channel image), all pixels of
    channel 0, then channel 1, ..., the layout the likelihoods split with ``chunk``.
    """

    def __init__(self, z_dim: int, out_channels: int = 1, activation: str = "relu", side: int = 28):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.z_dim, self.side = z_dim, side
        widths = list(reversed(_widths(conv_halvings(side))))
        inner = side >> len(widths)
        layers: list[nn.Module] = [nn.Linear(z_dim, widths[0] * inner**2), act(),
                                   nn.Unflatten(1, (widths[0], inner, inner))]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]
        layers.append(nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _over_leading_dims(self.net, z, (self.z_dim,))


ARCHITECTURES = ("mlp", "conv")


def make_networks(arch: str, x_dim: int, z_dim: int, hidden_dims: Sequence[int], activation: str,
                  encoder_out: int, decoder_channels: int, image_shape: Sequence[int] | None = None,
                  input_scale: float = 1.0) -> tuple[nn.Module, nn.Module]:
    """Encoder ``[..., x_dim] -> [..., encoder_out]`` and decoder ``[..., z_dim] -> [..., decoder_channels * x_dim]``.

    ``mlp``: ``hidden_dims`` for the encoder, mirrored for the decoder, any
    ``x_dim``. ``conv``: square images ``image_shape`` (C, S, S), by default
    1 x 28 x 28 (`conv_halvings` says which sides); ``hidden_dims`` is not used. The encoder multiplies
    its input by ``input_scale`` (1 / top for data served as levels 0..top).
    """
    if arch == "mlp":
        return (MLP(x_dim, hidden_dims, encoder_out, activation, input_scale),
                MLP(z_dim, tuple(reversed(tuple(hidden_dims))), decoder_channels * x_dim, activation))
    if arch == "conv":
        channels, height, width = image_shape or ((1, 28, 28) if x_dim == 784 else (0, 0, 0))
        if height != width or channels * height * width != x_dim or not height:
            raise ConfigError(f"--arch conv takes square images; x_dim {x_dim} with image shape {image_shape} is not "
                             "one (use --image-size S, or --arch mlp)")
        return (ConvEncoder(encoder_out, activation, height, channels, input_scale),
                ConvDecoder(z_dim, decoder_channels * channels, activation, height))
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
