"""Figures a run writes: image grids (samples, reconstructions) and the ELBO curve.

Images are flattened squares ``[N, side*side]`` with values in [0, 1].
Curves are drawn on a bare ``matplotlib.figure.Figure`` (no pyplot), so saving
one needs no display and never changes the caller's backend (a notebook's
inline plots keep working). matplotlib and torchvision are imported on use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch


def _as_square(images: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(images.shape[-1])
    if side * side != images.shape[-1]:
        raise ValueError(f"images of {images.shape[-1]} pixels are not square; cannot draw them")
    return images.detach().float().cpu().reshape(-1, 1, side, side)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Save ``images [N, D]`` as one PNG grid with ``nrow`` images a row."""
    from torchvision.utils import save_image  # imported on use: torchvision is slow to import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(_as_square(images), path, nrow=nrow, padding=2, pad_value=0.5)
    return path


def save_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a grid whose odd rows are test images and even rows their reconstructions."""
    n = len(originals)
    nrow = min(n, 8)
    rows = []
    for start in range(0, n, nrow):
        rows += [originals[start : start + nrow], reconstructions[start : start + nrow]]
    return save_image_grid(torch.cat(rows), path, nrow=nrow)


def plot_elbo_curve(history: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Plot train and test ELBO (nats per image) against epoch from metric records."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for key, label in (("train_elbo", "train (running mean)"), ("test_elbo", "test")):
        ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.set_title("ELBO, a lower bound on log p(x); higher is better")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
