"""Checkpoints: one file that resumes a run or rebuilds its model alone.

A checkpoint holds the model's registered name (``"vae"``; see
`models.registry`) and constructor arguments, its parameters, the run's
config, the optimiser state, every RNG state, the position (epoch, step) and
the metric history. It is written atomically (`pyro_vae.writes.write_atomic`: a
temporary file in the same folder, then a rename), so a crash never leaves a
half-written file where a good one was; a crash's leftover temporary file is
removed at the next save.

A checkpoint is untrusted input. It loads with ``torch.load(weights_only=True)``
(plain containers and tensors only), and the model class comes from the
registry by name, never from an import path in the file: `build_model` is the
one place this module reaches into ``models`` (at call time, since ``models``
imports this toolkit). Format 1 files, which stored ``"module:QualName"``, load
when that path is a registered class's own.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.config import TrainConfig, is_finite_number
from pyro_vae.device import resolve_device
from pyro_vae.errors import CheckpointError
from pyro_vae.writes import write_atomic

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


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
    try:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"the checkpoint's RNG state is damaged ({type(e).__name__})") from None


@dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` epochs completed, ``step`` batches done in the epoch after that (0 at an
    epoch boundary), the metric ``history`` (one record per completed epoch) and ``partial``, that epoch's running
    sums so far (``loss``, ``images``, ``seconds``) when stopped mid-epoch."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] | None = None


def save(path: str | os.PathLike, model: torch.nn.Module, config: TrainConfig, position: Position = Position(),
         optim_state: dict[str, Any] | None = None, rng_states: list[dict[str, Any]] | None = None) -> None:
    """Write a checkpoint atomically (`pyro_vae.writes.write_atomic`), with the mode any file the process creates has.

    ``model`` must be of a registered class (`models.register_model`) and offer ``init_kwargs()``; ``position``:
    where the run stands; ``optim_state``: the optimiser's ``state_dict()``. ``rng_states``: under ``torchrun``,
    every rank's `rng_state` in rank order (``rng_states_by_rank``; ``rng_state`` stays this process's, rank 0's).
    A write that fails (no space, quota, I/O error) raises ``OSError`` naming ``path``, with the temporary
    file removed and the previous checkpoint at ``path`` as it was.
    """
    from models.registry import name_of  # models imports this toolkit; see the module doc

    path = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "model": name_of(model),
        "model_kwargs": model.init_kwargs(),
        "model_state": model.state_dict(),
        "config": config.to_dict(),
        "optim_state": optim_state or {},
        "rng_state": rng_state(),
        "epoch": position.epoch,
        "step": position.step,
        "history": list(position.history),
        "partial": position.partial,
    }
    if rng_states is not None and len(rng_states) > 1:
        payload["rng_states_by_rank"] = rng_states
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(payload, f), clear_leftovers=True)


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a run folder."""
    path = Path(path)
    try:
        return path / "checkpoint.pt" if path.is_dir() else path
    except OSError:  # a name too long to look up: read_bytes says so
        return path


def read_bytes(path: str | os.PathLike) -> bytes:
    """The checkpoint file's bytes (read once: hash these, then `parse` them); `CheckpointError` if unreadable."""
    path = resolve_path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}; train first (python -m inference.svi --out DIR) or give "
                                  "the right path")
        return path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path} ({e.strerror or e})") from None


_REQUIRED = {"model_kwargs": dict, "model_state": dict, "config": dict, "epoch": int, "step": int}


def parse(data: bytes, path: str | os.PathLike = "checkpoint", map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents from its bytes; `CheckpointError` when they are not a checkpoint of a known format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about legacy formats; the error below says what matters
            payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged or hostile file
        why = ("it holds objects other than tensors and plain containers, which are never loaded"
               if "weights_only" in str(e) else f"{type(e).__name__}: {str(e).strip()[:120]}")
        raise CheckpointError(f"{path} is not a readable checkpoint ({why}); it may be truncated, corrupt "
                              "or not a pyro-vae checkpoint") from None
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if type(version) is not int or version not in READABLE_FORMATS:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (format {version!r}; this version reads "
                              f"{', '.join(map(str, READABLE_FORMATS))})")
    name_key = "model" if version >= 2 else "model_class"
    wrong = [k for k, kind in {name_key: str, **_REQUIRED}.items() if not isinstance(payload.get(k), kind)]
    if wrong:
        raise CheckpointError(f"{path} is damaged: {', '.join(wrong)} missing or of the wrong type")
    return payload


def check_resume_state(payload: dict[str, Any]) -> None:
    """`CheckpointError` unless the position, history, partial sums and RNG state make sense to resume from.

    Checked before anything is written, so a damaged or crafted file cannot
    leave a run folder half-rewritten.
    """
    epoch, step, history, partial = payload["epoch"], payload["step"], payload.get("history"), payload.get("partial")
    problems = []
    if not (is_finite_number(epoch, True) and epoch >= 0 and is_finite_number(step, True) and step >= 0):
        problems.append(f"position epoch {epoch!r}, step {step!r}")
    if not (_is_history(history) and len(history) == epoch):
        problems.append("history (one record of numbers per completed epoch)")
    if partial is not None and not (isinstance(partial, dict) and set(partial) == {"loss", "images", "seconds"}
                                    and all(is_finite_number(v) for v in partial.values())):
        problems.append("partial-epoch sums")
    by_rank = payload.get("rng_states_by_rank", [])
    if not (_is_rng_state(payload.get("rng_state")) and isinstance(by_rank, list)
            and all(_is_rng_state(r) for r in by_rank)):
        problems.append("RNG state")
    if not isinstance(payload.get("optim_state"), dict):
        problems.append("optimiser state")
    if problems:
        raise CheckpointError(f"the checkpoint cannot be resumed: its {'; '.join(problems)} are damaged")


def _is_rng_state(rng: Any) -> bool:
    """Whether ``rng`` has the containers `rng_state` writes (their contents are checked by `set_rng_state`)."""
    return (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
            and isinstance(rng.get("cuda"), list) and isinstance(rng.get("python"), (tuple, list))
            and isinstance(rng.get("numpy"), dict))


def _is_history(history: Any) -> bool:
    """Whether ``history`` is a list of metric records: dicts of numbers, each with its ``epoch``, and optionally
    ``sites``, a dict of latent-site names to dicts of numbers (each site's rate and active units)."""
    def numbers(d: Any) -> bool:
        return isinstance(d, dict) and all(isinstance(k, str) and is_finite_number(v) for k, v in d.items())

    def record(h: Any) -> bool:
        if not isinstance(h, dict) or "epoch" not in h:
            return False
        sites = h.get("sites", {})
        return (numbers({k: v for k, v in h.items() if k != "sites"}) and isinstance(sites, dict)
                and all(isinstance(name, str) and numbers(site) for name, site in sites.items()))

    return isinstance(history, list) and all(record(h) for h in history)


def history_of(payload: dict[str, Any]) -> list[dict[str, float]]:
    """The run's metric records (one per completed epoch); `CheckpointError` when damaged."""
    history = payload.get("history", [])
    if not _is_history(history):
        raise CheckpointError("the checkpoint's metric history is damaged (it should be one record of numbers per epoch)")
    return history


def read(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint's contents; `CheckpointError` when missing, unreadable or not a checkpoint."""
    return parse(read_bytes(path), resolve_path(path), map_location)


def model_name(payload: dict[str, Any]) -> str:
    """The registered name of the payload's model (format 1: its stored ``module:QualName``)."""
    return payload["model"] if payload["format_version"] >= 2 else payload["model_class"]


def config_of(payload: dict[str, Any]) -> TrainConfig:
    """The run's `TrainConfig`; `CheckpointError` when the stored one does not make one."""
    try:
        return TrainConfig.from_dict(payload["config"]).validated()
    except RecursionError:
        raise CheckpointError("the checkpoint's config is damaged: values nested too deeply") from None
    except (TypeError, ValueError, KeyError, OverflowError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"the checkpoint's config is damaged: {e}") from None


def build_model(payload: dict[str, Any]) -> torch.nn.Module:
    """The payload's registered model class built with its checked arguments and finite parameters."""
    from models.registry import build_model as build_registered  # see the module doc

    return build_registered(model_name(payload), payload["model_kwargs"], payload["model_state"],
                            legacy_path=payload["format_version"] < 2)


def load(path: str | os.PathLike, device: str = "auto") -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild ``(model, config)`` from a checkpoint file (or a run folder holding one).

    The model is in eval mode on ``device`` (``auto``: CUDA when present). It
    does not touch Pyro's param store; `inference.svi.train` clears it itself.
    """
    target = resolve_device(device)
    payload = read(path, map_location=target)
    model = build_model(payload).to(target).eval()
    return model, config_of(payload)
