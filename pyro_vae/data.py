"""Image data, held on the training device and binarised explicitly.

Where images come from (torchvision's MNIST family, a folder of files, an
array file) is `pyro_vae.sources`; this module flattens them to ``[N, D]``
(``D = C * H * W``, channel-major) and serves them.

Binarisation modes (``binarize``):

- ``dynamic``: a fresh Bernoulli draw x ~ Bernoulli(grey / 255) each time a
  batch is served (the protocol of Burda et al. 2015);
- ``static``: one seeded draw at load time, reused every epoch;
- ``none``: grey levels scaled to [0, 1] (for continuous likelihoods).

Every random choice is a pure function of ``(seed, epoch, step)``, so a run
stopped mid-epoch resumes with exactly the batches it would have seen.
Evaluation data are binarised once with a recorded seed (`Images.frozen`).
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pyro_vae.errors import DataError

if TYPE_CHECKING:
    from pyro_vae.sources import SourceOptions, SourceSplits

#: ``--dataset`` name -> torchvision dataset class (imported on use: torchvision
#: takes seconds to import, which every CLI start would otherwise pay).
DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
BINARIZE_CHOICES = ("dynamic", "static", "none")
DATA_ENV_VAR = "PYRO_VAE_DATA"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Dataset root: ``data_dir``, else ``$PYRO_VAE_DATA``, else a user cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyro-vae"


def _expected_files(dataset_cls: type) -> list[str]:
    return [os.path.basename(name).removesuffix(".gz") for name, _md5 in dataset_cls.resources]


def _present(raw: Path, name: str) -> Path | None:
    """``raw/name``, else ``raw/name.gz`` (torchvision's layout allows both), else None."""
    for path in (raw / name, raw / f"{name}.gz"):
        if path.exists():
            return path
    return None


def parse_idx(data: bytes, rank: int) -> torch.Tensor:
    """The uint8 array of ``rank`` dims held by the bytes of an IDX file (LeCun's format: two zero bytes, type
    0x08, the number of dims, each dim as a big-endian int32, then the values); `ValueError` when they hold none."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != rank:
        raise ValueError(f"header {data[:4].hex() or 'missing'} is not that of uint8 data of {rank} dims")
    head = 4 + 4 * rank
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    if len(data) < head or len(data) - head != math.prod(shape) or shape[0] == 0:
        raise ValueError(f"holds {max(len(data) - head, 0)} values where its header promises {shape}")
    return torch.frombuffer(bytearray(data[head:]), dtype=torch.uint8).view(*shape)


def load_pixels(
    dataset: str = "mnist",
    train: bool = True,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> torch.Tensor:
    """Read one split as uint8 grey levels, shape ``[N, 784]``, on the CPU.

    Reads ``ROOT/<MNIST|FashionMNIST|KMNIST>/raw/*-ubyte``, or ``*-ubyte.gz`` where
    only that is there (torchvision's layout).
    When files are missing and ``download`` is true, torchvision fetches
    them; if that fails (offline) or ``download`` is false, `DataError` names
    the missing files and the folder they belong in. A file that is there but
    cannot be read as IDX images (truncated, garbage, empty, not a file) is a
    `DataError` that names it.
    """
    images = _read_idx(dataset, train, "images-idx3", data_dir, download, rank=3)
    return images.reshape(len(images), -1).contiguous()


def load_labels(
    dataset: str = "mnist",
    train: bool = True,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> torch.Tensor:
    """Read one split's class labels (digits 0-9 for MNIST) as int64 ``[N]``, on the CPU.

    Same files, folder and errors as `load_pixels` (``*-labels-idx1-ubyte``);
    row i labels image i of `load_pixels`.
    """
    return _read_idx(dataset, train, "labels-idx1", data_dir, download, rank=1).long()


def _read_idx(dataset: str, train: bool, kind: str, data_dir: str | os.PathLike | None, download: bool,
              rank: int) -> torch.Tensor:
    """Read ``ROOT/<class>/raw/<train|t10k>-<kind>-ubyte`` as uint8 of ``rank`` dims, or raise `DataError`."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[dataset])
    root = data_root(data_dir)
    raw = root / cls.__name__ / "raw"
    if any(_present(raw, f) is None for f in _expected_files(cls)):
        _download(cls, dataset, root, raw, download)
    name = f"{'train' if train else 't10k'}-{kind}-ubyte"
    path = _present(raw, name) or raw / name
    try:
        data = path.read_bytes()
        return parse_idx(gzip.decompress(data) if path.suffix == ".gz" else data, rank)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (OSError, gzip's BadGzipFile, ...)
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}" if str(e).strip() else type(e).__name__
        raise DataError(f"{path} is unreadable ({why}): it may be truncated or corrupt; replace it with an intact "
                        f"copy of the {dataset} file") from None


def _download(cls: type, dataset: str, root: Path, raw: Path, download: bool) -> None:
    """Fetch the split's files with torchvision, or raise `DataError` saying which are missing and where they go."""
    cause = ""
    if download:
        try:
            cls(str(root), train=True, download=True)
            return
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            lines = [line.strip(" ()") for line in str(e).splitlines() if line.strip(" ()")]
            cause = f" (download failed: {lines[-1] if lines else type(e).__name__})"
    missing = [f for f in _expected_files(cls) if _present(raw, f) is None]
    raise DataError(
        f"{dataset} files not found in {raw}{cause}. Missing: {', '.join(missing) or 'none'}. "
        f"Put the four IDX files there (uncompressed, or each as NAME.gz), or point --data-dir or ${DATA_ENV_VAR} "
        f"at a folder that holds {cls.__name__}/raw/."
    )


def take_first(pixels: torch.Tensor, limit: int | None, flag: str, what: str) -> torch.Tensor:
    """The first ``limit`` rows of ``pixels``; `DataError` when ``limit`` asks for more than there are."""
    if limit is not None and limit > len(pixels):
        raise DataError(f"{flag} {limit} asks for more images than the {len(pixels)} in {what}; "
                        f"use at most {len(pixels)} or drop {flag}")
    return pixels[:limit]


def check_images(x: torch.Tensor, x_dim: int | None = None, binary: bool = False) -> None:
    """Raise `DataError` unless ``x`` is a ``[N, x_dim]`` batch of pixels the model can take.

    Floating pixels must be finite and in [0, 1] (uint8 grey levels are always
    in range); ``binary`` also requires every pixel to be 0 or 1 (255 for uint8),
    as a Bernoulli likelihood does.
    """
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


def seed_for(*parts: int) -> int:
    """Mix integers into one 63-bit seed (deterministic across processes and runs)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


def epoch_order(n: int, seed: int, epoch: int, device: torch.device,
                shuffle: bool = True) -> tuple[torch.Generator, torch.Tensor]:
    """``(gen, order)``: ``device``'s generator seeded by (seed, epoch), and the epoch's order of ``n`` images drawn
    from it (a permutation; ``arange`` without ``shuffle``). Every way of serving a split uses this."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_for(seed, epoch))
    order = torch.randperm(n, generator=gen, device=device) if shuffle else torch.arange(n, device=device)
    return gen, order


def served(grey: torch.Tensor, binarize: str, gen: torch.Generator, seed: int, epoch: int, step: int) -> torch.Tensor:
    """Batch ``step`` of an epoch as served: grey levels ``[B, D]`` in [0, 1], drawn 0/1 with the seed
    (seed, epoch, step + 1) under ``dynamic``."""
    if binarize != "dynamic":
        return grey
    gen.manual_seed(seed_for(seed, epoch, step + 1))
    return torch.bernoulli(grey, generator=gen)


class Images:
    """One split of images on one device, served as float batches in [0, 1].

    ``pixels``: uint8 grey levels ``[N, D]`` (kept as uint8, 1 byte a pixel) or
    floats in [0, 1]. ``binarize`` picks how batches are served (module doc).
    Moving to ``device`` happens once here, never per batch.
    """

    def __init__(self, pixels: torch.Tensor, binarize: str = "dynamic", seed: int = 0, device: torch.device | str = "cpu"):
        if binarize not in BINARIZE_CHOICES:
            raise DataError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE_CHOICES)}")
        check_images(pixels)
        self.binarize = binarize
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
            grey = self.pixels[order[step * batch_size : (step + 1) * batch_size]].float() / self._scale
            yield served(grey, self.binarize, gen, self.seed, epoch, step)

    def frozen(self, seed: int) -> torch.Tensor:
        """The whole split as floats ``[N, D]``, binarised once with ``seed`` (for evaluation).

        ``dynamic``: one Bernoulli draw seeded by ``seed``; ``static``: the stored
        draw; ``none``: grey levels.
        """
        grey = self.pixels.float() / self._scale
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


@dataclass
class DataSplits:
    """Training images (served batch by batch) and evaluation images (frozen floats).

    ``source`` names where they came from: a ``--dataset`` spec when
    `load_splits` read them, else ``"custom"`` (images handed over from Python,
    which ``python -m inference.evaluate`` cannot load again by name).
    ``test_labels`` (int64 ``[N_test]``, or None when there are none) colour
    the latent-space figure. ``image_shape`` ``(C, H, W)``: how a flattened row
    of ``D = C * H * W`` pixels is an image (channel-major); None: not known
    (flat vectors, or 1 x 28 x 28 when D is 784).
    """

    train: Images
    test: torch.Tensor  # [N_test, D] floats, binarised once with test_seed
    test_seed: int
    source: str = "custom"
    test_labels: torch.Tensor | None = None
    image_shape: tuple[int, int, int] | None = None
    held_out_from: int | None = None  # N, when the test split was held out of a source of N images
    classes: tuple[str, ...] | None = None  # label c's name (a folder's class folders), when known

    def to(self, device: torch.device | str) -> "DataSplits":
        """These splits with training and test images on ``device`` (labels stay where they are)."""
        return dataclasses.replace(self, train=self.train.to(device), test=self.test.to(device))

    @classmethod
    def from_arrays(cls, images, labels=None, test_images=None, test_labels=None, *, binarize: str = "dynamic",
                    options: "SourceOptions | None" = None, seed: int = 0, test_seed: int = 0,
                    device: torch.device | str = "cpu") -> "DataSplits":
        """Splits from NumPy arrays or tensors, as ``array:PATH`` reads them (`pyro_vae.sources`).

        ``images`` ``[N, H, W]`` or ``[N, H, W, C]`` (``[N, C, H, W]`` with
        ``options.channels_first``), uint8 or floats in [0, 1]; ``labels`` ``[N]``
        integers; without ``test_images`` a fraction is held out (``options``).
        For ``train(config, data=DataSplits.from_arrays(...))``.
        """
        from pyro_vae.sources import SourceOptions, conform, splits_from_arrays

        options = options or SourceOptions()
        arrays = {"images": images, "labels": labels, "test_images": test_images, "test_labels": test_labels}
        raw = conform(splits_from_arrays({k: _numpy(v) for k, v in arrays.items() if v is not None}, options,
                                         "the arrays"), options, "the arrays")
        return build_splits(raw, binarize, seed=seed, test_seed=test_seed, device=device, source="custom")


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def build_splits(raw: "SourceSplits", binarize: str, train_limit: int | None = None, test_limit: int | None = None,
                 seed: int = 0, test_seed: int = 0, device: torch.device | str = "cpu",
                 source: str = "custom") -> DataSplits:
    """`DataSplits` of ``raw`` images flattened to ``[N, D]``: the first ``*_limit`` of each split, on ``device``."""
    train = take_first(raw.train.flatten(1), train_limit, "--train-limit",
                       "the training split" if source == "custom" else f"the {source} training split")
    test, labels = frozen_test(raw, test_limit, binarize, test_seed, device, source)
    return DataSplits(Images(train, binarize, seed=seed, device=device), test, test_seed, source=source,
                      test_labels=labels, image_shape=raw.image_shape, held_out_from=raw.held_out_from,
                      classes=raw.classes)


def frozen_test(raw: "SourceSplits", limit: int | None, binarize: str, test_seed: int, device: torch.device | str,
                source: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``limit`` test images of ``raw`` as floats ``[N, D]`` on ``device``, binarised once with
    ``test_seed``, and their labels ``[N]`` (or None).

    The draw is made with the CPU's generator whatever ``device`` is, so a report on CUDA scores the very
    images a report on the CPU scores (CUDA's generator draws other bits for the same seed)."""
    pixels = take_first(raw.test.flatten(1), limit, "--test-limit",
                        "the test split" if source == "custom" else f"the {source} test split")
    x = Images(pixels, binarize, seed=test_seed, device="cpu").frozen(test_seed).to(device)
    return x, (raw.test_labels[: len(x)] if raw.test_labels is not None else None)


def evaluation_split(
    dataset: str = "mnist",
    binarize: str = "dynamic",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    test_seed: int = 0,
    device: torch.device | str = "cpu",
    download: bool = True,
    options: "SourceOptions | None" = None,
    held_out_from: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int], tuple[str, ...] | None]:
    """``(x, labels, image_shape, classes)``: the first ``limit`` test images of ``dataset`` as floats ``[N, D]``
    on ``device``, binarised once with ``test_seed``; their int64 labels ``[N]`` (or None) on the CPU; the
    labels' names (a folder's class folders) or None.

    ``held_out_from``: the run's test split was held out of that many images; `DataError` if the source now
    holds another number (the held-out split would be other images, some of them trained on).
    """
    from pyro_vae.sources import read_source

    raw = read_source(dataset, data_dir, options, download, test_only=True)
    check_held_out(raw.held_out_from, held_out_from, dataset)
    return (*frozen_test(raw, limit, binarize, test_seed, device, dataset), raw.image_shape, raw.classes)


def check_held_out(now: int | None, then: int | None, dataset: str) -> None:
    """`DataError` when a run's test split was held out of ``then`` images and ``dataset`` now has ``now``."""
    if then is not None and now != then:
        raise DataError(f"{dataset} now holds {now} images, but the run held its test split out of {then}: the split "
                        "would hold other images, some of them trained on; restore the source as it was")


def evaluation_images(
    dataset: str = "mnist",
    binarize: str = "dynamic",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    test_seed: int = 0,
    device: torch.device | str = "cpu",
    download: bool = True,
    options: "SourceOptions | None" = None,
    held_out_from: int | None = None,
) -> torch.Tensor:
    """The first ``limit`` test images as floats ``[N, D]`` on ``device``, binarised once with ``test_seed``
    (`evaluation_split`)."""
    return evaluation_split(dataset, binarize, data_dir, limit, test_seed, device, download, options,
                            held_out_from)[0]


def load_splits(
    dataset: str = "mnist",
    binarize: str = "dynamic",
    data_dir: str | os.PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    test_seed: int = 0,
    device: torch.device | str = "cpu",
    download: bool = True,
    options: "SourceOptions | None" = None,
    memory_budget: float | None = None,
    workers: int = 2,
) -> DataSplits:
    """Load the train and test splits of ``dataset`` (a ``--dataset`` spec) onto ``device`` (first ``*_limit``).

    A folder whose images would take more than ``memory_budget`` bytes
    (uint8 training and float test images; default: half the free memory of
    the device or the host, whichever is less) has its training images streamed from its files
    (`pyro_vae.streaming.StreamedImages`, ``workers`` decoding processes); its
    test split is held.
    """
    from pyro_vae.device import free_memory
    from pyro_vae.sources import SourceOptions, list_folder, parse_spec, read_source

    kind, path = parse_spec(dataset)
    if kind != "folder":
        raw = read_source(dataset, data_dir, options, download)
        return build_splits(raw, binarize, train_limit, test_limit, seed, test_seed, device, source=dataset)
    listing = list_folder(path, options or SourceOptions())
    listing = dataclasses.replace(  # decode only the images asked for
        listing, train=take_first(listing.train, train_limit, "--train-limit", f"the {dataset} training split"),
        test=take_first(listing.test, test_limit, "--test-limit", f"the {dataset} test split"))
    if memory_budget is None:  # the images are decoded in host memory first, then held on the device
        free = [free_memory(torch.device(d)) for d in {"cpu", str(device)}]
        memory_budget = min((f for f in free if f is not None), default=math.inf) / 2
    pixels = math.prod(listing.image_shape)
    if (len(listing.train) + 4 * len(listing.test)) * pixels <= memory_budget:  # uint8 training, float test images
        return build_splits(listing.read(), binarize, None, None, seed, test_seed, device, source=dataset)
    from pyro_vae.streaming import StreamedImages

    test, labels = frozen_test(dataclasses.replace(listing, train=[]).read(), None, binarize, test_seed, device,
                               dataset)
    return DataSplits(StreamedImages(listing.train, listing.image_shape, binarize, seed, device, workers), test,
                      test_seed, dataset, labels, listing.image_shape, listing.held_out_from, listing.classes)
