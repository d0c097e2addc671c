"""Shared fixtures: where real MNIST lives, and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_data_root() -> Path | None:
    for candidate in (os.environ.get("PYRO_VAE_DATA"), REPO.parent / "shared" / "data"):
        raw = Path(candidate or "") / "MNIST" / "raw"
        if candidate and all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """Folder holding MNIST/raw/*-ubyte (or *-ubyte.gz). In CI its absence is a failure, not a skip."""
    root = _find_data_root()
    if root is None:
        message = "real MNIST not found: set PYRO_VAE_DATA to a folder holding MNIST/raw/*-ubyte"
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
