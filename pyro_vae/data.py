"""The splits a run uses: training images served batch by batch, test images frozen once (`DataSplits`).

The top of the data layer, whose modules import one way (each only those before it):

- `pyro_vae.sources`: where images come from, read into memory: torchvision's MNIST family (IDX files,
  `load_pixels`, `load_labels`, `data_root`), a folder of image files, an array file; ``--dataset`` specs
  (`parse_spec`, `read_source`), shaping and held-out splits (`SourceOptions`);
- `pyro_vae.images`: one split held on a device and served as batches, binarised explicitly
  (`Images`, `check_images`, ``BINARIZE_CHOICES``);
- `pyro_vae.streaming`: one split too large to hold, decoded from its files batch by batch (`StreamedImages`);
- this module: both splits of a source flattened to ``[N, D]`` (``D = C * H * W``, channel-major)
  (`load_splits`, `DataSplits.from_arrays`) and the test split alone for a report (`evaluation_split`), each
  described by one `DataSpec` (``pyro_vae.config.TrainConfig.data_spec`` makes a run's).

Reading a split goes down that chain once: a source is read, then its images are served. The names of the
lower modules that the rest of the code uses are imported here too (``from pyro_vae.data import Images``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from pyro_vae.device import free_memory
from pyro_vae.errors import DataError
from pyro_vae.images import BINARIZE_CHOICES, Images, check_images, epoch_order, served
from pyro_vae.seeds import seed_for
from pyro_vae.sources import (DATA_ENV_VAR, DATASETS, SourceOptions, SourceSplits, conform, data_root, list_folder,
                              load_labels, load_pixels, parse_idx, parse_spec, read_source, splits_from_arrays)
from pyro_vae.streaming import StreamedImages

__all__ = [
    # this module
    "DataSpec", "DataSplits", "build_splits", "check_held_out", "evaluation_images", "evaluation_split", "frozen_test",
    "load_splits", "take_first",
    # pyro_vae.sources
    "DATASETS", "DATA_ENV_VAR", "SourceOptions", "data_root", "load_labels", "load_pixels", "parse_idx",
    # pyro_vae.images, pyro_vae.seeds, pyro_vae.streaming
    "BINARIZE_CHOICES", "Images", "check_images", "epoch_order", "seed_for", "served", "StreamedImages",
]


def take_first(pixels: torch.Tensor, limit: int | None, flag: str, what: str) -> torch.Tensor:
    """The first ``limit`` rows of ``pixels``; `DataError` when ``limit`` asks for more than there are."""
    if limit is not None and limit > len(pixels):
        raise DataError(f"{flag} {limit} asks for more images than the {len(pixels)} in {what}; "
                        f"use at most {len(pixels)} or drop {flag}")
    return pixels[:limit]


@dataclass
class DataSpec:
    """Which images to read and how to serve them: what the data flags of ``python -m inference.svi`` say.

    ``dataset``: a ``--dataset`` spec (``mnist``, ``folder:PATH``, ``array:PATH``, ...) under the root ``data_dir``
    (downloaded there when missing and ``download``); ``options``: how a folder or array is shaped and split
    (`pyro_vae.sources.SourceOptions`). The first ``train_limit`` / ``test_limit`` images of each split, served as
    ``binarize`` (`BINARIZE_CHOICES`) and ``encoding`` (`pyro_vae.images.ENCODINGS`) say; ``seed`` keys the
    training order and draws, ``test_seed`` the test split's one binarisation. A folder whose images would take
    more than ``memory_budget`` bytes (default: half the free memory of the device or the host, whichever is less)
    is streamed by ``workers`` decoding processes. ``held_out_from``: the count a run held its test split out of,
    which the source must still hold when the split is read again (`check_held_out`).

    The functions below take one, or a dataset name and any of these fields by name
    (``load_splits("mnist", binarize="none", train_limit=1000)``).
    """

    dataset: str = "mnist"
    binarize: str = "dynamic"
    data_dir: str | os.PathLike | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    test_seed: int = 0
    options: SourceOptions | None = None
    encoding: str = "unit"
    download: bool = True
    memory_budget: float | None = None
    workers: int = 2
    held_out_from: int | None = None


def _spec(spec: DataSpec | str, fields: dict) -> DataSpec:
    """``spec`` (or ``DataSpec(dataset=spec)``) with ``fields`` changed; `TypeError` for a name that is no field."""
    base = spec if isinstance(spec, DataSpec) else DataSpec(dataset=spec)
    return dataclasses.replace(base, **fields) if fields else base


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
    def from_arrays(cls, images, labels=None, test_images=None, test_labels=None, *,
                    device: torch.device | str = "cpu", **fields) -> "DataSplits":
        """Splits from NumPy arrays or tensors, as ``array:PATH`` reads them (`pyro_vae.sources`).

        ``images`` ``[N, H, W]`` or ``[N, H, W, C]`` (``[N, C, H, W]`` with
        ``options.channels_first``), uint8 or floats in [0, 1]; ``labels`` ``[N]``
        integers; without ``test_images`` a fraction is held out (``options``).
        For ``train(config, data=DataSplits.from_arrays(...))``. ``fields``: those of `DataSpec` that apply
        (``binarize``, ``options``, ``seed``, ``test_seed``, ``encoding``: ``levels`` for a discrete likelihood,
        ``dequantized`` for ``--dequantize uniform``).
        """
        spec = _spec(DataSpec(dataset="custom"), fields)
        options = spec.options or SourceOptions()
        arrays = {"images": images, "labels": labels, "test_images": test_images, "test_labels": test_labels}
        raw = conform(splits_from_arrays({k: _numpy(v) for k, v in arrays.items() if v is not None}, options,
                                         "the arrays"), options, "the arrays")
        return build_splits(raw, spec, device)


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def build_splits(raw: SourceSplits, spec: DataSpec = DataSpec(dataset="custom"),
                 device: torch.device | str = "cpu") -> DataSplits:
    """`DataSplits` of ``raw`` images flattened to ``[N, D]``: the first ``spec.*_limit`` of each split, served as
    ``spec`` says, on ``device``; their ``source`` is ``spec.dataset``."""
    source = spec.dataset
    train = take_first(raw.train.flatten(1), spec.train_limit, "--train-limit",
                       "the training split" if source == "custom" else f"the {source} training split")
    test, labels = frozen_test(raw, spec, device)
    return DataSplits(Images(train, spec.binarize, seed=spec.seed, device=device, encoding=spec.encoding), test,
                      spec.test_seed, source=source, test_labels=labels, image_shape=raw.image_shape,
                      held_out_from=raw.held_out_from, classes=raw.classes)


def frozen_test(raw: SourceSplits, spec: DataSpec,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``spec.test_limit`` test images of ``raw`` as floats ``[N, D]`` on ``device``, binarised once
    with ``spec.test_seed`` (or in ``spec.encoding``: integer levels, or dequantized once with ``test_seed``), and
    their labels ``[N]`` (or None).

    The draw is made with the CPU's generator whatever ``device`` is, so a report on CUDA scores the very
    images a report on the CPU scores (CUDA's generator draws other bits for the same seed)."""
    source = spec.dataset
    pixels = take_first(raw.test.flatten(1), spec.test_limit, "--test-limit",
                        "the test split" if source == "custom" else f"the {source} test split")
    x = Images(pixels, spec.binarize, seed=spec.test_seed, device="cpu",
               encoding=spec.encoding).frozen(spec.test_seed).to(device)
    return x, (raw.test_labels[: len(x)] if raw.test_labels is not None else None)


def evaluation_split(spec: DataSpec | str = "mnist", device: torch.device | str = "cpu", **fields
                     ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int], tuple[str, ...] | None]:
    """``(x, labels, image_shape, classes)``: the first ``test_limit`` test images of ``spec`` (`DataSpec`, or a
    dataset name with ``fields``) as floats ``[N, D]`` on ``device``, binarised once with ``test_seed``; their
    int64 labels ``[N]`` (or None) on the CPU; the labels' names (a folder's class folders) or None. ``encoding``
    as `pyro_vae.images.Images` (the report reads a dequantized run's test split as ``levels``: it draws u with
    its particles).

    ``held_out_from``: the run's test split was held out of that many images; `DataError` if the source now
    holds another number (the held-out split would be other images, some of them trained on).
    """
    spec = _spec(spec, fields)
    raw = read_source(spec.dataset, spec.data_dir, spec.options, spec.download, test_only=True)
    check_held_out(raw.held_out_from, spec.held_out_from, spec.dataset)
    return (*frozen_test(raw, spec, device), raw.image_shape, raw.classes)


def check_held_out(now: int | None, then: int | None, dataset: str) -> None:
    """`DataError` when a run's test split was held out of ``then`` images and ``dataset`` now has ``now``."""
    if then is not None and now != then:
        raise DataError(f"{dataset} now holds {now} images, but the run held its test split out of {then}: the split "
                        "would hold other images, some of them trained on; restore the source as it was")


def evaluation_images(spec: DataSpec | str = "mnist", device: torch.device | str = "cpu", **fields) -> torch.Tensor:
    """The first ``test_limit`` test images as floats ``[N, D]`` on ``device``, binarised once with ``test_seed``
    (`evaluation_split`)."""
    return evaluation_split(spec, device, **fields)[0]


def load_splits(spec: DataSpec | str = "mnist", device: torch.device | str = "cpu", **fields) -> DataSplits:
    """Load the train and test splits of ``spec`` (a `DataSpec`, or a ``--dataset`` spec with any of its fields by
    name) onto ``device`` (the first ``*_limit`` of each).

    A folder whose images would take more than ``memory_budget`` bytes (uint8 training and float test images) has
    its training images streamed from its files (`pyro_vae.streaming.StreamedImages`, ``workers`` decoding
    processes); its test split is held.
    """
    spec = _spec(spec, fields)
    dataset = spec.dataset
    kind, path = parse_spec(dataset)
    if kind != "folder":
        return build_splits(read_source(dataset, spec.data_dir, spec.options, spec.download), spec, device)
    listing = list_folder(path, spec.options or SourceOptions())
    listing = dataclasses.replace(  # decode only the images asked for
        listing, train=take_first(listing.train, spec.train_limit, "--train-limit", f"the {dataset} training split"),
        test=take_first(listing.test, spec.test_limit, "--test-limit", f"the {dataset} test split"))
    whole = dataclasses.replace(spec, train_limit=None, test_limit=None)  # the listing holds only those asked for
    budget = spec.memory_budget
    if budget is None:  # the images are decoded in host memory first, then held on the device
        free = [free_memory(torch.device(d)) for d in {"cpu", str(device)}]
        budget = min((f for f in free if f is not None), default=math.inf) / 2
    pixels = math.prod(listing.image_shape)
    if (len(listing.train) + 4 * len(listing.test)) * pixels <= budget:  # uint8 training, float test images
        return build_splits(listing.read(), whole, device)
    test, labels = frozen_test(dataclasses.replace(listing, train=[]).read(), whole, device)
    return DataSplits(StreamedImages(listing.train, listing.image_shape, spec.binarize, spec.seed, device,
                                     spec.workers, encoding=spec.encoding), test,
                      spec.test_seed, dataset, labels, listing.image_shape, listing.held_out_from, listing.classes)
