r"""Train a VAE by stochastic variational inference: ``python -m inference.svi``.

Each step draws a batch of B images and takes one Adam step on the negative
ELBO summed over the batch,

    loss(x_1..B) = - sum_i E_{q(z|x_i)}[log p(x_i, z) - log q(z|x_i)],

estimated by Pyro's ``Trace_ELBO`` (reparameterised samples) or
``TraceMeanField_ELBO`` (the KL term in closed form), or the tighter IWAE bound
``E[log (1/k) sum_j w_j] <= log p(x)`` by ``RenyiELBO(alpha=0)`` with k
vectorised particles (Burda et al. 2015); ``--gradient`` picks the gradient
estimator (sticking the landing, DReG). Objectives and estimators live in
`inference.objectives`. ``--kl-weight`` beta and ``--kl-warmup`` scale the
latent site (see ``models.base``); ``--schedule burda2015`` sets Adam's rate per epoch by Burda et al.'s
protocol (`pyro_vae.schedule`). Reported ELBOs are nats per image and
negative: a lower bound on log p(x), higher is better.

A step is what ``pyro.infer.SVI.step`` does, written out (`inference.step`): the
objective's ``differentiable_loss``, ``backward``, and one ``torch.optim.Adam``
over the model's parameters (``pyro.optim`` keeps an optimiser per tensor;
dropping it sped up large batches, BENCHMARKS.md). By default the loss is
JIT-compiled where Pyro can and `check_compiled` finds the compiled loss and
gradients equal to the plain ones (`inference.step.build_step`): that removes Pyro's Python
from each step, most of its cost over hand-written PyTorch. On CUDA the whole step is then
captured in a CUDA graph where a replay checks out (`inference.cuda_graph`).

A run writes into ``OUT``: ``config.json``, ``metrics.jsonl`` (one line per
epoch, added once that epoch's checkpoint is in place), ``checkpoint.pt`` (every
epoch, atomically) and ``figures/``, holding ``OUT/.lock`` (`pyro_vae.run_lock`)
all the while: a second run into the same ``OUT`` is refused. Under
``torchrun --nproc_per_node N -m inference.svi`` the N processes split each
global batch of ``--batch-size`` images (`inference.data_parallel`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from inference.evaluate import EvaluateConfig, evaluate, render_markdown
from inference.figures import draw_run_figures
from inference.objectives import ELBO_NAMES, GRADIENTS
from inference.active_units import EPOCH_DRAWS, EPOCH_IMAGES, active_units, collapse_warning, collapsed_sites
from inference.rate_distortion import rate_distortion
from inference.run_start import RESUMABLE_CHANGES, default_out, prepare
from inference.cuda_graph import CudaGraphStep
from inference.step import build_step, objective_for
from inference.predictive import observation_is_discrete
from inference.stopping import Interrupted, StopRequest, interrupt_on_signals
from models.base import LatentModel
from models.guides import GUIDES
from models.likelihoods import LIKELIHOODS
from pyro_vae import checkpoint, distributed
from pyro_vae.cli import ArgumentParser, error, exit_status, latent_sizes, layer_widths, positive_int
from pyro_vae.config import (DEFAULT_MIXTURE_COMPONENTS, DEFAULT_PRESET, DEFAULT_PSEUDO_INPUTS, DEQUANTIZE_CHOICES,
                             DEQUANTIZED_LIKELIHOOD, FAMILIES, INITS, LEVELS_LIKELIHOOD, PRESETS, PRIORS, TrainConfig,
                             default_activation, defaults_line, resolve_defaults)
from pyro_vae.data import BINARIZE_CHOICES, DATASETS, DataSplits
from pyro_vae.device import DEVICE_CHOICES
from pyro_vae.errors import CheckpointError, ConfigError, DataError, PyroVAEError, TrainingDiverged
from pyro_vae.nets import ACTIVATIONS, ARCHITECTURES
from pyro_vae.run_lock import RunLock, check_free
from pyro_vae.writes import append_line, reason, write_failed, write_text_atomic
from pyro_vae.schedule import BURDA2015_BATCH_SIZE, SCHEDULES, learning_rate, set_learning_rate, total_epochs
from pyro_vae.sources import parse_spec




#: Kept for scripts that read them here; the defaults policy is `pyro_vae.config`'s.
COLOUR_LIKELIHOOD = LEVELS_LIKELIHOOD
LEVELS_ACTIVATION = default_activation(LEVELS_LIKELIHOOD, "standard")[0]


class _LossWindow:
    """Per-step losses kept on the device, read in one transfer every `EVERY` steps."""

    EVERY = 20

    def __init__(self, first_step: int):
        self.first_step, self.losses = first_step, []

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def flush(self, next_step: int) -> tuple[float, int | None, float | None]:
        """``(sum, first non-finite step or None, its loss)``; the window restarts at ``next_step``."""
        values = torch.stack(self.losses).double().cpu()
        first = self.first_step
        self.first_step, self.losses = next_step, []
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            return float("nan"), first + int(bad[0]), float(values[bad[0]])
        return float(values.sum()), None, None


def kl_weight_at(config: TrainConfig, epoch: int, step: int, num_batches: int) -> float:
    """beta for the step ``step`` of epoch ``epoch`` (0-based): linear warm-up over ``kl_warmup`` epochs."""
    if config.kl_warmup <= 0:
        return config.kl_weight
    return config.kl_weight * min(1.0, (epoch + (step + 1) / num_batches) / config.kl_warmup)


def epoch_metrics(model: LatentModel, x: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test ELBO, rate and distortion: means over images ``x [N, D]`` of one-sample estimates, nats per image; and
    per latent site its share of the rate and its active units.

    Keys ``test_elbo``, ``test_rate`` (KL(q(z|x) || p(z))) and ``test_distortion``
    (-log p(x|z)); ``test_elbo = -(test_rate + test_distortion)``; ``sites``: ``{site: {"rate", "active_units",
    "units"}}``, the rate over ``x`` and Burda et al.'s active units (`inference.active_units`) over its first
    `EPOCH_IMAGES` images with `EPOCH_DRAWS` guide draws each. Runs under forked RNGs seeded by ``seed``
    (`inference.rate_distortion`), so it neither disturbs training randomness nor changes its noise from one
    epoch to the next.
    """
    terms = rate_distortion(model.model, model.guide, x, seed=seed, batch_size=batch_size)
    rate, distortion = terms.rate.mean().item(), terms.distortion.mean().item()
    activity = active_units(model.model, model.guide, x[:EPOCH_IMAGES], num_draws=EPOCH_DRAWS, seed=seed)
    sites = {name: {"rate": terms.site_rates[name].mean().item(), "active_units": activity[name].active,
                    "units": activity[name].units} for name in terms.site_rates}
    return {"test_elbo": -(rate + distortion), "test_rate": rate, "test_distortion": distortion, "sites": sites}


def evaluate_elbo(model: LatentModel, x: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> float:
    """Mean single-sample ELBO over images ``x [N, D]``, nats per image (the ``test_elbo`` of `epoch_metrics`)."""
    terms = rate_distortion(model.model, model.guide, x, seed=seed, batch_size=batch_size)
    return -(terms.rate.mean().item() + terms.distortion.mean().item())


@dataclass
class TrainResult:
    """What `train` leaves: the trained model, its metric history and where it wrote."""

    model: LatentModel
    config: TrainConfig
    history: list[dict[str, float]]
    out_dir: Path
    interrupted: bool = False
    position: tuple[int, int] = (0, 0)  # (epochs completed, steps into the next)
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)
    data: DataSplits | None = field(default=None, repr=False)
    compiled: bool = False  # whether the steps ran a JIT-compiled loss (see `build_step`)
    graphed: bool = False  # whether they were replays of a CUDA graph (`inference.cuda_graph`)

    @property
    def exit_status(self) -> int:
        """0, or 128 + the signal number after an interruption (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.stop_signal if self.stop_signal is not None else 0



def train(config: TrainConfig, resume: bool = False, progress: bool = True, data: DataSplits | None = None,
          model: LatentModel | None = None, elbo_chosen: bool = False) -> TrainResult:
    """Train ``models.build_from_config(config.model)`` (or ``model``) by SVI for ``config.epochs`` epochs; write into ``config.out``.

    Fields of ``config`` left None are chosen by the defaults policy (`pyro_vae.config.resolve_defaults`), said
    in one line at the start and recorded in ``config.json``; the command line goes through the same policy.

    ``resume`` continues from ``OUT/checkpoint.pt`` (to ``config.epochs`` in
    total); a fresh run refuses an ``OUT`` that already holds a checkpoint.
    ``data`` replaces loading from ``config.dataset`` (e.g. your own tensors
    via `pyro_vae.images.Images`). ``model``: your own `models.base.LatentModel`
    (a variant); its class must be registered (`models.register_model`) for
    the checkpoint to rebuild it. Ctrl-C or SIGTERM checkpoints the current
    step and returns with ``interrupted=True``; a NaN/inf loss raises
    `TrainingDiverged` and leaves the last good checkpoint as it was. Bad
    settings, data or output folders are refused before anything is written, and so is an ``OUT``
    another process is writing (`pyro_vae.errors.FolderInUse`; rank 0 holds ``OUT``'s lock,
    `pyro_vae.run_lock`). A file that cannot be written (no space, quota, I/O error) raises
    `pyro_vae.errors.WriteFailed` naming it and what was kept; a figure that cannot be is a warning.

    Under ``torchrun`` every process calls this: each takes a slice of every
    global batch of ``config.batch_size`` images (`inference.data_parallel`),
    draws its own Monte Carlo noise, and all stop together (a signal, a NaN or
    an error on any rank); rank 0 alone writes files and logs.

    ``config.elbo`` ``meanfield`` (the default) where ``TraceMeanField_ELBO`` does not estimate the
    model's ELBO (a guide drawing a site from one that the model draws it from: `inference.step.objective_for`)
    trains ``trace``, says so in one line and records ``trace`` in the run's config; with ``elbo_chosen``
    (``--elbo meanfield`` on the command line) it is a `ConfigError` instead.
    """
    channels = data.image_shape[0] if data is not None and data.image_shape else None
    config = resolve_defaults(config, channels).validated()  # the one defaults policy, as from the command line
    group, device = distributed.setup(config.device)
    lock = None
    try:
        with distributed.together("before training"):
            if group.is_main and config.out:
                check_free(config.out)  # another run writing there: say so before loading anything
            seen = _file_state(Path(config.out or default_out()) / "checkpoint.pt")
            config, data, model, optim, start = prepare(config, resume, data, model, device, group)
            log = (tqdm.write if progress else print) if group.is_main else _silent
            for line in (defaults_line(config), start.note) if not resume else ():
                if line:
                    log(line)
            probe = data.test[: config.batch_size]
            config = objective_for(model, config, probe, log, chosen=elbo_chosen)  # the run records what it trains
            step_fn, compiled = build_step(model, config, optim, probe=probe, log=log, group=group)
            if group.is_main:  # the one writer: everything from here on is written under OUT's lock
                lock = RunLock(config.out, "training").acquire()
                _start_writing(config, start, resume, seen)
        return _train(config, resume, progress, data, model, optim, start, step_fn, compiled, group, device, log)
    finally:
        if lock is not None:
            lock.release()


def _file_state(path: Path) -> tuple | None:
    """What tells whether ``path`` was replaced: (inode, size, mtime), or None when there is no file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def resume_command(out: Path | str) -> str:
    """The command line that resumes the run in ``out`` (under torchrun: as many processes)."""
    launcher = (f"torchrun --nproc_per_node {distributed.current().world_size} -m inference.svi"
                if distributed.launched_by_torchrun() else "python -m inference.svi")
    return f"{launcher} --resume --out {shlex.quote(str(out))}"


def _start_writing(config: TrainConfig, start, resume: bool, seen: tuple | None) -> None:
    """Under OUT's lock: check that no other run wrote the checkpoint since `prepare` looked, then write
    ``config.json`` and ``metrics.jsonl`` (on resume, rewritten from the checkpoint's history), each whole or not at all."""
    out_dir = Path(config.out)
    ckpt_path = out_dir / "checkpoint.pt"
    if _file_state(ckpt_path) != seen:  # another run, now finished, wrote it while this one was starting
        raise CheckpointError(f"{ckpt_path} was written by another run while this one was starting; "
                              + ("resume again to continue from it" if resume else
                                 "pass --resume to continue that run, or choose another --out"))
    kept = f"the checkpoint of epoch {start.epoch} is kept" if resume else "nothing was trained"
    fix = (f"free space and resume with: {resume_command(out_dir)}" if resume
           else "free space or choose another --out, and start again")
    for name, text in (("config.json", json.dumps(config.to_dict(), indent=2) + "\n"),
                       ("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in start.history))):
        try:
            write_text_atomic(out_dir / name, text)
        except OSError as e:
            raise write_failed(out_dir / name, e, kept, fix) from None


def _train(config, resume, progress, data, model, optim, start, step_fn, compiled, group, device, log) -> TrainResult:
    """The epochs of `train`, once everything is checked and OUT is locked (rank 0)."""
    progress = progress and group.is_main
    out_dir = Path(config.out)
    ckpt_path = out_dir / "checkpoint.pt"
    parallel = group.world_size > 1
    start_epoch, start_step, history, partial = start.epoch, start.step, start.history, start.partial

    saved = (start.epoch, start.step) if resume else None  # what the checkpoint on disk holds

    def kept(note: str = "") -> str:
        if saved is None:
            return f"no checkpoint was written{note}; free space and start again with the same command"
        where = f"of epoch {saved[0]}" if not saved[1] else f"at step {saved[1]} of epoch {saved[0] + 1}"
        return f"the checkpoint {where} is kept{note}; free space and resume with: {resume_command(out_dir)}"

    def save(epoch: int, step: int, partial: dict | None = None, record: dict | None = None) -> None:
        """Checkpoint, then (``record``) the epoch's metrics line: the folder never claims more than the checkpoint
        holds. A write error is `WriteFailed` on rank 0 (naming the file), `PeerFailed` on the others."""
        nonlocal saved
        rng_states = distributed.all_gather(checkpoint.rng_state())  # every rank's noise, for an exact resume
        with distributed.together(f"writing the checkpoint of epoch {epoch + (1 if step else 0)}"):
            if group.is_main:
                try:
                    checkpoint.save(ckpt_path, model, config, optim.state_dict(), epoch, step, history,
                                    partial=partial, rng_states=rng_states)
                except OSError as e:
                    raise write_failed(ckpt_path, e, kept()) from None
                saved = (epoch, step)
                if record is not None:
                    try:
                        append_line(out_dir / "metrics.jsonl", json.dumps(record))
                    except OSError as e:
                        raise write_failed(out_dir / "metrics.jsonl", e,
                                           kept(" (a resume rewrites metrics.jsonl from it)")) from None

    def diverged(epoch: int, step: int, loss: float) -> TrainingDiverged:
        kept = (f"the last good checkpoint ({ckpt_path}, epoch {history[-1]['epoch']}) is kept" if history
                else "no checkpoint was written")
        return TrainingDiverged(f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; training stopped and "
                                f"{kept}. Try a smaller --lr.", epoch + 1, step + 1)

    def agreed_signal(signum: int | None, epoch: int, step: int) -> int | None:
        """The stop signal of any rank (all ranks call this after the same step); this one's in one process."""
        if not parallel:
            return signum
        return step_fn.agree(signum or 0, f"at epoch {epoch + 1}, step {step}") or None

    meaning = ("negative: a lower bound on log p(x), higher is better"
               if observation_is_discrete(model.model, model.guide, data.test[:1])
               else "a lower bound on the log-density of x, higher is better")
    num_batches = data.train.num_batches(config.batch_size)
    # A JIT loss takes the KL weight as a tensor input; refill one in place rather than copy a new one each step.
    kl_input = torch.ones((), device=device) if compiled else None
    interrupted, stop_signal = False, None
    warned: set[str] = set()  # latent sites already named as collapsed in this run
    with StopRequest(abort_on_repeat=not parallel) as stop:
        for epoch in range(start_epoch, config.epochs):
            set_learning_rate(optim, learning_rate(config.schedule, config.lr, epoch))  # a function of the epoch alone
            loss_sum, images, seconds = partial["loss"], partial["images"], partial["seconds"]
            window = _LossWindow(start_step)
            t0 = time.perf_counter()
            bar = tqdm(total=num_batches, initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not progress, leave=False, dynamic_ncols=True)
            for step, x in enumerate(data.train.batches(config.batch_size, epoch, start_step), start=start_step):
                beta = kl_weight_at(config, epoch, step, num_batches)
                window.add(step_fn(x, beta if kl_input is None else kl_input.fill_(beta)))
                images += len(x)
                bar.update()
                last = step == num_batches - 1
                if (step + 1) % _LossWindow.EVERY == 0 or last or (stop.requested and not parallel):
                    total, bad_step, bad_loss = window.flush(step + 1)
                    stop_signal = agreed_signal(stop.signum, epoch, step + 1)  # raises if any rank failed
                    if bad_step is not None:  # the losses are the global batch's: every rank sees the same NaN
                        bar.close()
                        raise diverged(epoch, bad_step, bad_loss)
                    loss_sum += total
                    bar.set_postfix(loss=f"{loss_sum / images:.2f}", refresh=False)
                if stop_signal is not None:
                    seconds += time.perf_counter() - t0
                    save(epoch, step + 1, {"loss": loss_sum, "images": images, "seconds": seconds})
                    bar.close()
                    interrupted, start_epoch, start_step = True, epoch, step + 1
                    break
            if interrupted:
                break
            bar.close()
            seconds += time.perf_counter() - t0
            record = {"epoch": epoch + 1, "train_elbo": -loss_sum / images,
                      **epoch_metrics(model, data.test, seed=config.test_seed), "seconds": seconds}
            history.append(record)
            save(epoch + 1, 0, record=record)  # the checkpoint first, then its line in metrics.jsonl
            log(f"epoch {epoch + 1}/{config.epochs}  train ELBO {record['train_elbo']:.2f}  "
                f"test ELBO {record['test_elbo']:.2f} nats/image ({meaning})  {seconds:.1f} s")
            if epoch + 1 >= max(1.0, config.kl_warmup):  # warm-up over and a full epoch run: a collapse is named
                for site in collapsed_sites(record["sites"]):
                    if site not in warned:
                        warned.add(site)
                        log(collapse_warning(site, record["sites"][site]["units"], f"after epoch {epoch + 1}"))
            start_step, partial = 0, {"loss": 0.0, "images": 0, "seconds": 0.0}
            start_epoch = epoch + 1
        if not interrupted:  # a signal after the last step: training is complete, but it was asked to stop
            stop_signal = agreed_signal(stop.signum, start_epoch - 1, num_batches)
    if group.is_main:
        try:
            draw_run_figures(model, data.test, data.test_labels, history, out_dir / "figures", config.test_seed,
                             class_names=data.classes)
        except OSError as e:  # the run itself is done and checkpointed: a figure is not worth failing it for
            print(f"warning: could not write {e.filename or out_dir / 'figures'} ({reason(e)}); training is "
                  f"complete and {ckpt_path} holds it; draw the figures later with: python -m inference.figures "
                  f"{shlex.quote(str(out_dir))}", file=sys.stderr)
    return TrainResult(model, config, history, out_dir, interrupted, (start_epoch, start_step), stop_signal, data,
                       compiled, isinstance(step_fn, CudaGraphStep))


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0: they train in step with rank 0, which reports."""



def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden-dims takes comma-separated integers like 200,200, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--hidden-dims needs at least one positive width, got {text!r}")
    return dims


def _dataset(text: str) -> str:
    """A ``--dataset`` spec, its PATH made absolute (the report and figures read it again from elsewhere)."""
    try:
        kind, path = parse_spec(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text if path is None else f"{kind}:{path.resolve()}"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m inference.svi`` parser. Every default is None: unset flags keep
    the preset's (or, with --resume, the checkpoint's) value."""
    p = ArgumentParser(prog="python -m inference.svi", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig()
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help=f"published setup (default {DEFAULT_PRESET})")
    m.add_argument("--latent-dim", type=positive_int, help=f"size of z, vae family (default {d.model.z_dim})")
    m.add_argument("--hidden-dims", type=_dims, help="hidden widths, encoder order, vae family, e.g. 200,200")
    m.add_argument("--activation", choices=sorted(ACTIVATIONS),
                   help="default tanh; relu under a discrete likelihood (pyro_vae.config's policy)")
    m.add_argument("--arch", choices=ARCHITECTURES, help="mlp (default, any image size) or conv (square images, even side of at least 8)")
    m.add_argument("--likelihood", choices=list(LIKELIHOODS),
                   help="p(x|z): bernoulli (default for binarised grey images); the others train on grey levels "
                        "(--binarize none by default): discretized-logistic (default for colour and --binarize none) "
                        "and beta-binomial are pmfs over the integer levels 0..2^b - 1, the others densities on [0, 1]")
    m.add_argument("--mixture-components", type=positive_int, metavar="K",
                   help=f"logistics per pixel of --likelihood discretized-logistic (default {DEFAULT_MIXTURE_COMPONENTS}; "
                        "1: the plain discretized logistic); implies that likelihood when --likelihood is not given")
    m.add_argument("--obs-scale", type=float, help="standard deviation sqrt(c) of the gaussian likelihood (default 1)")
    m.add_argument("--guide", choices=list(GUIDES), help="q(z|x): diagonal (default), full (scale_tril), iaf")
    m.add_argument("--flow-steps", type=positive_int, help="IAF transforms of --guide iaf (default 2)")
    m.add_argument("--family", choices=FAMILIES,
                   help="vae: one latent layer (default); hierarchical: L stochastic layers (Burda et al. 2015), "
                        "sized by --latent-dims and --layer-hidden-dims (--preset burda2015-2layer sets both)")
    m.add_argument("--latent-dims", type=latent_sizes, metavar="D1,D2,...",
                   help="hierarchical family: sizes of z1 (nearest the data) .. zL, e.g. 100,50")
    m.add_argument("--layer-hidden-dims", type=layer_widths, metavar="W,W/W,W",
                   help="hierarchical family: each layer's hidden widths, layers split by '/', z1's first, e.g. "
                        "200,200/100,100")
    m.add_argument("--prior", choices=PRIORS,
                   help="p(z) (the top layer's in the hierarchical family): standard N(0, I) (default), or vamp, "
                        "the VampPrior (1/K) sum_k q(z|u_k) over K learned pseudo-inputs (Tomczak & Welling 2018)")
    m.add_argument("--pseudo-inputs", type=positive_int, metavar="K",
                   help=f"pseudo-inputs of --prior vamp (default {DEFAULT_PSEUDO_INPUTS})")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, help=f"total epochs (default {d.epochs})")
    t.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    t.add_argument("--lr", type=float, help=f"Adam step size; the base rate of --schedule (default {d.lr})")
    t.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning rate per epoch. constant: --lr throughout (default). burda2015: Burda et al. 2015's "
                        f"protocol, 3^i epochs at --lr * 10^(-i/7) for i = 0..7, {total_epochs('burda2015'):,} epochs in "
                        f"all (its default --epochs), base --lr 0.001, Adam betas (0.9, 0.999) and eps 1e-4. The "
                        f"paper's batch is {BURDA2015_BATCH_SIZE}: pass --batch-size {BURDA2015_BATCH_SIZE} for it (the "
                        "schedule does not change the batch size)")
    t.add_argument("--elbo", choices=ELBO_NAMES,
                   help=f"trace: Trace_ELBO; meanfield: TraceMeanField_ELBO, the KL in closed form (where it is "
                        f"not the ELBO, a guide drawing a site from one the model draws it from, the default trains "
                        f"trace with a note, and --elbo meanfield is refused); iwae: RenyiELBO(alpha=0) "
                        f"(default {d.elbo})")
    t.add_argument("--gradient", choices=GRADIENTS,
                   help="gradient estimator: standard (default); stl, sticking the landing (--elbo trace); "
                        "dreg, doubly reparameterised (--elbo iwae)")
    t.add_argument("--num-particles", type=positive_int, metavar="K", help="samples per datapoint, vectorised (k of iwae)")
    t.add_argument("--kl-weight", type=float, help="beta: weight of the KL term (default 1)")
    t.add_argument("--kl-warmup", type=float, metavar="EPOCHS", help="raise the KL weight linearly from 0 over EPOCHS")
    t.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="JIT-compile the loss (trace, meanfield). Default: compiled when Pyro can and the compiled loss "
                        "matches the plain one on a probe batch, else plain; --jit insists, --no-jit never compiles")
    t.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the compiled step (loss, backward, Adam) in a CUDA graph. Default: on CUDA, in one "
                        "process, when a replay matches the plain step on a probe batch, else uncaptured; never on "
                        "the CPU. --cuda-graph insists, --no-cuda-graph never captures")
    t.add_argument("--init", choices=INITS,
                   help="how the parameters start: burda2015, Glorot-uniform weights, zero biases and p(x|z) at the "
                        "training images' mean pixel (Burda et al. 2015's code; the default under the bernoulli "
                        "likelihood); as-built, the networks' own initialisation (the default under the others)")
    t.add_argument("--seed", type=int, help=f"training seed (default {d.seed})")
    dd = p.add_argument_group("data")
    dd.add_argument("--dataset", type=_dataset, metavar="|".join([*DATASETS, "folder:PATH", "array:PATH"]),
                    help=f"MNIST-family set, a folder of images (flat or one sub-folder per class), or a .npy/.npz "
                         f"array (default {d.dataset})")
    dd.add_argument("--image-size", type=positive_int, metavar="S",
                    help="resize (shorter side) and centre-crop every image to S x S (default: the files' own size)")
    dd.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (colour); default: the files'")
    dd.add_argument("--channels-first", action="store_true", default=None,
                    help="the array is [N, C, H, W] (default [N, H, W] or [N, H, W, C])")
    dd.add_argument("--test-fraction", type=float, metavar="F",
                    help=f"share held out as the test split when the source has none (default {d.test_fraction})")
    dd.add_argument("--split-seed", type=int, help=f"seed of that held-out split (default {d.split_seed})")
    dd.add_argument("--memory-budget", type=float, metavar="GB",
                    help="a folder whose images take more is streamed from its files (default: half the free "
                         "memory of the device or the host, whichever is less)")
    dd.add_argument("--workers", type=int, help=f"processes decoding a streamed folder (default {d.workers})")
    dd.add_argument("--binarize", choices=BINARIZE_CHOICES,
                    help="default dynamic under the bernoulli likelihood, none under the others")
    dd.add_argument("--dequantize", choices=DEQUANTIZE_CHOICES,
                    help="uniform: train a continuous likelihood on (x + u) / 2^b, u ~ U[0, 1)^D fresh every batch; "
                         "the report then bounds log P(x) of the discrete image (default none; implies "
                         f"--likelihood {DEQUANTIZED_LIKELIHOOD} when --likelihood is not given)")
    dd.add_argument("--bit-depth", type=positive_int, metavar="B",
                    help="bits per value of the files' grey levels (default: read from the files; 8 for uint8); "
                         "a run given one the files do not have is refused")
    dd.add_argument("--data-dir", help="folder holding MNIST/raw/ (default $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    dd.add_argument("--train-limit", type=positive_int, metavar="N", help="use the first N training images")
    dd.add_argument("--test-limit", type=positive_int, metavar="N", help="use the first N test images")
    dd.add_argument("--test-seed", type=int, help=f"seed of the test split's one binarisation (default {d.test_seed})")
    r = p.add_argument_group("run")
    r.add_argument("--device", choices=DEVICE_CHOICES, help="auto: CUDA when present (default)")
    r.add_argument("--cuda", dest="device", action="store_const", const="cuda", help="alias of --device cuda")
    r.add_argument("--out", help="output folder (default runs/<timestamp>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--eval-samples", type=positive_int, metavar="K",
                   help="after training, write the log p(x) report (python -m inference.evaluate) with K samples into OUT/report/")
    return p


_MODEL_FLAGS = {"latent_dim": "z_dim", "hidden_dims": "hidden_dims", "activation": "activation", "arch": "arch",
                "likelihood": "likelihood", "obs_scale": "obs_scale", "guide": "guide", "flow_steps": "flow_steps",
                "family": "family", "latent_dims": "latent_dims", "layer_hidden_dims": "layer_hidden_dims",
                "prior": "prior", "pseudo_inputs": "pseudo_inputs", "mixture_components": "mixture_components"}
_RUN_FLAGS = ("preset", "resume", "no_progress", "eval_samples")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _resumed_config(saved: TrainConfig, given: dict, preset: str | None, path: Path) -> TrainConfig:
    """The checkpoint's config with the allowed changes in ``given``; `CheckpointError` naming any flag whose value
    differs from the run's (a flag repeated with the run's own value is fine: the same command line resumes)."""
    differing = []
    for key, value in given.items():  # the flag's value against the run's
        if key in RESUMABLE_CHANGES:
            continue
        old = getattr(saved.model, _MODEL_FLAGS[key]) if key in _MODEL_FLAGS else getattr(saved, key)
        if value != old:
            differing.append(f"{_flag(key)} {_shown(value)} (the run's: {_shown(old)})")
    if preset is not None and preset != saved.preset:
        differing.append(f"--preset {preset} (the run's: {saved.preset})")
    if differing:
        raise CheckpointError(f"cannot resume {path} with {'; '.join(differing)}: the model and data are the "
                              "checkpoint's; only --epochs, --device, --data-dir, --jit/--no-jit, "
                              "--cuda-graph/--no-cuda-graph, --memory-budget, --workers may change")
    return dataclasses.replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_CHANGES}).validated()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a validated `TrainConfig` (on --resume: the checkpoint's, with allowed changes).

    A flag not given leaves its field to the preset, else to the defaults policy (`pyro_vae.config.resolve_defaults`),
    so the config equals the one Python builds from the same explicit fields."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in _RUN_FLAGS}
    if args.resume:
        if not args.out:
            raise CheckpointError("--resume needs --out DIR, the folder of the run to continue")
        path = Path(args.out) / "checkpoint.pt"
        return _resumed_config(checkpoint.config_of(checkpoint.read(path)), given, args.preset, path)
    preset = PRESETS[args.preset or DEFAULT_PRESET]
    model = preset.model.changed({_MODEL_FLAGS[k]: given.pop(k) for k in list(given) if k in _MODEL_FLAGS})
    if args.dequantize not in (None, "none") and model.likelihood == "bernoulli":
        raise ConfigError("--dequantize is for grey levels under a continuous likelihood; the bernoulli likelihood "
                          "takes binarised pixels: drop --dequantize, or pick --likelihood gaussian or "
                          "continuous-bernoulli")
    if args.obs_scale is not None and model.likelihood not in (None, "gaussian"):
        raise ConfigError(f"--obs-scale sets the gaussian likelihood's standard deviation; the {model.likelihood!r} "
                          "likelihood does not use it: drop it, or use --likelihood gaussian")
    given = {**preset.train, **given}
    if total_epochs(given.get("schedule", "constant")):
        given.setdefault("epochs", total_epochs(given["schedule"]))  # the protocol's length, unless --epochs says
    given.setdefault("out", default_out())
    config = TrainConfig(model=model, preset=args.preset or DEFAULT_PRESET, **given)
    return resolve_defaults(config).validated()  # as `train` will: the policy of `pyro_vae.config`


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m inference.svi`` (also under ``torchrun``); returns the exit status.

    0 when training finished; 2 and one ``error:`` line for bad input or an ``--out`` another run is
    writing; 1 and one ``error:`` line when a file could not be written (no space, quota, I/O error); 128 +
    the signal number when SIGINT/SIGTERM stopped it (checkpoint written).
    Under ``torchrun`` rank 0 alone prints; the others return the same status.
    """
    args = build_parser().parse_args(argv)
    out = None
    try:
        config = config_from_args(args)
        out = Path(config.out)
        result = train(config, resume=args.resume, progress=not args.no_progress, elbo_chosen=args.elbo is not None)
        speak = not distributed.quiet_rank()
        if result.interrupted:
            epoch, step = result.position
            if speak:
                print(f"interrupted at epoch {epoch + 1}, step {step}; checkpoint written to {out / 'checkpoint.pt'}\n"
                      f"resume with: {resume_command(out)}")
            return result.exit_status
        if speak:
            print(f"done: {out} (config.json, metrics.jsonl, checkpoint.pt, figures/)")
        if result.stop_signal is not None:  # asked to stop as the last step finished: no report
            if speak:
                print("stopped by a signal after the last step; training is complete, the report was not written")
            return result.exit_status
        if args.eval_samples:
            with interrupt_on_signals():
                report = evaluate(out, EvaluateConfig(num_samples=args.eval_samples,
                                                      chunk_size=min(args.eval_samples, 500),
                                                      test_limit=config.test_limit, device=config.device,
                                                      data_dir=config.data_dir), progress=not args.no_progress)
            if speak:
                print(render_markdown(report))
    except PyroVAEError as e:  # under torchrun every rank raises it (`distributed.together`): rank 0 says it once
        return exit_status(e) if distributed.quiet_rank() else error(e)
    except Interrupted as e:
        kept = (f"{out / 'checkpoint.pt'} is the last checkpoint written" if out and (out / "checkpoint.pt").exists()
                else "no checkpoint was written")
        if not distributed.quiet_rank():
            print(f"error: stopped by {e} before it could finish cleanly; {kept}", file=sys.stderr)
        return e.exit_status
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if isinstance(e, RuntimeError) and "alloc" not in str(e).lower():
            raise
        return error(f"out of memory ({' '.join(str(e).split())[:160]}); use a smaller model, batch or --num-particles")
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
