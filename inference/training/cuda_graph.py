r"""The training step captured in a CUDA graph: one replay per step, no Python and no host synchronisation.

At batch 100 a VAE step is a few dozen small kernels, so Python and launch
latency, not FLOPs, set its speed. ``torch.cuda.CUDAGraph`` records the kernels
of one whole step (the JIT-compiled loss's forward, its backward and
``torch.optim.Adam(capturable=True)``'s update) once, and `CudaGraphStep`
replays them with one launch per step. What a recording fixes, and how each is
handled:

- addresses: a replay reads and writes the very tensors of its capture. Each
  batch ``x [B, D]`` is copied into a static input and the KL weight into a 0-d
  device tensor; the loss is a static output, cloned per step (the next replay
  overwrites it). Parameters, their gradients (allocated by the captured
  backward and kept, never set to None) and Adam's moments and step counts are
  updated in place. Each parameter group's learning rate is a 0-d device
  tensor inside the graph, refilled when the group's float ``lr`` changes (a
  `pyro_vae.schedule`), so ``param_groups`` and the checkpoint keep floats.
- shapes: a graph holds one batch shape. The last, smaller batch of an epoch
  gets a second graph, captured the first time it comes.
- randomness: Pyro samples with ``torch.distributions``, whose draws come from
  torch's default CUDA generator (a Philox counter: seed and offset). That
  generator is graph-safe: a capture registers the current device's default
  generator, its kernels read the seed and a base offset from device memory, and
  each replay sets the base to the generator's offset and advances it by the
  graph's total, as the same kernels run one by one would. So a replay draws what
  the eager step draws from the same RNG state, and the checkpoint's RNG state
  resumes a graphed run exactly. (The data's own generator, which binarises each
  batch, runs outside the graph. Another generator used inside a capture makes
  it fail, and the step falls back.)
- host synchronisation: a capture may not contain one (``.item()``, ``if
  tensor:``). Pyro's Python validation checks synchronise, so only the
  JIT-compiled loss is captured (a trace keeps the tensor operations alone).
- warm-up: as PyTorch's documentation requires, `WARMUP_STEPS` steps run on a
  side stream first (cuBLAS handles, autograd, the JIT executor's profiling runs,
  Adam's state); they run under a forked RNG and the parameters, buffers and
  Adam state are then put back in place, so capturing changes nothing.

`build_graph_step` guards the graph as `inference.training.compiled.check_compiled`
guards the JIT: from the same state and seed, on a probe batch, one replay's
loss and gradients must equal one plain step's to `GRAPH_RTOL` (relative to the
largest magnitude) and every parameter's update to `UPDATE_RTOL`; otherwise
`CaptureError` says where they differ and `inference.training.step.build_step` trains
with the plain step. `wants_graph` resolves ``--cuda-graph`` (None: on CUDA when
it checks out; never on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from inference.training.compiled import COMPILE_RTOL
from pyro_vae.agreement import relative_difference
from inference.training.data_parallel import LossAndGrads
from pyro_vae.device import forked_rng
from pyro_vae.errors import CaptureError, ConfigError

#: Eager steps on a side stream before a capture.
WARMUP_STEPS = 3
#: How far a replay's loss and gradients may sit from the plain step's, relative to the largest magnitude.
GRAPH_RTOL = COMPILE_RTOL
#: How far a replay's parameter update may sit from the plain step's, relative to its largest magnitude: Adam
#: divides by sqrt(v) + eps, which magnifies rounding in the smallest gradients, and the capturable Adam does its
#: bias correction in float32 on the device where the plain one uses Python floats.
UPDATE_RTOL = 1e-3
#: The probe's KL weight and seed (not 1: a KL weight frozen into the graph would show).
PROBE_KL_WEIGHT, PROBE_SEED = 0.7, 0


def wants_graph(request: bool | None, device: torch.device, world_size: int = 1, compiled: bool = True) -> bool:
    """Whether to capture the step for ``request`` (``config.cuda_graph``) on ``device``.

    None (auto): on CUDA, in one process, with the JIT-compiled loss. False:
    never. True: the same, and `ConfigError` where it cannot be (on the CPU,
    under ``torchrun``, with a loss that is not compiled).
    """
    if request is False:
        return False
    if device.type != "cuda":
        why_not = (f"this run is on {device.type}: drop --cuda-graph, or train with --device cuda on a machine with "
                   "an NVIDIA GPU")
    elif world_size > 1:
        why_not = f"it runs in one process, not under torchrun ({world_size} processes here): drop --cuda-graph"
    elif not compiled:
        why_not = ("it captures the JIT-compiled loss, and this run's loss is not compiled (--no-jit, or an --elbo "
                   "without a compiled version such as iwae): drop --cuda-graph, or let the loss compile")
    else:
        return True
    if request:
        raise ConfigError(f"--cuda-graph captures the training step in a CUDA graph, but {why_not}")
    return False


def set_capturable(optim: torch.optim.Optimizer, capturable: bool) -> None:
    """Switch Adam's ``capturable`` mode and move its step counts where that mode keeps them.

    Capturable: float32 0-d tensors on the parameters' device (a replay counts
    there). Not: on the CPU, where torch keeps them for a plain Adam. The
    counts' values are unchanged. A checkpoint written while graphed stores
    ``capturable=True``; `inference.training.run_start.prepare` switches it off on
    resume, so the run resumes on any device and only a graph switches it on.
    """
    for group in optim.param_groups:
        group["capturable"] = capturable
        for p in group["params"]:
            state = optim.state.get(p)
            if state and isinstance(state.get("step"), torch.Tensor):
                state["step"] = (state["step"].to(device=p.device, dtype=torch.float32) if capturable
                                 else state["step"].cpu())


class _Snapshot:
    """A copy of the parameters, buffers and optimiser state, to put back after trial steps.

    ``restore(in_place=True)`` copies into the same tensors (a captured graph
    holds their addresses); state that was absent is zeroed, which is what
    Adam's lazy initialisation gives (zero moments, step 0).
    ``restore(in_place=False)``, before any capture, puts back copies and
    removes state that was absent.
    """

    def __init__(self, tensors: list[torch.Tensor], optim: torch.optim.Optimizer):
        self.tensors, self.optim = tensors, optim
        self.values = [t.detach().clone() for t in tensors]
        self.state = {p: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                      for p, s in optim.state.items() if s}

    @torch.no_grad()
    def restore(self, in_place: bool = True) -> None:
        for t, value in zip(self.tensors, self.values):
            t.copy_(value)
        for group in self.optim.param_groups:
            for p in group["params"]:
                saved, state = self.state.get(p), self.optim.state.get(p)
                if not in_place:
                    if saved is None:
                        self.optim.state.pop(p, None)
                    else:
                        self.optim.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                               for k, v in saved.items()}
                    continue
                for key, value in (state or {}).items():
                    if isinstance(value, torch.Tensor):
                        value.copy_(saved[key]) if saved is not None else value.zero_()
                    elif saved is not None:
                        state[key] = saved[key]


class CudaGraphStep:
    """``step(x, kl_weight) -> loss``: one replay of the captured step for ``x``'s shape (captured on first use).

    ``loss_and_grads`` is the plain step's loss and backward
    (`inference.training.step.PlainStep`); ``optim`` a ``torch.optim.Adam`` (made
    capturable here). The loss returned is a 0-d tensor on the device, as the
    plain step's. Build it with `build_graph_step`, which checks it.
    """

    def __init__(self, loss_and_grads: LossAndGrads, model: torch.nn.Module, optim: torch.optim.Optimizer):
        if not isinstance(optim, torch.optim.Adam):
            raise CaptureError(f"the CUDA-graph step is written for torch.optim.Adam, not {type(optim).__name__}")
        self.loss_and_grads, self.model, self.optim = loss_and_grads, model, optim
        self.device = next(model.parameters()).device
        self.kl = torch.ones((), device=self.device)
        self.lrs = [torch.tensor(float(g["lr"]), device=self.device) for g in optim.param_groups]
        self._lr_floats = [g["lr"] for g in optim.param_groups]
        #: batch shape -> (graph, static x, static loss, {id(parameter): the gradient tensor the graph writes})
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, dict]] = {}
        #: `compare_outcomes` of `build_graph_step`'s check: relative difference per loss, gradient and update
        self.check_differences: dict[str, float] = {}
        set_capturable(optim, True)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optim.param_groups for p in g["params"]]

    def _inputs(self, kl_weight: float | torch.Tensor) -> None:
        """Fill the KL weight and, where a group's float lr changed, its lr tensor (device copies, no sync)."""
        if isinstance(kl_weight, torch.Tensor):
            self.kl.copy_(kl_weight)
        else:
            self.kl.fill_(kl_weight)
        for i, group in enumerate(self.optim.param_groups):
            if group["lr"] != self._lr_floats[i]:
                self.lrs[i].fill_(group["lr"])
                self._lr_floats[i] = group["lr"]

    def __call__(self, x: torch.Tensor, kl_weight: float | torch.Tensor) -> torch.Tensor:
        self._inputs(kl_weight)
        shape = tuple(x.shape)
        if shape not in self.graphs:
            self.capture(x)
        graph, static_x, loss, _ = self.graphs[shape]
        static_x.copy_(x)
        graph.replay()
        return loss.clone()

    def gradients(self, shape: tuple[int, ...], params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The gradients of ``params`` that the graph for ``shape`` wrote in its last replay (None: unused)."""
        return [self.graphs[shape][3].get(id(p)) for p in params]

    def capture(self, x: torch.Tensor) -> None:
        """Warm up on a side stream, put everything back, and record one step on a static copy of ``x``.

        Changes no parameter, buffer, optimiser state or RNG state.
        """
        model, optim = self.model, self.optim
        params = self._params()
        snapshot = _Snapshot([*model.parameters(), *model.buffers()], optim)
        static_x = x.detach().clone()
        optim.zero_grad(set_to_none=True)  # not into another graph's gradients
        with torch.cuda.device(self.device), forked_rng(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.loss_and_grads(static_x, self.kl)
                    optim.step()
                    optim.zero_grad(set_to_none=True)
            torch.cuda.current_stream().wait_stream(side)
            snapshot.restore(in_place=True)
            optim.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
            graph = torch.cuda.CUDAGraph()
            try:
                for group, lr in zip(optim.param_groups, self.lrs):
                    group["lr"] = lr
                with torch.cuda.graph(graph):
                    loss = self.loss_and_grads(static_x, self.kl)
                    optim.step()
            finally:
                for group, lr in zip(optim.param_groups, self._lr_floats):
                    group["lr"] = lr
        self.graphs[tuple(x.shape)] = (graph, static_x, loss, {id(p): p.grad for p in params})


def step_outcome(run: Callable[[], tuple[torch.Tensor, list[torch.Tensor | None]]], params: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor | None]:
    """What one step ``run() -> (loss, gradients)`` does, from the current state, seeded by `PROBE_SEED`.

    Keys: ``loss``, ``gradient NAME`` and ``update NAME`` (parameter after -
    before) for every tensor in ``params``. Runs under a forked RNG.
    """
    before = {name: p.detach().clone() for name, p in params.items()}
    with forked_rng(device):
        torch.manual_seed(PROBE_SEED)
        loss, grads = run()
    outcome: dict[str, torch.Tensor | None] = {"loss": loss.detach().clone()}
    for (name, p), grad in zip(params.items(), grads):
        outcome[f"gradient {name}"] = None if grad is None else grad.detach().clone()
        outcome[f"update {name}"] = p.detach() - before[name]
    return outcome


def compare_outcomes(got: dict[str, torch.Tensor | None], want: dict[str, torch.Tensor | None],
                     batch: int) -> dict[str, float]:
    """Each entry's relative difference between the graphed outcome ``got`` and the plain ``want``; `CaptureError`
    naming the first entry beyond its tolerance (loss and gradients `GRAPH_RTOL`, updates `UPDATE_RTOL`)."""
    differences = {}
    for key, value in want.items():
        tolerance = UPDATE_RTOL if key.startswith("update ") else GRAPH_RTOL
        differences[key] = difference = relative_difference(got.get(key), value)
        if difference > tolerance:
            raise CaptureError(f"the CUDA-graph step and the plain step differ on a probe batch of {batch} with the "
                               f"same seed (in {key}: relative difference {difference:.2g}, tolerance {tolerance:g})")
    return differences


def build_graph_step(loss_and_grads: LossAndGrads, model: torch.nn.Module, optim: torch.optim.Optimizer,
                     probe: torch.Tensor, batch_size: int) -> CudaGraphStep:
    """A checked `CudaGraphStep` for batches of ``batch_size`` images, or `CaptureError` saying why not.

    ``probe [<=B, D]`` (repeated to ``batch_size`` rows when shorter): the plain
    step (``loss_and_grads``, Adam as it is, gradients set to None) and the
    captured one run on it from the same state and seed, and their
    `step_outcome`s must agree (`compare_outcomes`). Whatever happens, the
    parameters, buffers, optimiser state and RNG streams are as they were; on
    failure Adam is left non-capturable, with its state as before.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    probe = probe.repeat(-(-batch_size // len(probe)), 1)[:batch_size] if len(probe) < batch_size else probe[:batch_size]
    device = probe.device
    snapshot = _Snapshot([*model.parameters(), *model.buffers()], optim)
    weight = torch.full((), PROBE_KL_WEIGHT, device=device)

    def plain() -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        optim.zero_grad(set_to_none=True)
        loss = loss_and_grads(probe, weight)
        grads = [None if p.grad is None else p.grad.clone() for p in params.values()]
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss, grads

    try:
        want = step_outcome(plain, params, device)
        snapshot.restore(in_place=False)
        graphed = CudaGraphStep(loss_and_grads, model, optim)
        graphed.capture(probe)
        got = step_outcome(lambda: (graphed(probe, weight), graphed.gradients(tuple(probe.shape), [*params.values()])),
                           params, device)
        snapshot.restore(in_place=True)
        graphed.check_differences = compare_outcomes(got, want, len(probe))
        return graphed
    except Exception as e:  # noqa: BLE001 - any failure to capture or replay means: do not use it
        optim.zero_grad(set_to_none=True)
        set_capturable(optim, False)
        snapshot.restore(in_place=False)
        if isinstance(e, CaptureError):
            raise
        cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CaptureError(f"capturing the training step in a CUDA graph failed: {type(e).__name__}: {cause}") from e
