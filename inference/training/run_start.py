"""Where a training run starts: checked settings, data, model and optimiser, fresh or from a checkpoint.

`prepare` does every check and load `inference.svi.train` needs and writes
nothing, so a refused run leaves its folder as it was. On ``--resume`` it
restores the model, the Adam state, the position (epoch, step and that epoch's
running sums) and the RNG states; under ``torchrun`` each rank's own when the
checkpoint was written by as many processes, else a fresh per-rank seed from
the position (`pyro_vae.distributed.rank_seed`), so data order and
binarisation still continue exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine

from inference.training.optimizer import load_state, make_adam
from models import build_from_config
from models.base import LatentModel
from models.registry import check_rebuildable, checked_class, name_of
from pyro_vae import checkpoint, distributed
from pyro_vae.config import TrainConfig, is_finite_number
from pyro_vae.data import DataSplits, check_held_out, check_images, load_splits
from pyro_vae.agreement import failure_cause
from pyro_vae.device import check_fits, forked_rng
from pyro_vae.errors import CheckpointError, ConfigError, DataError, PyroVAEError
from pyro_vae.paths import check_writable_dir
from pyro_vae.schedule import adam_settings

#: Settings that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir", "out", "jit", "cuda_graph", "memory_budget", "workers")

def default_out() -> str:
    """``runs/<timestamp>``: the output folder of a run given no ``--out``."""
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


#: The files a run writes into its folder (besides figures/).
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")


def _check_adam_state(optim: torch.optim.Optimizer, path: Path) -> None:
    """`CheckpointError` unless the loaded Adam state has usable settings and moments shaped like the parameters."""
    for group in optim.param_groups:
        settings = [group.get(k) for k in ("lr", "eps", "weight_decay")] + list(group.get("betas") or [None])
        if len(settings) != 5 or not all(is_finite_number(v) and v >= 0 for v in settings):
            raise CheckpointError(f"{path} holds unusable optimiser settings (lr, betas, eps, weight decay)")
        for param in group["params"]:
            for key, value in optim.state.get(param, {}).items():
                if not isinstance(value, torch.Tensor) or (key != "step" and value.shape != param.shape) \
                        or not torch.isfinite(value).all():
                    raise CheckpointError(f"{path} holds a damaged optimiser state ({key})")


def _check_resumable(config: TrainConfig, saved: TrainConfig, path: Path) -> None:
    now, then = (_without_data_shape(c.to_dict()) for c in (config, saved))
    changed = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != then.get(k)]
    if changed:
        details = ", ".join(f"{k}: {then.get(k)!r} -> {now[k]!r}" for k in changed)
        raise CheckpointError(f"cannot resume {path} with different settings ({details}); only {', '.join(RESUMABLE_CHANGES)} may change")


def _without_data_shape(config: dict) -> dict:
    """``config`` less what `prepare` takes from the data: the model's pixel count and image shape, the
    held-out count and the bit depth (each checked against the data on its own)."""
    return {**{k: v for k, v in config.items() if k not in ("held_out_from", "bit_depth")},
            "model": {k: v for k, v in config["model"].items() if k not in ("x_dim", "image_shape")}}


def with_data_shape(config: TrainConfig, data: DataSplits) -> TrainConfig:
    """``config`` with its model's ``x_dim`` and ``image_shape`` those of ``data``'s images.

    1 x 28 x 28 is recorded as ``image_shape`` None, as before shapes were recorded (`ModelConfig.image`), so
    an MNIST run's model still equals its preset's.
    """
    shape = tuple(data.image_shape) if data.image_shape is not None else None
    x_dim = math.prod(shape) if shape else data.train.dim
    levels = {"bit_depth": config.bit_depth} if config.model.discrete_levels and config.bit_depth else {}
    return dataclasses.replace(config, model=dataclasses.replace(
        config.model, x_dim=x_dim, image_shape=None if shape in (None, (1, 28, 28)) else shape, **levels))


def with_bit_depth(config: TrainConfig, data: DataSplits) -> TrainConfig:
    """``config`` with ``bit_depth`` that of ``data``'s grey levels (8 for uint8; None for float images); a
    ``--bit-depth`` given that the files do not have is a `DataError`."""
    have = getattr(data.train, "bit_depth", None)
    if config.bit_depth is not None and config.bit_depth != have:
        held = f"{have}-bit levels" if have else "floats in [0, 1], with no levels"
        raise DataError(f"--bit-depth {config.bit_depth} does not match the data: {config.dataset} holds {held}; "
                        f"drop --bit-depth{f' or give {have}' if have else ''}")
    return dataclasses.replace(config, bit_depth=have)


def needs_binary_pixels(model: LatentModel) -> bool:
    """Whether ``model``'s likelihood is defined on 0/1 pixels only (Bernoulli on logits)."""
    return getattr(getattr(model, "likelihood", None), "binary_data", False)


def _check_data(model: LatentModel, data: DataSplits, binarize: str, encoding: str = "unit") -> None:
    x_dim = model.init_kwargs().get("x_dim", data.train.dim)
    for split, width in (("training", data.train.dim), ("test", data.test.shape[1])):
        if width != x_dim:
            raise DataError(f"the model takes {x_dim} pixels per image but the {split} images have {width}; "
                            "set x_dim to match, or check the data files")
    likelihood = getattr(model, "likelihood", None)
    served = getattr(data.train, "encoding", "unit")
    if getattr(likelihood, "discrete_levels", False):
        name = model.init_kwargs().get("likelihood", type(likelihood).__name__)
        if binarize != "none":
            raise DataError(f"the {name} likelihood is a pmf over grey levels, but --binarize {binarize} makes the "
                            "pixels 0/1; use --binarize none, or the bernoulli likelihood")
        if served != "levels":
            raise DataError(f"the {name} likelihood takes integer grey levels 0..{likelihood.top}, but the images are "
                            f"served as {'floats in [0, 1]' if served == 'unit' else served}; serve the levels "
                            "(encoding='levels', e.g. DataSplits.from_arrays(..., binarize='none', encoding='levels'))")
        check_images(data.test, top=likelihood.top, likelihood=name)
    elif (served == "dequantized") != (encoding == "dequantized"):  # the report must know how u was drawn
        raise DataError(f"the run's config says --dequantize {'uniform' if encoding == 'dequantized' else 'none'} "
                        f"but the data given are served {served}; build the splits with encoding={encoding!r}, or "
                        "set TrainConfig(dequantize=...) to match")
    if needs_binary_pixels(model) and not data.train.is_binary():
        raise DataError(
            f"the {type(model.likelihood).__name__} likelihood needs binary pixels, but --binarize {binarize} serves "
            "grey levels; use --binarize dynamic or static, or a likelihood for continuous data"
        )


def _check_scores(model: LatentModel, data: DataSplits, binarize: str) -> None:
    """`DataError` in one line unless ``model`` scores the images served: its guide and model run once on two
    test images and log p(x, z) is computed, as the first step would. A likelihood that cannot take the pixels
    (grey levels under a Bernoulli of a model of one's own) is refused here, before anything is written, not in
    a traceback at the first step. Under a forked RNG: the training stream is untouched."""
    x = data.test[:2]
    try:
        with torch.no_grad(), forked_rng(x.device):
            guide_trace = poutine.trace(model.guide).get_trace(x)
            poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x).compute_log_prob()
    except (ValueError, RuntimeError, TypeError) as e:
        if isinstance(e, PyroVAEError):
            raise
        root = e
        while root.__cause__ is not None:  # Pyro wraps the distribution's error in one naming the site
            root = root.__cause__
        cause = failure_cause(root) if root is e else f"{str(e).strip().splitlines()[0].rstrip(':')}: {failure_cause(root)}"
        raise DataError(f"the model cannot score the images served with --binarize {binarize}: {cause}; "
                        "serve what its likelihood takes (--binarize dynamic: 0/1 pixels; none: grey levels) or "
                        "change the model") from None


@dataclass
class Start:
    """Where training starts: ``epoch`` epochs done, ``step`` steps into the next, with its running sums."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "images": 0, "seconds": 0.0})
    note: str | None = None  # a line for the log: the start asked for was not the model's (`initialise`)


#: Training images whose mean pixel starts p(x|z) under ``init="burda2015"`` (the first ones, in file order).
MEAN_PIXEL_IMAGES = 10_000


def mean_training_pixels(train, limit: int = MEAN_PIXEL_IMAGES) -> torch.Tensor:
    """The mean served pixel ``[D]`` (float32) over the first ``limit`` training images, in file order: for a
    dynamic binarisation, its draws at epoch 0 (an estimate of P(pixel = 1) within 0.005). Works on any split
    that serves ``batches(size, epoch, step, shuffle=False)``, held or streamed, and the same for both."""
    total, count = None, 0
    for batch in train.batches(1000, 0, 0, shuffle=False):
        total = batch.double().sum(0) if total is None else total + batch.double().sum(0)
        count += len(batch)
        if count >= limit:
            break
    return (total / count).float()


def initialise(model: LatentModel, config: TrainConfig, data: DataSplits) -> str | None:
    """Start a fresh run's parameters as ``config.init`` says (`pyro_vae.config.INITS`); draws from torch's RNG.

    ``burda2015`` calls the model's optional ``initialise_burda2015(mean_pixels)`` with `mean_training_pixels`
    ``[D]``; a model without it, or one it does not apply to (the conv nets), keeps its own start, and the line
    returned says so. None when the start is the one asked for.
    """
    if config.init != "burda2015":
        return None
    start = getattr(model, "initialise_burda2015", None)
    if start is not None and start(mean_training_pixels(data.train).to(next(model.parameters()).device)):
        return None
    return (f"init burda2015: the {type(model).__name__} {'has no initialise_burda2015' if start is None else 'keeps its own start here'}"
            "; it starts as built (--init as-built says so and silences this line)")


def prepare(config: TrainConfig, resume: bool, data: DataSplits | None, model: LatentModel | None,
             device: torch.device, group: distributed.Group
             ) -> tuple[TrainConfig, DataSplits, LatentModel, torch.optim.Optimizer, Start]:
    """Check and load everything `train` needs, writing nothing: config, data, model, optimiser, start position.

    Seeds the RNGs: ``config.seed`` while the model is built (the same initial
    parameters on every rank), then each rank's own noise (`distributed.rank_seed`);
    on resume, the checkpoint's states (each rank's own when the number of
    processes is the one it was written with).
    """
    out_dir = Path(config.out or default_out())
    config = dataclasses.replace(config, out=str(out_dir))
    ckpt_path = out_dir / "checkpoint.pt"
    check_writable_dir(out_dir, files=RUN_FILES, folders=("figures",))
    if model is not None:
        name_of(model)  # an unregistered class could not be rebuilt from its checkpoint: say so now
    elif not resume and config.model.own_model:  # a name or arguments that cannot build: say so before the data
        checked_class(config.model.family, dict(config.model.model_args or {}))
    if resume:
        saved = checkpoint.read(ckpt_path, map_location=device)
        saved_config = checkpoint.config_of(saved)
        # How the run started, and the record of what was chosen for it, are the checkpoint's: a resume changes
        # neither (a run saved before `init` existed started as built, whatever today's default is).
        config = dataclasses.replace(config, init=saved_config.init, defaults=saved_config.defaults)
        _check_resumable(config, saved_config, ckpt_path)
        checkpoint.check_resume_state(saved)
        stored = checkpoint.build_model(saved)  # a registered class, checked arguments, finite parameters
        if model is not None and type(model) is not type(stored):
            raise CheckpointError(f"{ckpt_path} holds a {name_of(stored)!r} model, not the {name_of(model)!r} given")
        model = model or stored
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} already exists; pass --resume to continue that run, or choose another --out")

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    if data is None:
        data = load_splits(config.data_spec(), device)
        if resume:
            check_held_out(data.held_out_from, saved_config.held_out_from, config.dataset)
        config = dataclasses.replace(config, held_out_from=data.held_out_from)
    else:
        data = data.to(device)
        if data.source != config.dataset:  # record what was really trained on; evaluate will not guess
            config = dataclasses.replace(config, dataset=data.source)
    config = with_bit_depth(config, data)
    if model is None:
        config = with_data_shape(config, data)  # the data say how many pixels, and of what shape
        check_fits(lambda: build_from_config(config.model), device, "the model",
                   "give smaller sizes in --model-args" if config.model.own_model else
                   "use smaller --hidden-dims or --latent-dim")
        model = build_from_config(config.model)
    model = model.to(device)
    if not resume:
        check_rebuildable(model)  # a run that could not be resumed or evaluated is refused before it trains
    _check_data(model, data, config.binarize, config.encoding)
    _check_scores(model, data, config.binarize)
    if group.world_size > 1 and config.batch_size < group.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch, split across {group.world_size} "
                          f"processes; use at least {group.world_size}")
    note = None if resume else initialise(model, config, data)  # under config.seed: the same start on every rank
    optim = make_adam(model.parameters(), device, config.lr, **adam_settings(config.schedule))
    if not resume:
        if group.rank > 0:
            pyro.set_rng_seed(distributed.rank_seed(config.seed, group.rank))
        return config, data, model, optim, Start(note=note)
    try:
        if model is not stored:  # a model handed in; the stored one already holds its parameters
            model.load_state_dict(saved["model_state"])
        load_state(optim, saved["optim_state"])  # this machine's Adam kernel; a graphed run's state made plain
    except Exception as e:  # noqa: BLE001 - torch raises many types for a state that does not fit
        raise CheckpointError(f"{ckpt_path} does not fit this model or optimiser: {' '.join(str(e).split())[:200]}") from None
    _check_adam_state(optim, ckpt_path)
    start = Start(saved["epoch"], saved["step"], saved["history"], saved.get("partial") or Start().partial)
    by_rank = saved.get("rng_states_by_rank") or [saved["rng_state"]]
    if len(by_rank) == group.world_size:
        checkpoint.set_rng_state(by_rank[group.rank])
    elif group.rank == 0:
        checkpoint.set_rng_state(saved["rng_state"])
    else:  # written by another number of processes: this rank's noise starts afresh, from its position
        pyro.set_rng_seed(distributed.rank_seed(config.seed, group.rank, start.epoch, start.step))
    if start.step > data.train.num_batches(config.batch_size):
        raise CheckpointError(f"{ckpt_path} stopped at step {start.step} of epoch {start.epoch + 1}, but an epoch "
                              f"here has {data.train.num_batches(config.batch_size)} steps")
    return config, data, model, optim, start


# --- command line -------------------------------------------------------------------
