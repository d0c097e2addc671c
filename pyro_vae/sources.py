r"""Where images come from: a ``--dataset`` spec read into train and test splits of ``[N, C, H, W]`` images.

``--dataset`` takes

- ``mnist``, ``fashion-mnist``, ``kmnist``: torchvision's IDX files under the
  data root (`load_pixels`, `load_labels`), 1 x 28 x 28, their own test split;
- ``folder:PATH``: image files (PNG, JPEG, GIF, WebP, BMP, TIFF) decoded by
  Pillow and resized by torchvision, either flat in PATH or in ``ImageFolder`` layout
  (``PATH/<class>/*.png``: the sorted sub-folder names become labels 0..L-1);
  ``PATH/train`` and ``PATH/test`` (each flat or by class), when both exist,
  are the two splits;
- ``array:PATH``: a ``.npy`` array, or a ``.npz`` with ``images`` and optional
  ``labels``, ``test_images``, ``test_labels``; shape ``[N, H, W]`` or
  ``[N, H, W, C]`` (``[N, C, H, W]`` with ``channels_first``), ``uint8`` grey
  levels or floats in [0, 1]. Read with ``allow_pickle=False``: a file cannot
  run code.

Without a test split of its own, the first ``round(test_fraction * N)`` of a
permutation seeded by ``split_seed`` are held out (kept in file order).
Every image is made ``channels x S x S`` (`SourceOptions`): resized so the
shorter side is S and centre-cropped; grey repeated to colour, or colour
averaged to grey (ITU-R 601 luma). Values stay uint8 (0-255) where the source
is uint8, else float in [0, 1].

The bottom of the data layer: readers of files and arrays, importing none of the modules above them:
`pyro_vae.images` serves images as batches, `pyro_vae.streaming` serves them from their files, and
`pyro_vae.data` makes the splits a run uses (sources -> images -> streaming -> data).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae.errors import DataError
from pyro_vae.seeds import seed_for

#: ``--dataset`` name -> torchvision dataset class (imported on use: torchvision
#: takes seconds to import, which every CLI start would otherwise pay).
DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
DATA_ENV_VAR = "PYRO_VAE_DATA"

SOURCE_KINDS = ("folder", "array")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_LUMA = (0.299, 0.587, 0.114)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
#: What Pillow may decode: the formats of IMAGE_SUFFIXES, whatever a file's content claims (no EPS, PDF, ...).
_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]


@dataclass(frozen=True)
class SourceOptions:
    """How a source's images are shaped and split (all recorded in the run's config).

    ``image_size`` S: resize and centre-crop to S x S (None: keep the files' size,
    which must then agree); ``channels`` 1 or 3 (None: the source's own; a folder
    of grey and colour files is colour); ``channels_first``: arrays are
    ``[N, C, H, W]``; ``test_fraction`` and ``split_seed``: the held-out split of
    a source without its own.
    """

    image_size: int | None = None
    channels: int | None = None
    channels_first: bool = False
    test_fraction: float = 0.1
    split_seed: int = 0


@dataclass
class SourceSplits:
    """A source read into memory: images ``[N, C, H, W]`` (uint8 or float in [0, 1]) and int64 labels or None."""

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    classes: tuple[str, ...] | None = None
    held_out_from: int | None = None  # N, when the test split was held out of N images (it depends on N)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """``(kind, path)`` of a ``--dataset`` value: ``("mnist", None)``, ``("folder", PATH)``, ``("array", PATH)``."""
    if spec in DATASETS:
        return spec, None
    kind, sep, path = spec.partition(":")
    if sep and kind in SOURCE_KINDS and path:
        return kind, Path(path).expanduser()
    raise DataError(f"unknown dataset {spec!r}; use one of {', '.join(DATASETS)}, folder:PATH or array:PATH")


def read_source(spec: str, data_dir: str | os.PathLike | None = None, options: SourceOptions | None = None,
                download: bool = True, test_only: bool = False) -> SourceSplits:
    """Read ``spec`` (module doc) as `SourceSplits` shaped by ``options``; `DataError` for anything unusable.

    ``test_only``: skip the training images where the source has a test split of its own.
    """
    options = options or SourceOptions()
    kind, path = parse_spec(spec)
    if kind in DATASETS:
        train = None if test_only else load_pixels(kind, True, data_dir, download).reshape(-1, 1, 28, 28)
        test = load_pixels(kind, False, data_dir, download).reshape(-1, 1, 28, 28)
        splits = SourceSplits(train if train is not None else test[:0], test,
                              None if test_only else load_labels(kind, True, data_dir, download=False),
                              load_labels(kind, False, data_dir, download=False))
    elif kind == "folder":
        listing = list_folder(path, options, test_only)
        splits = dataclasses.replace(listing, train=[], train_labels=None).read() if test_only else listing.read()
    else:
        splits = _read_array(path, options)
    return conform(splits, options, spec)


# --- torchvision's MNIST family: IDX files -----------------------------------------------

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


# --- folders ------------------------------------------------------------------------------

def _list_folder(root: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...] | None]:
    """Image files under ``root`` (flat, or one level of class folders), their labels and class names."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; folder:PATH needs a folder of images")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    folders, files = [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]
    if folders and files:
        raise DataError(f"{root} holds both files ({files[0].name}) and folders ({folders[0].name}); use a flat folder "
                        "of images or one sub-folder per class")
    if not folders:
        return _checked_images(files, root), None, None
    paths, labels = [], []
    for label, folder in enumerate(folders):
        inner = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        if any(p.is_dir() for p in inner):
            raise DataError(f"{folder} holds folders; class folders must hold image files only")
        paths += _checked_images(inner, folder)
        labels += [label] * len(inner)
    return paths, labels, tuple(f.name for f in folders)


def _checked_images(files: list[Path], where: Path) -> list[Path]:
    if not files:
        raise DataError(f"{where} holds no images; put PNG or JPEG files there")
    odd = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if odd:
        raise DataError(f"{odd[0]} is not an image file ({', '.join(IMAGE_SUFFIXES)}); move it out of {where}")
    return files


def decode(path: Path) -> torch.Tensor:
    """One image file as uint8 ``[C, H, W]``: C = 1 for grey files, else 3 (RGB; alpha and palettes resolved).

    Decoded by Pillow (torchvision's own image dependency: torchvision 0.29
    deprecates its ``torchvision.io`` decoders). 8 bits a channel.
    """
    from PIL import Image

    try:
        with Image.open(path, formats=_FORMATS) as image:
            if image.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits (Pillow's convert would clip)
                array = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            elif image.mode in ("I", "F"):
                raise ValueError(f"32-bit {'integer' if image.mode == 'I' else 'float'} pixels; save it with 8 or "
                                 "16 bits a channel")
            else:
                array = np.asarray(image.convert("L" if image.mode in _GREY_MODES else "RGB"))
    except Exception as e:  # noqa: BLE001 - Pillow raises several types for a file it cannot decode
        raise DataError(f"{path} cannot be read as an image ({' '.join(str(e).split())[:120] or type(e).__name__}); "
                        "replace or remove it") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


@dataclass
class FolderListing:
    """A folder source's files, split, labelled and shaped from their headers, before any pixel is decoded.

    ``image_shape`` ``(C, H, W)``: every image's after shaping (`SourceOptions`).
    """

    train: list[Path]
    test: list[Path]
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    classes: tuple[str, ...] | None
    image_shape: tuple[int, int, int]
    held_out_from: int | None = None  # as in `SourceSplits`

    def decode(self, paths: list[Path]) -> torch.Tensor:
        """``paths`` decoded and shaped: uint8 ``[N, C, H, W]``."""
        if not paths:
            return torch.zeros(0, *self.image_shape, dtype=torch.uint8)
        return torch.stack([shape_image(decode(p), self.image_shape) for p in paths])

    def read(self) -> SourceSplits:
        """Both splits decoded into memory."""
        return SourceSplits(self.decode(self.train), self.decode(self.test), self.train_labels, self.test_labels,
                            self.classes, self.held_out_from)


def list_folder(root: Path, options: SourceOptions, test_only: bool = False) -> FolderListing:
    """The `FolderListing` of ``root``: ``train/`` and ``test/`` when both exist, else a held-out split."""
    held_out_from = None
    if (root / "train").is_dir() and (root / "test").is_dir():
        test, test_labels, test_classes = _list_folder(root / "test")
        train, train_labels, classes = ([], None, test_classes) if test_only else _list_folder(root / "train")
        if test_classes != classes:
            raise DataError(f"{root}/test has classes {test_classes} but {root}/train has {classes}; use the same "
                            "class folders in both")
    else:
        paths, labels, classes = _list_folder(root)
        train_idx, test_idx = held_out_indices(len(paths), options, str(root))
        held_out_from = len(paths)
        train, test = [paths[i] for i in train_idx], [paths[i] for i in test_idx]
        train_labels, test_labels = ((None, None) if labels is None
                                     else ([labels[i] for i in train_idx], [labels[i] for i in test_idx]))
    return FolderListing(train, test, _labels(train_labels), _labels(test_labels), classes,
                         _header_shape([*train, *test], options, root), held_out_from)


def _header_shape(paths: list[Path], options: SourceOptions, root: Path) -> tuple[int, int, int]:
    """``(C, S, S)`` after shaping, from the files' headers: `DataError` when sizes differ and no size is set."""
    from PIL import Image  # torchvision's own dependency; reads the header, not the pixels

    sizes, colour = set(), False
    for path in paths:
        try:
            with Image.open(path, formats=_FORMATS) as image:
                sizes.add((image.height, image.width))
                colour = colour or image.mode not in _GREY_MODES
        except Exception:  # noqa: BLE001 - PIL raises many types; decoding names the bad file
            decode(path)  # raises the one-line error for this file
            raise DataError(f"{path} cannot be read as an image; replace or remove it") from None
    channels = options.channels or (3 if colour else 1)
    if options.image_size is not None:
        return channels, options.image_size, options.image_size
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sorted(sizes)[:2]
        raise DataError(f"the images in {root} differ in size ({h1}x{w1}, {h2}x{w2}, ...); "
                        "set --image-size S to resize and crop them all to S x S")
    (height, width), = sizes
    return channels, height, width


def shape_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``image [C', H', W']`` made ``shape`` (C, H, W): resized (shorter side) and centre-cropped, channels matched."""
    return _with_channels(_resized(image.unsqueeze(0), shape[1:]), shape[0])[0]


def _resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``images [N, C, H', W']`` resized so the shorter side fits ``size`` (H, W) and centre-cropped to it."""
    if tuple(images.shape[2:]) == tuple(size) or not len(images):
        return images
    from torchvision.transforms.v2 import functional as F

    resized = F.center_crop(F.resize(images, [min(size)], antialias=True), list(size))
    return resized.clamp(0, 1) if resized.is_floating_point() else resized


def _with_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``images [N, C, H, W]`` with ``channels`` channels: grey repeated to colour, colour to luma."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    weights = torch.tensor(_LUMA, dtype=torch.float64).view(1, 3, 1, 1)
    grey = (images.double() * weights).sum(1, keepdim=True)
    return grey.round().to(torch.uint8) if images.dtype == torch.uint8 else grey.to(images.dtype)


def _labels(labels: list[int] | None) -> torch.Tensor | None:
    return None if labels is None else torch.tensor(labels, dtype=torch.long).reshape(-1)


# --- arrays -------------------------------------------------------------------------------

def _read_array(path: Path, options: SourceOptions) -> SourceSplits:
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"array:{path} must be a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a damaged or pickled file
        raise DataError(f"{path} cannot be read as a NumPy array ({' '.join(str(e).split())[:120]}); "
                        "save it with numpy.save or numpy.savez (no object arrays)") from None
    if isinstance(loaded, np.ndarray):
        return splits_from_arrays({"images": loaded}, options, str(path))
    with loaded:
        try:
            arrays = {k: loaded[k] for k in loaded.files}
        except Exception as e:  # noqa: BLE001 - a member that is an object array or damaged
            raise DataError(f"{path} holds an unreadable array ({' '.join(str(e).split())[:120]})") from None
    unknown = sorted(set(arrays) - {"images", "labels", "test_images", "test_labels"})
    if "images" not in arrays or unknown:
        raise DataError(f"{path} must hold 'images' (and optionally 'labels', 'test_images', 'test_labels'); "
                        f"found {', '.join(sorted(arrays)) or 'nothing'}")
    return splits_from_arrays(arrays, options, str(path))


def splits_from_arrays(arrays: dict[str, np.ndarray], options: SourceOptions, where: str) -> SourceSplits:
    """`SourceSplits` of ``arrays`` (keys ``images``, optional ``labels``, ``test_images``, ``test_labels``)."""
    images = _as_images(arrays["images"], where, "images", options.channels_first)
    labels = _as_labels(arrays.get("labels"), len(images), where, "labels")
    if "test_images" not in arrays:
        if "test_labels" in arrays:
            raise DataError(f"{where} has 'test_labels' but no 'test_images'")
        return _held_out(images, labels, options, None, where)
    test = _as_images(arrays["test_images"], where, "test_images", options.channels_first)
    if test.shape[1:] != images.shape[1:] and options.image_size is None:
        raise DataError(f"{where}: 'test_images' are {list(test.shape[1:])} but 'images' are {list(images.shape[1:])}")
    test_labels = _as_labels(arrays.get("test_labels"), len(test), where, "test_labels")
    if (labels is None) != (test_labels is None):
        raise DataError(f"{where} labels one split but not the other; give both 'labels' and 'test_labels', or neither")
    return SourceSplits(images, test, labels, test_labels)


def _as_images(array: np.ndarray, source: str, key: str, channels_first: bool) -> torch.Tensor:
    """``array`` as ``[N, C, H, W]`` uint8 or float32 in [0, 1]; `DataError` naming the problem and the fix."""
    array = np.asarray(array)
    where = f"{source} '{key}'"
    if array.ndim not in (3, 4):
        raise DataError(f"{where} has shape {list(array.shape)}; images must be [N, H, W] or [N, H, W, C] "
                        "(or [N, C, H, W] with --channels-first)")
    if len(array) == 0:
        raise DataError(f"{where} holds no images")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if not torch.isfinite(tensor).all():
            raise DataError(f"{where} contains NaN or infinite values; clean or drop those images")
        lo, hi = tensor.min().item(), tensor.max().item()
        if lo < 0 or hi > 1:
            raise DataError(f"{where} has values from {lo:g} to {hi:g}; float images must lie in [0, 1] "
                            "(divide 0-255 grey levels by 255, or save them as uint8)")
    else:
        raise DataError(f"{where} has dtype {array.dtype}; images must be uint8 (0-255) or floats in [0, 1]")
    if tensor.dim() == 3:
        return tensor.unsqueeze(1)
    if channels_first:
        if tensor.shape[1] not in (1, 3):
            raise DataError(f"{where} has {tensor.shape[1]} channels in [N, C, H, W]; images need 1 or 3")
        return tensor
    if tensor.shape[3] not in (1, 3):
        hint = " (it looks like [N, C, H, W]: pass --channels-first)" if tensor.shape[1] in (1, 3) else ""
        raise DataError(f"{where} has shape {list(array.shape)}: the last axis ({tensor.shape[3]}) is not 1 or 3 "
                        f"channels of [N, H, W, C]{hint}")
    return tensor.permute(0, 3, 1, 2).contiguous()


def _as_labels(array: np.ndarray | None, n: int, source: str, key: str) -> torch.Tensor | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{source} '{key}' must be {n} integers (one per image), got {array.dtype} of shape "
                        f"{list(array.shape)}")
    return torch.from_numpy(array.astype(np.int64))


# --- shaping and splitting ------------------------------------------------------------------

def held_out_indices(n: int, options: SourceOptions, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` indices of ``n`` items: ``round(test_fraction * n)`` held out by a permutation seeded
    with (``split_seed``, n), each split in the original order."""
    n_test = round(options.test_fraction * n)
    if not 1 <= n_test < n:
        raise DataError(f"{where} has {n} images: --test-fraction {options.test_fraction:g} holds out {n_test}; "
                        "use enough images for both splits (at least 2), or a test split of the source's own")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(options.split_seed, n)))
    return order[n_test:].sort().values, order[:n_test].sort().values


def _held_out(images: torch.Tensor, labels: torch.Tensor | None, options: SourceOptions,
              classes: tuple[str, ...] | None, where: str) -> SourceSplits:
    """`SourceSplits` of ``images`` with a test split held out (`held_out_indices`)."""
    train, test = held_out_indices(len(images), options, where)
    return SourceSplits(images[train], images[test], None if labels is None else labels[train],
                        None if labels is None else labels[test], classes, len(images))


def conform(splits: SourceSplits, options: SourceOptions, spec: str) -> SourceSplits:
    """Both splits at ``options``' size and channels (folders are already; torchvision sets and arrays here)."""
    def shaped(images: torch.Tensor) -> torch.Tensor:
        if options.image_size is not None:
            images = _resized(images, (options.image_size, options.image_size))
        return _with_channels(images, options.channels) if options.channels and len(images) else images

    train, test = shaped(splits.train), shaped(splits.test)
    if len(train) and train.shape[1:] != test.shape[1:]:
        raise DataError(f"{spec}: training images are {list(train.shape[1:])} but test images {list(test.shape[1:])}; "
                        "set --image-size S")
    return dataclasses.replace(splits, train=train, test=test)


def source_channels(spec: str, options: SourceOptions | None = None) -> int:
    """The channels ``spec`` will have (1 or 3), read from file headers and array shapes without decoding pixels.

    Used to pick a likelihood for colour before the data are read (`inference.svi.config_from_args`).
    """
    options = options or SourceOptions()
    if options.channels:
        return options.channels
    kind, path = parse_spec(spec)
    if kind in DATASETS:
        return 1
    if kind == "folder":
        try:
            return list_folder(path, options).image_shape[0]
        except DataError:
            return 1  # reading the folder for training says what is wrong with it
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            shape = loaded.shape
        else:
            with loaded:
                shape = loaded["images"].shape
    except Exception:  # noqa: BLE001 - reading the array later says what is wrong with it
        return 1
    if len(shape) != 4:
        return 1
    return shape[1] if options.channels_first else shape[3]
