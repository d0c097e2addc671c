"""Shared fixtures: where real MNIST lives, and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--data-dir", default=None,
                     help="dataset root holding MNIST/raw/ (default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae: the "
                          "root python -m inference.svi uses, and downloads MNIST into)")


def mnist_root_of(config: pytest.Config) -> tuple[Path, bool]:
    """The dataset root the tests use, resolved as the program resolves it (`pyro_vae.sources.data_root`:
    ``--data-dir``, then ``$PYRO_VAE_DATA``, then the user cache folder), and whether MNIST's four files are there."""
    from pyro_vae.sources import data_root

    root = data_root(config.getoption("--data-dir"))
    raw = root / "MNIST" / "raw"
    return root, all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES)


def pytest_report_header(config: pytest.Config) -> str:
    root, found = mnist_root_of(config)
    if found:
        return f"real MNIST: {root}"
    return (f"real MNIST: not in {root}; the tests on it {'fail (CI)' if os.environ.get('CI') else 'are skipped'} "
            "(set --data-dir or PYRO_VAE_DATA to a folder holding MNIST/raw/*-ubyte)")


@pytest.fixture(scope="session")
def mnist_root(request: pytest.FixtureRequest) -> Path:
    """Folder holding MNIST/raw/*-ubyte (or *-ubyte.gz). In CI its absence is a failure, not a skip."""
    root, found = mnist_root_of(request.config)
    if not found:
        message = (f"real MNIST not found in {root}: pass --data-dir, or set PYRO_VAE_DATA to a folder holding "
                   "MNIST/raw/*-ubyte")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def grey_images() -> torch.Tensor:
    """64 random uint8 'images' of 784 grey levels (seeded)."""
    gen = torch.Generator().manual_seed(123)
    return torch.randint(0, 256, (64, 784), generator=gen, dtype=torch.uint8)


def cuda_only(test):
    """Mark ``test`` ``cuda`` (``pytest -m cuda`` selects every CUDA test) and skip it where CUDA is absent."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; none on this machine")(test))
