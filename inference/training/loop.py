r"""Train a model by stochastic variational inference: `train`, which ``python -m inference.svi`` calls.

Each step draws a batch of B images and takes one Adam step on the negative
ELBO summed over the batch,

    loss(x_1..B) = - sum_i E_{q(z|x_i)}[log p(x_i, z) - log q(z|x_i)],

estimated by Pyro's ``Trace_ELBO`` (reparameterised samples) or
``TraceMeanField_ELBO`` (the KL term in closed form), or the tighter IWAE bound
``E[log (1/k) sum_j w_j] <= log p(x)`` by ``RenyiELBO(alpha=0)`` with k
vectorised particles (Burda et al. 2015); ``--gradient`` picks the gradient
estimator (sticking the landing, DReG). Objectives and estimators live in
`inference.training.objectives`. ``--kl-weight`` beta and ``--kl-warmup`` scale the
latent site (see ``models.base``); ``--schedule burda2015`` sets Adam's rate per epoch by Burda et al.'s
protocol (`pyro_vae.schedule`). Reported ELBOs are nats per image and
negative: a lower bound on log p(x), higher is better.

A step is what ``pyro.infer.SVI.step`` does, written out (`inference.training.step`): the
objective's ``differentiable_loss``, ``backward``, and one ``torch.optim.Adam``
over the model's parameters (``pyro.optim`` keeps an optimiser per tensor;
dropping it sped up large batches, BENCHMARKS.md). By default the loss is
JIT-compiled where Pyro can and `check_compiled` finds the compiled loss and
gradients equal to the plain ones (`inference.training.step.build_step`): that removes Pyro's Python
from each step, most of its cost over hand-written PyTorch. On CUDA the whole step is then
captured in a CUDA graph where a replay checks out (`inference.training.cuda_graph`).

A run writes into ``OUT``: ``config.json``, ``metrics.jsonl`` (one line per
epoch, added once that epoch's checkpoint is in place), ``checkpoint.pt`` (every
epoch, atomically) and ``figures/``, holding ``OUT/.lock`` (`pyro_vae.run_lock`)
all the while: a second run into the same ``OUT`` is refused. Under
``torchrun --nproc_per_node N -m inference.svi`` the N processes split each
global batch of ``--batch-size`` images (`inference.training.data_parallel`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from inference.estimators.active_units import EPOCH_DRAWS, EPOCH_IMAGES, active_units, collapse_warning, collapsed_sites
from inference.estimators.predictive import observation_is_discrete
from inference.estimators.rate_distortion import rate_distortion
from inference.reports.figures import draw_run_figures
from inference.training.cuda_graph import CudaGraphStep
from inference.training.run_start import default_out, prepare
from inference.training.step import build_step, objective_for
from models.base import LatentModel
from models.registry import import_hint
from pyro_vae import checkpoint, distributed
from pyro_vae.config import TrainConfig, defaults_line, resolve_defaults
from pyro_vae.data import DataSplits
from pyro_vae.device import denormals_flushed
from pyro_vae.errors import CheckpointError, TrainingDiverged
from pyro_vae.run_lock import RunLock, check_free
from pyro_vae.schedule import learning_rate, set_learning_rate
from pyro_vae.stopping import StopRequest
from pyro_vae.writes import append_line, reason, write_failed, write_text_atomic


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
    "units"}}``, the rate over ``x`` and Burda et al.'s active units (`inference.estimators.active_units`) over its first
    `EPOCH_IMAGES` images with `EPOCH_DRAWS` guide draws each. Runs under forked RNGs seeded by ``seed``
    (`inference.estimators.rate_distortion`), so it neither disturbs training randomness nor changes its noise from one
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
    graphed: bool = False  # whether they were replays of a CUDA graph (`inference.training.cuda_graph`)



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
    global batch of ``config.batch_size`` images (`inference.training.data_parallel`),
    draws its own Monte Carlo noise, and all stop together (a signal, a NaN or
    an error on any rank); rank 0 alone writes files and logs.

    ``config.elbo`` ``meanfield`` (the default) where ``TraceMeanField_ELBO`` does not estimate the
    model's ELBO (a guide drawing a site from one that the model draws it from: `inference.training.step.objective_for`)
    trains ``trace``, says so in one line and records ``trace`` in the run's config; with ``elbo_chosen``
    (``--elbo meanfield`` on the command line) it is a `ConfigError` instead.
    """
    channels = data.image_shape[0] if data is not None and data.image_shape else None
    config = resolve_defaults(config, channels).validated()  # the one defaults policy, as from the command line
    group, device = distributed.setup(config.device)
    lock = None
    with denormals_flushed(device):  # the CPU's slow path for tiny floats: off while training
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
                # the run records what it trains
                config = objective_for(model, config, probe, log, chosen=elbo_chosen)
                step_fn, compiled = build_step(model, config, optim, probe=probe, log=log, group=group)
                if group.is_main:  # the one writer: everything from here on is written under OUT's lock
                    lock = RunLock(config.out, "training").acquire()
                    _start_writing(config, start, resume, seen, model)
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


def resume_command(out: Path | str, model: LatentModel | None = None) -> str:
    """The command line that resumes the run in ``out`` (under torchrun: as many processes), with the ``--import``
    that makes ``model``'s class known when it is not a shipped one (`models.registry.import_hint`)."""
    launcher = (f"torchrun --nproc_per_node {distributed.current().world_size} -m inference.svi"
                if distributed.launched_by_torchrun() else "python -m inference.svi")
    imports = "".join(f" --import {shlex.quote(spec)}" for spec in (import_hint(model) if model is not None else ()))
    return f"{launcher}{imports} --resume --out {shlex.quote(str(out))}"


def _start_writing(config: TrainConfig, start, resume: bool, seen: tuple | None, model: LatentModel) -> None:
    """Under OUT's lock: check that no other run wrote the checkpoint since `prepare` looked, then write
    ``config.json`` and ``metrics.jsonl`` (on resume, rewritten from the checkpoint's history), each whole or not at all."""
    out_dir = Path(config.out)
    ckpt_path = out_dir / "checkpoint.pt"
    if _file_state(ckpt_path) != seen:  # another run, now finished, wrote it while this one was starting
        raise CheckpointError(f"{ckpt_path} was written by another run while this one was starting; "
                              + ("resume again to continue from it" if resume else
                                 "pass --resume to continue that run, or choose another --out"))
    kept = f"the checkpoint of epoch {start.epoch} is kept" if resume else "nothing was trained"
    fix = (f"free space and resume with: {resume_command(out_dir, model)}" if resume
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
        return f"the checkpoint {where} is kept{note}; free space and resume with: {resume_command(out_dir, model)}"

    def save(epoch: int, step: int, partial: dict | None = None, record: dict | None = None) -> None:
        """Checkpoint, then (``record``) the epoch's metrics line: the folder never claims more than the checkpoint
        holds. A write error is `WriteFailed` on rank 0 (naming the file), `PeerFailed` on the others."""
        nonlocal saved
        rng_states = distributed.all_gather(checkpoint.rng_state())  # every rank's noise, for an exact resume
        with distributed.together(f"writing the checkpoint of epoch {epoch + (1 if step else 0)}"):
            if group.is_main:
                try:
                    checkpoint.save(ckpt_path, model, config, checkpoint.Position(epoch, step, history, partial),
                                    optim.state_dict(), rng_states)
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
    # Every rank waits for rank 0's figures, so that all leave training, and then the process group, together
    # (a rank that tore its gloo group down while the other still drew was aborted in C++, now and then).
    with distributed.together("drawing the figures"):
        if group.is_main:
            try:
                draw_run_figures(model, data.test, data.test_labels, history, out_dir / "figures",
                                 seed=config.test_seed, image_shape=data.image_shape, class_names=data.classes)
            except OSError as e:  # the run itself is done and checkpointed: a figure is not worth failing it for
                print(f"warning: could not write {e.filename or out_dir / 'figures'} ({reason(e)}); training is "
                      f"complete and {ckpt_path} holds it; draw the figures later with: python -m "
                      f"inference.figures {shlex.quote(str(out_dir))}", file=sys.stderr)
    return TrainResult(model, config, history, out_dir, interrupted, (start_epoch, start_step), stop_signal, data,
                       compiled, isinstance(step_fn, CudaGraphStep))


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0: they train in step with rank 0, which reports."""


