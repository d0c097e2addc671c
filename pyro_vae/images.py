"""Images served as float batches: one split of pixels held on one device, binarised explicitly.

Binarisation modes (``binarize``):

- ``dynamic``: a fresh Bernoulli draw x ~ Bernoulli(grey / 255) each time a
  batch is served (the protocol of Burda et al. 2015);
- ``static``: one seeded draw at load time, reused every epoch;
- ``none``: grey levels scaled to [0, 1] (for continuous likelihoods).

With ``binarize none`` the grey levels x in 0..2^b - 1 (b = 8 for uint8 files, `bit_depth`) reach the model in
one of three encodings (``encoding``, `ENCODINGS`):

- ``unit``: x / (2^b - 1) in [0, 1] (continuous likelihoods; the only one for float sources);
- ``levels``: the integers x themselves, as float32 tensors holding 0..2^b - 1 exactly (the discrete
  likelihoods, ``discretized-logistic`` and ``beta-binomial``; float32 holds every integer up to 2^24);
- ``dequantized``: (x + u) / 2^b with u ~ U[0, 1)^D drawn afresh for every batch, seeded by (seed, epoch,
  step) like a dynamic binarisation (``--dequantize uniform``: a density on [0, 1) trained on dequantized data).

Every random choice is a pure function of ``(seed, epoch, step)`` (`epoch_order`, `served`), so a run
stopped mid-epoch resumes with exactly the batches it would have seen, and files streamed batch by batch
(`pyro_vae.streaming`) are served the same batches as the same images held here.
Evaluation data are binarised once with a recorded seed (`Images.frozen`).

Where pixels come from is `pyro_vae.sources`; this module knows nothing of it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch

from pyro_vae.errors import DataError
from pyro_vae.seeds import seed_for

BINARIZE_CHOICES = ("dynamic", "static", "none")
ENCODINGS = ("unit", "levels", "dequantized")


def check_images(x: torch.Tensor, x_dim: int | None = None, binary: bool = False, top: int | None = None,
                 likelihood: str = "discrete") -> None:
    """Raise `DataError` unless ``x`` is a ``[N, x_dim]`` batch of pixels the model can take.

    Floating pixels must be finite and in [0, 1] (uint8 grey levels are always
    in range); ``binary`` also requires every pixel to be 0 or 1 (255 for uint8),
    as a Bernoulli likelihood does. ``top``: the model is a pmf over the levels 0..top (the ``likelihood``
    named), so the pixels must be those integers (uint8, or floats holding integers), not floats in [0, 1].
    """
    if top is not None:
        if x.dim() != 2 or (x_dim is not None and x.shape[1] != x_dim):
            check_images(x, x_dim)  # the shape's own message
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise DataError(f"images must be uint8 grey levels or floats holding levels 0..{top}, got dtype {x.dtype}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise DataError("images contain NaN or infinite pixels; clean or drop those images")
        lo, hi = x.min().item(), x.max().item()
        if x.is_floating_point() and ((x != x.round()).any() or (hi <= 1 and top > 1)):
            raise DataError(f"the {likelihood} likelihood takes integer grey levels 0..{top}, but these pixels are "
                            f"{'binary' if ((x == 0) | (x == 1)).all() else 'floats'} in [{lo:g}, {hi:g}]; "
                            "serve the files' levels (encoding 'levels', --binarize none), or use a likelihood for "
                            "binary or continuous data")
        if lo < 0 or hi > top:
            raise DataError(f"the {likelihood} likelihood takes levels 0..{top}, found {lo:g}..{hi:g}; "
                            "check the bit depth of the data")
        return
    if x.dim() != 2 or (x_dim is not None and x.shape[1] != x_dim):
        want = f"[N, {x_dim}]" if x_dim is not None else "[N, D]"
        raise DataError(f"images must have shape {want} (flattened), got {list(x.shape)}; reshape with x.reshape(len(x), -1)")
    if len(x) == 0:
        raise DataError("the image batch is empty")
    if x.dtype == torch.uint8:
        top = 255
    elif x.is_floating_point():
        top = 1
        if not torch.isfinite(x).all():
            raise DataError("images contain NaN or infinite pixels; clean or drop those images")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise DataError(
                f"pixel values must lie in [0, 1], found min {lo:g} and max {hi:g}; "
                "divide 0-255 grey levels by 255"
            )
    else:
        raise DataError(f"images must be uint8 grey levels or floats in [0, 1], got dtype {x.dtype}")
    if binary and not ((x == 0) | (x == top)).all():
        raise DataError(
            "a Bernoulli likelihood needs binary pixels, but these are grey levels; "
            "use --binarize dynamic or static, or a likelihood for continuous data"
        )


def check_encoding(encoding: str, binarize: str, dtype: torch.dtype) -> None:
    """`DataError` unless grey levels can be served in ``encoding`` (`ENCODINGS`) with ``binarize``."""
    if encoding not in ENCODINGS:
        raise DataError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if encoding == "unit":
        return
    use = "a discrete likelihood" if encoding == "levels" else "--dequantize uniform"
    if binarize != "none":
        raise DataError(f"{use} models grey levels, but --binarize {binarize} makes the pixels 0/1; use --binarize "
                        "none, or the bernoulli likelihood")
    if dtype != torch.uint8:
        raise DataError(f"{use} needs integer grey levels (uint8 files or arrays), but these images are floats in "
                        "[0, 1], which have no levels; save them as uint8, or use a continuous likelihood without "
                        "--dequantize")


def epoch_order(n: int, seed: int, epoch: int, device: torch.device,
                shuffle: bool = True) -> tuple[torch.Generator, torch.Tensor]:
    """``(gen, order)``: ``device``'s generator seeded by (seed, epoch), and the epoch's order of ``n`` images drawn
    from it (a permutation; ``arange`` without ``shuffle``). Every way of serving a split uses this."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_for(seed, epoch))
    order = torch.randperm(n, generator=gen, device=device) if shuffle else torch.arange(n, device=device)
    return gen, order


def as_float(pixels: torch.Tensor, encoding: str = "unit") -> torch.Tensor:
    """Stored pixels ``[B, D]`` as floats: uint8 levels scaled to [0, 1] for ``unit``, the levels themselves
    otherwise (`served` dequantizes them); float pixels (already in [0, 1]) as they are."""
    if pixels.dtype != torch.uint8:
        return pixels.float()
    return pixels.float() / 255.0 if encoding == "unit" else pixels.float()


def dequantized(levels: torch.Tensor, gen: torch.Generator, bit_depth: int) -> torch.Tensor:
    """(x + u) / 2^b for levels ``x [B, D]`` and u ~ U[0, 1)^D drawn from ``gen``: values in [0, 1)."""
    u = torch.rand(levels.shape, generator=gen, device=levels.device, dtype=levels.dtype)
    return (levels + u) / 2.0 ** bit_depth


def served(grey: torch.Tensor, binarize: str, gen: torch.Generator, seed: int, epoch: int, step: int,
           encoding: str = "unit", bit_depth: int = 8) -> torch.Tensor:
    """Batch ``step`` of an epoch as served: grey levels ``[B, D]`` in [0, 1], drawn 0/1 with the seed
    (seed, epoch, step + 1) under ``dynamic``; under the ``levels`` encoding ``grey`` holds the integer levels,
    served as they are, and under ``dequantized`` (x + u) / 2^b with u drawn with that same seed."""
    if encoding == "dequantized":
        gen.manual_seed(seed_for(seed, epoch, step + 1))
        return dequantized(grey, gen, bit_depth)
    if binarize != "dynamic":
        return grey
    gen.manual_seed(seed_for(seed, epoch, step + 1))
    return torch.bernoulli(grey, generator=gen)


class Images:
    """One split of images on one device, served as float batches in [0, 1].

    ``pixels``: uint8 grey levels ``[N, D]`` (kept as uint8, 1 byte a pixel) or
    floats in [0, 1]. ``binarize`` picks how batches are served (module doc), ``encoding`` how grey levels are
    (`ENCODINGS`: ``levels`` and ``dequantized`` need ``binarize none`` and uint8 levels).
    Moving to ``device`` happens once here, never per batch.
    """

    def __init__(self, pixels: torch.Tensor, binarize: str = "dynamic", seed: int = 0, device: torch.device | str = "cpu",
                 encoding: str = "unit"):
        if binarize not in BINARIZE_CHOICES:
            raise DataError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE_CHOICES)}")
        check_images(pixels)
        check_encoding(encoding, binarize, pixels.dtype)
        self.binarize, self.encoding = binarize, encoding
        self._bit_depth = 8 if pixels.dtype == torch.uint8 else None  # the source's, whatever binarisation serves
        self.seed = seed
        self.pixels = pixels.to(device)
        if binarize == "static":  # one seeded draw, stored as 0/1 in the same dtype
            self.pixels = self._draw(self.pixels, self._generator(seed_for(seed)))
            self.pixels = self.pixels.to(torch.uint8) if pixels.dtype == torch.uint8 else self.pixels
            self._scale = 1.0
        else:
            self._scale = 255.0 if pixels.dtype == torch.uint8 else 1.0

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    @property
    def dim(self) -> int:
        return self.pixels.shape[1]

    @property
    def bit_depth(self) -> int | None:
        """b of the source's grey levels (8 for uint8); None for float pixels, which have no levels."""
        return self._bit_depth

    def is_binary(self) -> bool:
        """True when every served pixel is 0 or 1."""
        if self.binarize != "none":
            return True
        return bool(((self.pixels == 0) | (self.pixels == self._scale)).all())

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, epoch: int = 0, start_step: int = 0, shuffle: bool = True) -> Iterator[torch.Tensor]:
        """Yield float batches ``[<=batch_size, D]`` for one epoch, starting at ``start_step``.

        The order is a permutation seeded by ``(seed, epoch)``; a dynamic draw is
        seeded by ``(seed, epoch, step)``. The last batch may be smaller.
        """
        gen, order = epoch_order(len(self), self.seed, epoch, self.device, shuffle)
        for step in range(start_step, self.num_batches(batch_size)):
            grey = self._float(self.pixels[order[step * batch_size : (step + 1) * batch_size]])
            yield served(grey, self.binarize, gen, self.seed, epoch, step, self.encoding, self.bit_depth or 8)

    def _float(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() / self._scale if self.encoding == "unit" else pixels.float()

    def frozen(self, seed: int) -> torch.Tensor:
        """The whole split as floats ``[N, D]``, binarised once with ``seed`` (for evaluation).

        ``dynamic``: one Bernoulli draw seeded by ``seed``; ``static``: the stored
        draw; ``none``: grey levels in the split's encoding: in [0, 1], the integer levels, or dequantized once
        by a draw of u seeded by ``seed`` (a fixed split for the test ELBO during training; the report reads
        the levels and draws u with its particles).
        """
        grey = self._float(self.pixels)
        if self.encoding == "dequantized":
            return dequantized(grey, self._generator(seed_for(seed)), self.bit_depth or 8)
        if self.binarize == "dynamic":
            return torch.bernoulli(grey, generator=self._generator(seed_for(seed)))
        return grey

    def to(self, device: torch.device | str) -> "Images":
        """This split on ``device`` (itself when already there); seed, mode and stored draw unchanged.

        Batches are drawn with that device's generator, so a dynamic draw on
        CUDA differs from the CPU's for the same seed.
        """
        if torch.device(device) == self.device:
            return self
        moved = copy.copy(self)
        moved.pixels = self.pixels.to(device)
        return moved

    def _generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return gen

    def _draw(self, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        scale = 255.0 if pixels.dtype == torch.uint8 else 1.0
        return torch.bernoulli(pixels.float() / scale, generator=gen)
