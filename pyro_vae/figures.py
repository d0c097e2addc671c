"""Figures: image grids (samples, reconstructions, interpolations, the latent
manifold), the latent space coloured by label, the ELBO / rate / distortion
curves, and the evaluation report's k-hat plot, gap histogram and K ladder.

Images are flattened squares ``[N, C*side*side]`` (C = 1 grey or 3 colour, channel-major) with values in [0, 1].
Curves are drawn on a bare ``matplotlib.figure.Figure`` (no pyplot), so saving
one needs no display and never changes the caller's backend (a notebook's
inline plots keep working). matplotlib and torchvision are imported on use.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch


def square_image_shape(num_pixels: int) -> tuple[int, int, int] | None:
    """``(C, S, S)`` of a flattened square image of ``num_pixels``: grey (S*S) or colour (3*S*S); None if neither.

    The two cannot be confused: 3 * S^2 is never a square.
    """
    for channels in (1, 3):
        side = math.isqrt(num_pixels // channels)
        if num_pixels % channels == 0 and channels * side * side == num_pixels:
            return channels, side, side
    return None


def _as_images(images: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """``images [N, D]`` as ``[N, C, H, W]``: ``shape`` (C, H, W), else the square `square_image_shape` of D."""
    shape = tuple(shape) if shape is not None else square_image_shape(images.shape[-1])
    if shape is None or math.prod(shape) != images.shape[-1]:
        raise ValueError(f"images of {images.shape[-1]} pixels are not of shape {shape} nor square (grey or colour); "
                         "cannot draw them")
    return images.detach().float().cpu().reshape(-1, *shape)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8,
                    shape: Sequence[int] | None = None) -> Path:
    """Save ``images [N, D]`` (each of ``shape`` (C, H, W), by default square) as one PNG grid, ``nrow`` a row."""
    from torchvision.utils import save_image  # imported on use: torchvision is slow to import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _whole_or_none(path):
        save_image(_as_images(images, shape), path, nrow=nrow, padding=2, pad_value=0.5)
    return path


@contextlib.contextmanager
def _whole_or_none(path: Path):
    """A write error (no space, I/O) removes the partly written ``path`` and raises ``OSError`` naming it."""
    try:
        yield
    except OSError as e:
        path.unlink(missing_ok=True)
        if e.filename is None:
            e.filename = str(path)
        raise


def draw_image_grid(ax, images: torch.Tensor, nrow: int = 8, title: str = "",
                    shape: Sequence[int] | None = None) -> None:
    """Show ``images [N, D]`` as one grid on a matplotlib ``ax``, ``nrow`` images a row, axes hidden."""
    from torchvision.utils import make_grid

    grid = make_grid(_as_images(images, shape), nrow=nrow, padding=2, pad_value=0.5)
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def save_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike,
                         shape: Sequence[int] | None = None) -> Path:
    """Save a grid whose odd rows are test images and even rows their reconstructions."""
    n = len(originals)
    nrow = min(n, 8)
    rows = []
    for start in range(0, n, nrow):
        rows += [originals[start : start + nrow], reconstructions[start : start + nrow]]
    return save_image_grid(torch.cat(rows), path, nrow=nrow, shape=shape)


#: Markers on a curve only up to this many epochs; beyond, they crowd.
MARKER_EPOCHS = 30


def _readable_ylim(ax, series: Sequence[Sequence[float]]) -> int:
    """Fit the y-axis to the curves after their first epochs, which would otherwise set the scale.

    Skips the first ceil(n / 20) epochs (one for up to 20 epochs) of runs of 10
    or more; returns how many epochs fall outside the axis (0 when none do).
    """
    n = max(len(v) for v in series)
    skip = math.ceil(n / 20) if n >= 10 else 0
    kept = [y for v in series for y in v[skip:]]
    if not skip or not kept:
        return 0
    lo, hi = min(kept), max(kept)
    pad = 0.05 * (hi - lo) or 1.0
    ax.set_ylim(lo - pad, hi + pad)
    outside = [i for i in range(n) if any(i < len(v) and not lo - pad <= v[i] <= hi + pad for v in series)]
    return max(outside) + 1 if outside else 0


def plot_elbo_curve(history: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Write `elbo_figure` of ``history`` (one record per epoch) to ``path`` (``elbo.png``)."""
    return _save(elbo_figure(history), path)


def elbo_figure(history: Sequence[dict[str, float]]):
    """Train and test ELBO per epoch; beside them test rate and distortion when the records have them (nats per image).

    Readable for long runs: markers only up to `MARKER_EPOCHS` epochs, and the
    y-axis fitted to the later epochs (the first few, far lower, are said to
    lie below it). Epochs are whole numbers on the axis, for short runs too.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    has_terms = bool(history) and all("test_rate" in h and "test_distortion" in h for h in history)
    fig = Figure(figsize=(10 if has_terms else 5, 3.5))
    axes = fig.subplots(1, 2 if has_terms else 1)
    left = axes[0] if has_terms else axes
    marker = "o" if len(epochs) <= MARKER_EPOCHS else None
    # (axis, [(record key, label, colour)], y label): rate gets its own axis, about a third of distortion's size
    panels = [(left, [("train_elbo", "train (running mean)", "C0"), ("test_elbo", "test", "C1")],
               "ELBO (nats per image)")]
    if has_terms:
        panels += [(axes[1], [("test_distortion", "distortion: -log p(x|z)", "C3")], "distortion (nats per image)"),
                   (axes[1].twinx(), [("test_rate", "rate: KL(q(z|x) || p(z))", "C2")], "rate (nats per image)")]
    below = 0
    for ax, curves, ylabel in panels:
        values = [[h[key] for h in history] for key, _, _ in curves]
        for (key, label, colour), v in zip(curves, values):
            ax.plot(epochs, v, marker=marker, markersize=3, label=label, color=colour)
        below = max(below, _readable_ylim(ax, values))
        ax.set_ylabel(ylabel, color=curves[0][2] if len(curves) == 1 else "black")
    xlabel = "epoch" + (f" (epochs 1-{below} off the axis)" if below > 1 else " (epoch 1 off the axis)" if below else "")
    left.set_title("ELBO, a lower bound on log p(x); higher is better", fontsize=10)
    left.legend(fontsize=8)
    for ax in (axes if has_terms else [left]):
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epoch 1, 2, 3; not 1.2, 1.4
    if has_terms:
        axes[1].set_title("test ELBO = -(rate + distortion)", fontsize=10)
        handles = [line for ax, _, _ in panels[1:] for line in ax.get_lines()]
        axes[1].legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    return fig


def latent_plane(codes: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """Codes ``[N, z_dim]`` as points ``[N, 2]``: themselves when z_dim = 2, else their first two principal components.

    Returns the points and the share of the codes' variance the plane holds
    (None when z_dim = 2, nothing projected). z_dim = 1 gets a zero second axis.
    """
    codes = codes.detach().double().cpu()
    if codes.shape[1] == 2:
        return codes, None
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], 1), None
    centred = codes - codes.mean(0)
    _, singular, v_t = torch.linalg.svd(centred, full_matrices=False)
    share = float((singular[:2] ** 2).sum() / (singular**2).sum())
    return centred @ v_t[:2].T, share


def draw_latent(ax, codes: torch.Tensor, labels: torch.Tensor | None = None, title: str = "",
                names: Sequence[str] | None = None) -> None:
    """Scatter codes ``[N, z_dim]`` on ``ax`` (2-D, or a PCA projection), coloured by integer ``labels [N]``;
    the legend calls label c ``names[c]`` when given (a folder's class names), else c."""
    points, share = latent_plane(codes)
    z_dim = codes.shape[1]
    # drawn in a fixed random order, so that no class is painted over all the others
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    size = min(30.0, max(2.0, 2 * math.sqrt(10_000 / max(len(points), 1))))  # 2 for MNIST's 10,000; larger for fewer
    if labels is None:
        ax.scatter(points[order, 0], points[order, 1], s=size, alpha=0.5, linewidths=0)
    else:
        from matplotlib.lines import Line2D

        labels = labels.cpu()
        classes = sorted(set(labels.tolist()))
        cmap = _colormap("tab10" if len(classes) <= 10 else "tab20")
        index = {c: i for i, c in enumerate(classes)}
        colours = [cmap(index[c] % cmap.N) for c in labels[order].tolist()]
        ax.scatter(points[order, 0], points[order, 1], s=size, alpha=0.6, linewidths=0, c=colours)
        handles = [Line2D([], [], marker="o", markersize=4, linestyle="", color=cmap(i % cmap.N),
                          label=names[c] if names is not None and 0 <= c < len(names) else str(c))
                   for c, i in index.items()]
        ax.legend(handles=handles, fontsize=7, loc="upper right", title="label", title_fontsize=7, framealpha=0.8)
    if share is None:
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        where = f"{z_dim}-D codes" if z_dim == 2 else "1-D codes"
    else:
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        where = f"PCA of {z_dim}-D codes, {100 * share:.0f}% of their variance"
    ax.set_title(f"{title}{': ' if title else ''}{where}", fontsize=9)


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def plot_latent(codes: torch.Tensor, labels: torch.Tensor | None, path: str | os.PathLike,
                title: str = "posterior means of test images", names: Sequence[str] | None = None) -> Path:
    """`draw_latent` as one PNG."""
    fig, ax = _figure(5.5, 5)
    draw_latent(ax, codes, labels, title, names)
    return _save(fig, path)


def _figure(width: float = 5, height: float = 3.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with _whole_or_none(path):
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
