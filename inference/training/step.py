r"""The training step: one optimiser step on the negative ELBO, compiled where that is safe.

`make_step` writes out what ``pyro.infer.SVI.step`` does: the objective's
``differentiable_loss``, ``backward``, and one ``torch.optim`` step over every
parameter of the model. `build_step` picks the objective for a `TrainConfig`
and, where Pyro has a JIT-compiled version of it, compiles it and checks it
against the plain loss before the first step (`inference.training.compiled.check_compiled`),
falling back to the plain loss, with the reason, when the check fails. On CUDA
it then captures the whole step in a CUDA graph where that checks out
(`inference.training.cuda_graph`), again falling back, with the reason, when it does not.
Before all that, `objective_for` checks that ``meanfield`` (the default) estimates
the ELBO of the model at hand, and trains ``trace`` with one line saying why
where it does not (`inference.training.objectives.meanfield_violation`).
"""

from __future__ import annotations

import dataclasses

import torch
from pyro.infer.elbo import ELBO

from inference.training.compiled import check_compiled
from inference.training.cuda_graph import build_graph_step, wants_graph
from inference.training.data_parallel import DataParallelStep, LossAndGrads
from inference.training.objectives import jit_available, make_elbo, meanfield_violation
from models.base import LatentModel
from pyro_vae.config import TrainConfig
from pyro_vae.device import forked_rng
from pyro_vae.distributed import Group
from pyro_vae.errors import CaptureError, CompileError, ConfigError


class PlainStep:
    """``step(x, kl_weight) -> loss``: ``loss_and_grads``, one ``optim`` step, the gradients set to None."""

    def __init__(self, loss_and_grads: LossAndGrads, optim: torch.optim.Optimizer):
        self.loss_and_grads, self.optim = loss_and_grads, optim

    def __call__(self, x: torch.Tensor, kl_weight: float | torch.Tensor) -> torch.Tensor:
        loss = self.loss_and_grads(x, kl_weight)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        return loss


def make_step(model: LatentModel, elbo: ELBO, optim: torch.optim.Optimizer, probe: torch.Tensor | None = None,
              reference: ELBO | None = None, group: Group | None = None):
    """``step(x, kl_weight) -> loss``: one optimiser step on the loss summed over the batch.

    The returned loss is a 0-d tensor left on the device (no host sync). One
    torch optimiser holds every parameter of ``model``: ``pyro.optim`` keeps a
    separate optimiser per parameter tensor, which slowed large batches (see
    BENCHMARKS.md). An objective without ``differentiable_loss`` (Pyro's own ``RenyiELBO``, say)
    fills the same parameters' gradients by its ``loss_and_grads``. For a JIT
    ``elbo``, ``probe`` (a batch) and ``reference`` (the plain loss) compile it
    and check it before the first step (`check_compiled`; raises `CompileError`).
    With a ``group`` of more than one process the step is a
    `inference.training.data_parallel.DataParallelStep`: ``x`` is the global batch.
    """
    # Bind once: each ``model.model`` access makes a new bound method (the compiled losses compare them with ==, so
    # that would not retrace, but there is no need to make one per step)
    model_fn, guide_fn = model.model, model.guide
    if reference is not None:
        if probe is None:
            raise ValueError("make_step: checking a compiled loss against reference needs a probe batch")
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        check_compiled(model_fn, guide_fn, params, elbo, reference, probe)
    if hasattr(elbo, "differentiable_loss"):
        def loss_and_grads(x: torch.Tensor, kl_weight: float | torch.Tensor) -> torch.Tensor:
            loss = elbo.differentiable_loss(model_fn, guide_fn, x, kl_weight)
            loss.backward()
            return loss.detach()
    else:
        def loss_and_grads(x: torch.Tensor, kl_weight: float | torch.Tensor) -> torch.Tensor:
            return torch.tensor(elbo.loss_and_grads(model_fn, guide_fn, x, kl_weight))
    if group is not None and group.world_size > 1:
        return DataParallelStep(loss_and_grads, optim, group)
    return PlainStep(loss_and_grads, optim)


def objective_for(model: LatentModel, config: TrainConfig, probe: torch.Tensor, log=print,
                  chosen: bool = False) -> TrainConfig:
    """``config``, or, where ``config.elbo`` is ``meanfield`` and `meanfield_violation` finds that
    ``TraceMeanField_ELBO`` would not estimate ``model``'s ELBO on ``probe``, ``config`` with ``elbo="trace"``
    and one logged line saying why; with ``chosen`` (the user named ``--elbo meanfield``) a `ConfigError`
    instead. The check runs the guide and the model on ``probe`` under a forked RNG: the training stream
    is left where it was.
    """
    if config.elbo != "meanfield":
        return config
    with forked_rng(probe.device):
        why = meanfield_violation(model.model, model.guide, probe)
    if why is None:
        return config
    if chosen:
        raise ConfigError(f"--elbo meanfield does not apply to this model: {why}; use --elbo trace")
    log(f"note: training --elbo trace, not the default meanfield: {why}")
    return dataclasses.replace(config, elbo="trace")


def build_step(model: LatentModel, config: TrainConfig, optim: torch.optim.Optimizer, probe: torch.Tensor,
               log=print, group: Group | None = None) -> tuple:
    """``(step, compiled)``: the training step for ``config``, JIT-compiled and CUDA-graphed where that is safe.

    ``config.jit``: True compiles or raises (`ConfigError` when Pyro has no
    compiled ``config.elbo``, `CompileError` when the check fails); False never
    compiles; None (the default) compiles when Pyro can and `check_compiled`
    passes on ``probe``, else logs why and runs the plain loss. ``group``: see `make_step`.
    ``config.cuda_graph`` (`inference.training.cuda_graph.wants_graph`): None (the
    default) captures the compiled step in a CUDA graph on CUDA, in one process,
    when `build_graph_step`'s check passes, else logs why and runs it uncaptured;
    True insists (`ConfigError`/`CaptureError`); False, and every CPU run, never
    captures. The step is then a `inference.training.cuda_graph.CudaGraphStep`. ``config.elbo`` ``meanfield`` where it
    does not estimate ``model``'s ELBO trains ``trace`` (`objective_for`, which ``train`` calls first, so
    that the run records the objective it trained).
    """
    config = objective_for(model, config, probe, log)
    step, compiled = _compiled_or_plain(model, config, optim, probe, log, group)
    device = next(model.parameters()).device
    if not wants_graph(config.cuda_graph, device, group.world_size if group is not None else 1, compiled) \
            or not isinstance(step, PlainStep):
        return step, compiled
    try:
        return build_graph_step(step.loss_and_grads, model, optim, probe, config.batch_size), compiled
    except CaptureError as e:
        if config.cuda_graph:
            raise
        log(f"note: training without a CUDA graph: {e}")
        return step, compiled


def _compiled_or_plain(model: LatentModel, config: TrainConfig, optim: torch.optim.Optimizer, probe: torch.Tensor,
                       log, group: Group | None) -> tuple:
    """``(step, compiled)`` of `build_step` before any CUDA graph."""
    plain = make_elbo(config.elbo, False, config.num_particles, config.gradient)
    if config.jit is False or (config.jit is None and not jit_available(config.elbo, config.gradient)):
        return make_step(model, plain, optim, group=group), False
    compiled = make_elbo(config.elbo, True, config.num_particles, config.gradient)
    try:
        return make_step(model, compiled, optim, probe=probe, reference=plain, group=group), True
    except CompileError as e:
        if config.jit:
            raise
        log(f"note: training with the uncompiled loss: {e}")
        return make_step(model, plain, optim, group=group), False
