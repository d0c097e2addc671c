r"""Training images too large to hold in memory, decoded from their files batch by batch.

`StreamedImages` serves the same batches as `pyro_vae.images.Images` would for
the same files and seed: the order is the permutation seeded by
``(seed, epoch)`` drawn on the training device, a dynamic binarisation is
drawn on the device with the seed ``(seed, epoch, step)``. So a run gives the
same numbers (and resumes exactly) whether its folder was held or streamed.

Files are decoded by a ``torch.utils.data.DataLoader`` with ``workers``
processes, ``prefetch`` batches ahead per worker, into pinned memory when
the device is CUDA, and copied to it without blocking.

Built on `pyro_vae.sources` (decoding a file) and `pyro_vae.images` (the order and draws of a batch);
`pyro_vae.data` picks it for a folder too large to hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from pyro_vae.errors import DataError
from pyro_vae.images import BINARIZE_CHOICES, as_float, check_encoding, epoch_order, served
from pyro_vae.seeds import seed_for
from pyro_vae.sources import decode, shape_image


class _Files(Dataset):
    """Item i: file i decoded and shaped, uint8 ``[C, H, W]``."""

    def __init__(self, paths: list[Path], image_shape: tuple[int, int, int]):
        self.paths, self.image_shape = paths, image_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return shape_image(decode(self.paths[i]), self.image_shape)


class StreamedImages:
    """One split of image files, served as float batches ``[<=B, C*H*W]`` in [0, 1] on ``device``.

    The interface of `pyro_vae.images.Images` that training uses: ``len``,
    ``device``, ``dim``, ``is_binary``, ``num_batches``, ``batches``, ``to``.
    """

    def __init__(self, paths: list[Path], image_shape: tuple[int, int, int], binarize: str = "dynamic",
                 seed: int = 0, device: torch.device | str = "cpu", workers: int = 2, prefetch: int = 4,
                 encoding: str = "unit"):
        if binarize not in BINARIZE_CHOICES:
            raise DataError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE_CHOICES)}")
        if binarize == "static":
            raise DataError("--binarize static draws every image once and keeps the draw, which a folder too large "
                            "to hold cannot; use --binarize dynamic, or a larger --memory-budget")
        check_encoding(encoding, binarize, torch.uint8)  # files decode to uint8
        self.paths, self.image_shape, self.binarize, self.seed = list(paths), tuple(image_shape), binarize, seed
        self.encoding, self.bit_depth = encoding, 8  # files are decoded to 8 bits a channel
        self._device = torch.device(device)
        self.workers, self.prefetch = workers, prefetch

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dim(self) -> int:
        return math.prod(self.image_shape)

    def is_binary(self) -> bool:
        """True when a binarisation serves 0/1 pixels; grey levels of files are not scanned (False)."""
        return self.binarize != "none"

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, epoch: int = 0, start_step: int = 0,
                shuffle: bool = True) -> Iterator[torch.Tensor]:
        """The batches of `pyro_vae.images.Images.batches` for the same files, seed, epoch and step."""
        gen, order = epoch_order(len(self), self.seed, epoch, self.device, shuffle)
        order = order.cpu()
        steps = range(start_step, self.num_batches(batch_size))
        sampler = [order[s * batch_size: (s + 1) * batch_size].tolist() for s in steps]
        # The loader's own generator: its worker seeds must not come from (and move) the global stream,
        # which the Monte Carlo noise of training draws from.
        loader = DataLoader(_Files(self.paths, self.image_shape), batch_sampler=sampler, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=self.prefetch if self.workers > 0 else None,
                            generator=torch.Generator().manual_seed(seed_for(self.seed, epoch)))
        batches = iter(loader)
        for step in steps:
            try:
                pixels = next(batches)
            except DataError as e:  # a file that only fails when decoded; a worker's error carries its traceback
                lines = [line for line in str(e).splitlines() if line.startswith("pyro_vae.errors.DataError: ")]
                raise DataError(lines[-1].split(": ", 1)[1] if lines else str(e).splitlines()[0]) from None
            grey = as_float(pixels.to(self.device, non_blocking=True).flatten(1), self.encoding)
            yield served(grey, self.binarize, gen, self.seed, epoch, step, self.encoding, self.bit_depth)

    def to(self, device: torch.device | str) -> "StreamedImages":
        """The same files served on ``device``."""
        return StreamedImages(self.paths, self.image_shape, self.binarize, self.seed, device, self.workers,
                              self.prefetch, self.encoding)
