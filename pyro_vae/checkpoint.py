"""Checkpoints: one file that resumes a run or rebuilds its model alone.

A checkpoint holds the model's class (``"module:QualName"``) and constructor
arguments, its parameters, the run's config, the optimiser state, every RNG
state, the position (epoch, step) and the metric history. It is written
atomically (temporary file in the same folder, then ``os.replace``), so a
crash never leaves a half-written file where a good one was. It loads with
``torch.load(weights_only=True)``: plain containers and tensors only.
"""

from __future__ import annotations

import importlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.device import resolve_device
from pyro_vae.errors import CheckpointError

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), Python and NumPy RNG states, as safe-to-load containers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def save(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: TrainConfig,
    optim_state: dict[str, Any] | None = None,
    epoch: int = 0,
    step: int = 0,
    history: list[dict[str, float]] | None = None,
    partial: dict[str, float] | None = None,
) -> None:
    """Write a checkpoint atomically.

    ``epoch``: epochs completed; ``step``: batches done in the epoch after that
    (0 at an epoch boundary); ``partial``: that epoch's running sums so far
    (``loss``, ``images``, ``seconds``) when stopped mid-epoch. ``model`` must
    offer ``init_kwargs()``.
    """
    path = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_class": f"{type(model).__module__}:{type(model).__qualname__}",
        "model_kwargs": model.init_kwargs(),
        "model_state": model.state_dict(),
        "config": config.to_dict(),
        "optim_state": optim_state or {},
        "rng_state": rng_state(),
        "epoch": epoch,
        "step": step,
        "history": history or [],
        "partial": partial,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint's contents; `CheckpointError` when missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (python -m inference.svi --out DIR) or give the right path")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); it may be truncated or corrupt") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint of format {FORMAT_VERSION}")
    return payload


def build_model(payload: dict[str, Any]) -> torch.nn.Module:
    """Construct the checkpoint's model class with its arguments and load its parameters."""
    module_name, _, qualname = payload["model_class"].partition(":")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"cannot import the checkpoint's model class {payload['model_class']} ({e})") from None
    model = cls(**payload["model_kwargs"])
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's parameters do not fit {payload['model_class']}: {e}") from None
    return model


def load(path: str | os.PathLike, device: str = "auto") -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild ``(model, config)`` from a checkpoint file (or a run folder holding one).

    The model is in eval mode on ``device`` (``auto``: CUDA when present). It
    does not touch Pyro's param store; `inference.svi.train` clears it itself.
    """
    target = resolve_device(device)
    payload = read(path, map_location=target)
    model = build_model(payload).to(target).eval()
    return model, TrainConfig.from_dict(payload["config"])
