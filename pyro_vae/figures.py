"""Figures: image grids (samples, reconstructions), the ELBO curve, and the
evaluation report's k-hat plot, gap histogram and K ladder.

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
    epochs = [h["epoch"] for h in history]
    fig, ax = _figure()
    for key, label in (("train_elbo", "train (running mean)"), ("test_elbo", "test")):
        ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.set_title("ELBO, a lower bound on log p(x); higher is better")
    ax.legend()
    return _save(fig, path)


def _figure(width: float = 5, height: float = 3.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_khat(khat: Sequence[float], path: str | os.PathLike) -> Path:
    """Per-image PSIS k-hat with the 0.5 and 0.7 thresholds of Yao et al. (2018)."""
    fig, ax = _figure()
    ax.plot(range(len(khat)), khat, ".", markersize=2, alpha=0.6)
    for level, label in ((0.5, "0.5: good below"), (0.7, "0.7: unreliable above")):
        ax.axhline(level, color="red" if level == 0.7 else "orange", linestyle="--", label=label)
    ax.set_xlabel("test image")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title("Reliability of the importance-sampling estimate")
    ax.legend(loc="upper right")
    return _save(fig, path)


def plot_gap_histogram(gaps: dict[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Histograms of per-image gaps (nats), one series per name."""
    fig, ax = _figure()
    for name, values in gaps.items():
        ax.hist(list(values), bins=50, alpha=0.5, label=name)
    ax.set_xlabel("nats per image")
    ax.set_ylabel("images")
    ax.set_title("Per-image gaps below log p(x)")
    ax.legend()
    return _save(fig, path)


def plot_ladder(ladder: dict[int, float], log_px: float, path: str | os.PathLike) -> Path:
    """Mean IWAE-k bound against k (log axis), with the log p(x) estimate."""
    fig, ax = _figure()
    ks = sorted(ladder)
    ax.plot(ks, [ladder[k] for k in ks], "o-", label="IWAE-k bound")
    ax.axhline(log_px, color="black", linestyle="--", label="log p(x) estimate")
    ax.set_xscale("log")
    ax.set_xlabel("k (samples per bound)")
    ax.set_ylabel("nats per image")
    ax.set_title("The K ladder: bounds tighten toward log p(x)")
    ax.legend()
    return _save(fig, path)


def plot_ais(ais_minus_is: Sequence[float] | None, bdmc_gaps: dict[int, float] | None,
             path: str | os.PathLike) -> Path:
    """Left: per-image AIS minus IS estimate (nats). Right: mean BDMC gap against AIS steps (log axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    if ais_minus_is is None:
        left.text(0.5, 0.5, "AIS not run on test images", ha="center", va="center", transform=left.transAxes)
    else:
        left.plot(range(len(ais_minus_is)), ais_minus_is, ".", markersize=3, alpha=0.7)
        left.axhline(0, color="black", linewidth=0.8)
        left.set_xlabel("test image")
        left.set_ylabel("AIS - IS (nats)")
        left.set_title("AIS minus importance sampling, per image")
    if bdmc_gaps is None:
        right.text(0.5, 0.5, "BDMC not run", ha="center", va="center", transform=right.transAxes)
    else:
        steps = sorted(bdmc_gaps)
        right.plot(steps, [bdmc_gaps[t] for t in steps], "o-")
        right.set_xscale("log")
        if all(bdmc_gaps[t] > 0 for t in steps):
            right.set_yscale("log")
        right.set_xlabel("AIS steps T")
        right.set_ylabel("mean BDMC gap (nats)")
        right.set_title("Upper - lower bound on simulated images")
    return _save(fig, path)
