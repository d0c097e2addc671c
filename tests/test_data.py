"""Data: loading, binarisation modes, seeded order, validation, offline errors; the package's imports point one way."""

import ast
import graphlib
import gzip

import pytest
import torch

from pyro_vae.data import DataSplits, Images, check_images, data_root, load_labels, load_pixels, load_splits
from pyro_vae.errors import DataError

from conftest import MNIST_FILES, REPO, cuda_only


def _epoch(images, batch_size=10, epoch=0, start_step=0):
    return list(images.batches(batch_size, epoch=epoch, start_step=start_step))


def test_dynamic_binarisation_is_fresh_each_epoch_and_reproducible(grey_images):
    images = Images(grey_images, "dynamic", seed=3)
    first, again, second = (torch.cat(_epoch(images, epoch=e)) for e in (0, 0, 1))
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    # each pixel is a Bernoulli(grey / 255) draw: its frequency over many epochs approaches grey / 255
    draws = torch.stack([next(images.batches(64, epoch=e, shuffle=False)) for e in range(400)])
    error = (draws.mean(0) - grey_images.float() / 255).abs()
    assert error.mean() < 0.025 and error.max() < 0.15  # sd of a 400-draw frequency is at most 0.025


def test_static_binarisation_is_one_draw_reused(grey_images):
    images = Images(grey_images, "static", seed=3)
    epochs = [torch.cat(_epoch(images, epoch=e)) for e in (0, 1)]
    assert set(epochs[0].unique().tolist()) == {0.0, 1.0}
    # same multiset of rows, reshuffled
    assert torch.equal(epochs[0].sort(0).values, epochs[1].sort(0).values) and not torch.equal(epochs[0], epochs[1])
    assert torch.equal(images.frozen(99), Images(grey_images, "static", seed=3).frozen(0))


def test_none_serves_grey_levels(grey_images):
    images = Images(grey_images, "none")
    batch = next(images.batches(64, shuffle=False))
    assert torch.equal(batch, grey_images.float() / 255)
    assert not images.is_binary()


def test_each_epoch_visits_every_image_once_in_a_seeded_order(grey_images):
    images = Images(grey_images, "none", seed=5)
    orders = []
    for epoch in (0, 1):
        batches = _epoch(images, batch_size=10, epoch=epoch)
        assert [len(b) for b in batches] == [10] * 6 + [4]
        served = torch.cat(batches)
        assert torch.equal(served.sort(0).values, (grey_images.float() / 255).sort(0).values)  # a permutation of rows
        orders.append(served)
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(torch.cat(_epoch(Images(grey_images, "none", seed=5))), orders[0])


def test_start_step_resumes_the_same_batches(grey_images):
    images = Images(grey_images, "dynamic", seed=1)
    full = _epoch(images, epoch=2)
    rest = _epoch(images, epoch=2, start_step=4)
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(full[4:], rest))


def test_frozen_evaluation_split_depends_only_on_its_seed(grey_images):
    images = Images(grey_images, "dynamic", seed=0)
    assert torch.equal(images.frozen(7), Images(grey_images, "dynamic", seed=1).frozen(7))
    assert not torch.equal(images.frozen(7), images.frozen(8))


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.full((2, 784), 1.5), r"\[0, 1\].*max 1.5"),
        (torch.full((2, 784), -0.1), r"\[0, 1\].*min -0.1"),
        (torch.tensor([[float("nan")] * 784]), "NaN"),
        (torch.zeros(2, 28, 28), r"shape \[N, D\]"),
        (torch.zeros(0, 784), "empty"),
        (torch.zeros(2, 784, dtype=torch.int64), "dtype"),
    ],
)
def test_bad_pixels_are_rejected_with_the_reason(x, message):
    with pytest.raises(DataError, match=message):
        Images(x)


def test_binary_check_names_the_fix():
    check_images(torch.tensor([[0.0, 1.0]]), binary=True)
    with pytest.raises(DataError, match="--binarize dynamic or static"):
        check_images(torch.tensor([[0.0, 0.5]]), binary=True)
    with pytest.raises(DataError, match=r"\[N, 784\]"):
        check_images(torch.zeros(3, 100), x_dim=784)


def test_missing_files_error_names_files_and_folder(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_pixels("mnist", train=True, data_dir=tmp_path, download=False)
    text = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in text
    assert "t10k-images-idx3-ubyte" in text and "train-labels-idx1-ubyte" in text
    assert "train-images-idx3-ubyte," not in text  # present, so not listed as missing
    assert "PYRO_VAE_DATA" in text


def test_gzipped_idx_files_read_as_the_plain_ones(mnist_root, tmp_path):
    """A node that receives MNIST as ``*-ubyte.gz`` (torchvision's download layout) reads the same arrays."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        (raw / f"{f}.gz").write_bytes(gzip.compress((mnist_root / "MNIST" / "raw" / f).read_bytes(), compresslevel=1))
    for train in (True, False):
        assert torch.equal(load_pixels("mnist", train, tmp_path, download=False), load_pixels("mnist", train, mnist_root))
    assert torch.equal(load_labels("mnist", False, tmp_path, download=False), load_labels("mnist", False, mnist_root))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is unreadable .*promises \[5\]"):
        load_labels("mnist", False, tmp_path, download=False)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is unreadable"):
        load_labels("mnist", False, tmp_path, download=False)


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("PYRO_VAE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "pyro-vae"


def test_real_mnist_loads_as_uint8(mnist_root):
    train = load_pixels("mnist", True, mnist_root, download=False)
    test = load_pixels("mnist", False, mnist_root, download=False)
    assert train.shape == (60000, 784) and test.shape == (10000, 784) and train.dtype == torch.uint8
    assert abs(train.float().mean().item() / 255 - 0.1307) < 1e-3  # the official pixel mean
    splits = load_splits(train_limit=100, test_limit=50, data_dir=mnist_root, download=False)
    assert isinstance(splits, DataSplits) and len(splits.train) == 100 and splits.test.shape == (50, 784)
    assert splits.train.pixels.dtype == torch.uint8
    assert set(splits.test.unique().tolist()) == {0.0, 1.0}


@cuda_only
def test_the_test_split_is_the_same_images_on_cuda_and_on_the_cpu(mnist_root):
    cpu = load_splits("mnist", data_dir=mnist_root, train_limit=10, test_limit=500, test_seed=4)
    cuda = load_splits("mnist", data_dir=mnist_root, train_limit=10, test_limit=500, test_seed=4, device="cuda")
    assert cuda.test.is_cuda and torch.equal(cuda.test.cpu(), cpu.test)


@cuda_only
def test_images_stay_on_the_cuda_device(grey_images):
    images = Images(grey_images, "dynamic", device="cuda")
    assert images.pixels.is_cuda and images.pixels.dtype == torch.uint8
    assert all(b.is_cuda for b in images.batches(16))
    assert images.frozen(0).is_cuda


@cuda_only
@pytest.mark.parametrize("binarize", ["dynamic", "static"])
def test_splits_moved_to_cuda_keep_their_mode_and_stored_draw(grey_images, binarize):
    cpu = Images(grey_images, binarize, seed=3)
    splits = DataSplits(train=cpu, test=cpu.frozen(0), test_seed=0, source="custom")
    moved = splits.to("cuda")
    assert moved.train.pixels.is_cuda and moved.test.is_cuda and not cpu.pixels.is_cuda
    assert torch.equal(moved.train.pixels.cpu(), cpu.pixels)  # a static draw is not drawn again
    assert moved.train.binarize == binarize and moved.train.seed == 3 and moved.source == "custom"
    assert all(b.is_cuda for b in moved.train.batches(16))


def test_moving_splits_to_their_own_device_changes_nothing(grey_images):
    images = Images(grey_images, "dynamic", seed=3)
    splits = DataSplits(train=images, test=images.frozen(0), test_seed=0)
    same = splits.to("cpu")
    assert same.train is images and same.test is splits.test


def _internal_imports(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, at module level or inside a function (read from the source)."""
    modules = {(f"{p}.{f.stem}" if f.stem != "__init__" else p): f for p in packages for f in (REPO / p).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}  # from pkg import module
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_imports_point_one_way():
    graph = _internal_imports(("pyro_vae", "models", "inference"))
    assert {"pyro_vae.sources", "pyro_vae.images", "pyro_vae.streaming"} <= graph["pyro_vae.data"]
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"modules import each other in a circle: {' -> '.join(e.args[1])}")
    # the data layer's chain: readers of files and arrays -> images served as batches -> streamed files -> splits
    assert not graph["pyro_vae.sources"] & {"pyro_vae.images", "pyro_vae.streaming", "pyro_vae.data"}
    assert not graph["pyro_vae.images"] & {"pyro_vae.sources", "pyro_vae.streaming", "pyro_vae.data"}
    assert "pyro_vae.data" not in graph["pyro_vae.streaming"]


def test_the_tests_find_mnist_where_the_program_puts_it(tmp_path, monkeypatch):
    """conftest resolves the data root as python -m inference.svi does: --data-dir, $PYRO_VAE_DATA, the cache."""
    from conftest import MNIST_FILES, mnist_root_of
    from pyro_vae.sources import data_root

    class Options:  # what pytest's config answers for --data-dir
        def __init__(self, value):
            self.value = value

        def getoption(self, name):
            assert name == "--data-dir"
            return self.value

    cache = tmp_path / "cache"
    raw = cache / "pyro-vae" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert mnist_root_of(Options(None)) == (data_root(), False)  # the program's default root, files missing
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(b"")
    assert mnist_root_of(Options(None)) == (cache / "pyro-vae", True)  # where a download puts them
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "env"))
    assert mnist_root_of(Options(None)) == (tmp_path / "env", False)
    assert mnist_root_of(Options(str(cache / "pyro-vae"))) == (cache / "pyro-vae", True)  # --data-dir first
