r"""What a trained model learned, in pictures (``python -m inference.figures RUN_DIR`` draws them).

Draws into ``RUN_DIR/figures`` (or ``--out``), for any checkpoint of any model
family (the contract of `models.base.LatentModel`; what needs an optional
capability is skipped, with one line, where the model lacks it):

- ``samples.png``: mean images E[x|z] for 64 draws of every latent from the prior;
- ``reconstructions.png``: test images (odd rows) and E[x|z] at their codes (even
  rows; at one draw of the guide for a model without a central code);
- ``latent.png``: the codes of the test images (``encode``: q's mean; the site
  ``code_site`` names, "z" by default, in the title), coloured by label; for more
  than 2 dimensions their first two principal components;
- ``interpolation.png``: each row a test image x_a, the decodings of
  z = (1 - t) z_a + t z_b for t = 0, 1/9, ..., 1, and x_b;
- ``manifold.png`` (z_dim = 2 only): a 20 x 20 grid of decodings at the prior's
  quantiles, z_j = Phi^-1((j + 0.5) / 20) on each axis, z2 growing upwards as in ``latent.png``;
- ``elbo.png``: train and test ELBO per epoch, and test rate and distortion
  (``metrics.jsonl``; see `inference.estimators.rate_distortion`).

Training writes the same set after its last epoch (`draw_run_figures`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from inference.estimators import predictive
from models.base import LatentModel
from pyro_vae import checkpoint, figures
from pyro_vae.data import evaluation_split
from pyro_vae.device import forked_rng, resolve_device
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.paths import check_writable_dir
from pyro_vae.run_lock import check_free, run_lock
from pyro_vae.writes import write_failed

#: The files `draw_run_figures` writes (manifold.png only when z_dim = 2).
FIGURE_FILES = ("samples.png", "reconstructions.png", "latent.png", "interpolation.png", "manifold.png", "elbo.png")
INTERPOLATION_STEPS = 10
MANIFOLD_SIDE = 20


@torch.no_grad()
def latent_codes(model: LatentModel, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Central codes (`LatentModel.encode`) of images ``x [N, D]``: ``[N, z_dim]``."""
    return torch.cat([model.encode(xb) for xb in x.split(batch_size)])


@torch.no_grad()
def interpolate(model: LatentModel, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = INTERPOLATION_STEPS) -> torch.Tensor:
    """Decodings along straight lines between the codes of ``x_a [P, D]`` and ``x_b [P, D]``.

    Returns ``[P, steps + 2, D]``: per pair, x_a, E[x|z_t] for ``steps`` evenly
    spaced t from 0 to 1 (z_t = (1 - t) z_a + t z_b), then x_b.
    """
    z_a, z_b = model.encode(x_a), model.encode(x_b)
    t = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype)[:, None, None]
    path = (1 - t) * z_a + t * z_b  # [steps, P, z_dim]
    decoded = model.decode(path).transpose(0, 1)  # [P, steps, D]
    return torch.cat([x_a[:, None], decoded, x_b[:, None]], 1)


def prior_quantile_grid(side: int = MANIFOLD_SIDE) -> torch.Tensor:
    """Codes ``[side * side, 2]`` at the N(0, 1) quantiles (j + 0.5) / side, row-major with z2 falling down the rows."""
    q = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(side) + 0.5) / side)
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)


@torch.no_grad()
def manifold(model: LatentModel, side: int = MANIFOLD_SIDE) -> torch.Tensor:
    """Decodings ``[side * side, D]`` of `prior_quantile_grid` for a model with z_dim = 2."""
    if model.z_dim != 2:
        raise ConfigError(f"the latent manifold is drawn for z_dim = 2; this model has z_dim = {model.z_dim}")
    anchor = next(model.parameters())
    return model.decode(prior_quantile_grid(side).to(anchor))


def interpolation_pairs(labels: torch.Tensor | None, num_pairs: int, n: int) -> tuple[list[int], list[int]]:
    """Indices of ``num_pairs`` pairs among ``n`` images: with labels, each image paired with the next of another label."""
    starts = list(range(min(num_pairs, n)))
    if labels is None:
        return starts, [(i + num_pairs) % n for i in starts]
    labels = labels.tolist()
    ends = [next((j for j in range(i + 1, n) if labels[j] != labels[i]), (i + 1) % n) for i in starts]
    return starts, ends


def unit_scale(model: LatentModel, x: torch.Tensor) -> float:
    """The factor that takes ``model``'s images and means to [0, 1]: 1 / top for a likelihood over the integer
    levels 0..top (``likelihood.discrete_levels``); for a model of its own whose images ``x`` exceed 1, 1 / the
    top level of the smallest bit depth that holds them; else 1."""
    likelihood = getattr(model, "likelihood", None)
    if getattr(likelihood, "discrete_levels", False):
        return 1.0 / likelihood.top
    high = float(x.max()) if len(x) else 0.0
    return 1.0 if high <= 1 else 1.0 / (2 ** math.ceil(math.log2(high + 1)) - 1)


def draw_run_figures(model: LatentModel, x: torch.Tensor, labels: torch.Tensor | None,
                     history: Sequence[dict[str, float]], fig_dir: str | Path, *, seed: int = 0,
                     image_shape: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                     log: Callable[[str], None] = print) -> list[Path]:
    """Write `FIGURE_FILES` for ``model`` into ``fig_dir``; ``x [N, D]`` test images, ``labels [N]`` or None.

    Any model/guide pair of the contract (`models.base.LatentModel`) gets samples from its full prior and
    reconstructions (`inference.estimators.predictive`, from traces, where the model has no ``generate``/``reconstruct``);
    the latent map and interpolations need a central code (``encode`` and ``decode``), the manifold also
    ``z_dim == 2``: a figure a model cannot give is skipped (a stale one removed) with one ``log`` line.
    Images and decoder means are drawn scaled to [0, 1] (integer levels divided by the top level, `unit_scale`).
    The random draws use a forked RNG seeded by ``seed``: the caller's random stream is untouched. Image grids
    are drawn with ``image_shape`` (C, H, W), else the model's recorded shape (``model.config.image``), else a
    square one read from D; for images of no known shape only the latent map and the curves. Returns the
    paths written.
    """
    fig_dir = Path(fig_dir)
    written = []
    to_unit = unit_scale(model, x)
    was_training = model.training
    model.eval()
    shape = image_shape or getattr(getattr(model, "config", None), "image", None) \
        or figures.square_image_shape(x.shape[-1])
    drawable = shape is not None and math.prod(shape) == x.shape[-1]  # flat vectors of unknown shape: no grids
    has_code = all(callable(getattr(model, name, None)) for name in ("encode", "decode"))
    code_site = getattr(model, "code_site", "z")
    skipped = []
    if not drawable:
        skipped += ["samples.png", "reconstructions.png", "interpolation.png"]
    if not has_code:
        skipped += ["latent.png", "interpolation.png"]
        log("note: no latent map or interpolations: the model has no central code (encode and decode)")
    if not (has_code and drawable and getattr(model, "z_dim", None) == 2 and getattr(model, "standard_normal_code",
                                                                                     False)):
        skipped.append("manifold.png")  # a grid of N(0, 1) quantiles: for a 2-D code of prior N(0, I) only
    for name in skipped:  # a stale figure from another model would mislead
        (fig_dir / name).unlink(missing_ok=True)
    try:
        with forked_rng(x.device):
            torch.manual_seed(seed)
            if drawable:
                samples = (model.generate(64) if callable(getattr(model, "generate", None))
                           else predictive.prior_means(model.model, model.guide, x, 64))
                written.append(figures.save_image_grid(samples * to_unit, fig_dir / "samples.png", shape=shape))
                if callable(getattr(model, "reconstruct", None)):
                    recon = model.reconstruct(x[:32])
                else:
                    log("note: reconstructions at one draw of the guide (the model has no central code)")
                    recon = predictive.guide_reconstructions(model.model, model.guide, x[:32])
                written.append(figures.save_reconstructions(x[:32] * to_unit, recon * to_unit, fig_dir / "reconstructions.png", shape))
        if has_code:
            codes = latent_codes(model, x)
            written.append(figures.plot_latent(codes, labels, fig_dir / "latent.png",
                                               title=f"posterior means ({code_site})",
                                               names=class_names))
            if drawable:
                starts, ends = interpolation_pairs(labels, 8, len(x))
                rows = interpolate(model, x[starts], x[ends])
                written.append(figures.save_image_grid(rows.reshape(-1, rows.shape[-1]) * to_unit, fig_dir / "interpolation.png",
                                                       nrow=rows.shape[1], shape=shape))
        if "manifold.png" not in skipped:
            written.append(figures.save_image_grid(manifold(model) * to_unit, fig_dir / "manifold.png", nrow=MANIFOLD_SIDE,
                                                   shape=shape))
        if history:
            written.append(figures.plot_elbo_curve(history, fig_dir / "elbo.png"))
    finally:
        model.train(was_training)
    return written


def figures_for_run(source: str | Path, out: str | Path | None = None, test_limit: int | None = None,
                    device: str = "auto", data_dir: str | None = None, seed: int = 0) -> list[Path]:
    """Load the checkpoint at ``source`` (run folder or file) and its test images; draw `FIGURE_FILES`.

    ``out`` defaults to ``RUN_DIR/figures``. Data are downloaded only into a
    ``data_dir`` given here, never into one named by the (untrusted) checkpoint.
    Drawing holds the lock (`pyro_vae.run_lock`) of RUN_DIR when into ``RUN_DIR/figures``, else of ``out``:
    `FolderInUse` while another process writes there; `WriteFailed` naming a figure that cannot be written.
    """
    if test_limit is not None and test_limit < 1:
        raise ConfigError(f"--test-limit must be at least 1, got {test_limit}")
    path = checkpoint.resolve_path(source)
    fig_dir = Path(out) if out else path.parent / "figures"
    check_writable_dir(fig_dir, files=FIGURE_FILES)
    # Into RUN/figures: the run folder's lock (a training there draws them too); elsewhere: that folder's own.
    locked = path.parent if fig_dir.absolute() == (path.parent / "figures").absolute() else fig_dir
    check_free(locked)
    target = resolve_device(device)
    payload = checkpoint.read(path, map_location=target)
    model = checkpoint.build_model(payload).to(target)
    config = checkpoint.config_of(payload)
    history = checkpoint.history_of(payload)
    if config.dataset == "custom":
        raise DataError(f"{path} was trained on images handed over from Python; draw its figures from Python: "
                        "inference.figures.draw_run_figures(model, x, labels, history, fig_dir)")
    x, labels, image_shape, classes = evaluation_split(config.evaluation_data(data_dir, test_limit), target)
    x_dim = model.init_kwargs().get("x_dim")
    if x_dim is not None and x.shape[1] != x_dim:
        raise DataError(f"the checkpoint's model takes {x_dim} pixels per image, but the {config.dataset} test "
                        f"images have {x.shape[1]}; draw it with the data it was trained on")
    with run_lock(locked, "figures"):
        try:
            return draw_run_figures(model, x, labels, history, fig_dir, seed=seed, image_shape=image_shape,
                                    class_names=classes)
        except OSError as e:
            raise write_failed(e.filename or fig_dir, e, f"the figures written before it and {path} are kept",
                               "free space and draw them again") from None
