r"""The compiled (JIT) loss, and the check that it computes what the plain loss does.

``torch.jit.trace`` records one run of a Pyro program as a graph, which removes Pyro's Python from each
training step. It also freezes anything the program computes in Python from the data, so
`check_compiled` runs the compiled and the plain loss side by side before the first step, and training
uses the compiled one only when they agree. Each compiled objective (`inference.training.objectives`)
is its plain class's ``loss_and_surrogate_loss`` compiled by `CompiledSurrogate`, except DReG's, two graphs
(`JitIWAE_DReG`); all of them trace with `SharedParameterFunction`.

Pyro's own JIT losses (``JitTrace_ELBO``, ``JitTraceMeanField_ELBO``) are not used. In Pyro 1.9
``JitTraceMeanField_ELBO`` traces again on every call. ``JitTrace_ELBO`` keys its graphs by ``id(model)``,
so ``vae.model``, a new bound-method object at each read, can get a new id and be traced again, and its
traced function runs the model and guide of its *first* call, so the same loss given a second model
fails on that model's parameters. And ``pyro.ops.jit.trace`` passes each parameter to
``torch.jit.trace`` once per *name*: a tensor that a model reaches under two names (a layer shared by
two networks, weights tied between the generative and the inference network) is passed twice, the
tracer hands the program a different tensor for the second copy, and Pyro's own ``assert
constrained_param.unconstrained() is unconstrained_param`` fails with an empty message.
`SharedParameterFunction` passes each tensor once, under all its names.
"""

from __future__ import annotations

import warnings
import weakref

import pyro
import pyro.ops.jit
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.ops.jit import _hashable_args_kwargs
from pyro.util import ignore_jit_warnings

from pyro_vae.agreement import failure_cause, relative_difference
from pyro_vae.device import forked_rng
from pyro_vae.errors import CompileError


class SharedParameterFunction(pyro.ops.jit.CompiledFunction):
    """``pyro.ops.jit.CompiledFunction`` that passes each parameter tensor to ``torch.jit.trace`` once.

    Pyro's passes one input per parameter *name*; a tensor shared by several names (tied weights)
    then reaches the traced program as two inputs, and Pyro's identity check fails (module doc).
    Here the inputs are the distinct tensors, in the order the program first reaches them, and
    every name maps to its tensor's input. Compiled once per number of positional arguments and
    value of the keyword arguments, as Pyro's, each graph with its own parameter layout.

    On the CPU the graph runs without TorchScript's optimiser: its ops then record eager autograd's backward, where
    the optimiser would differentiate the graph itself. A step's loss and backward took 0.95-1.01x the optimised
    time for every objective at batch 20, 100 and 128, and 1.04x for ``trace --gradient stl`` at batch 20 (Intel
    Xeon, 2 threads, ``benchmarks/graph_optimiser.py``; BENCHMARKS.md). On CUDA, where the optimiser can fuse, it
    runs as TorchScript chooses (not measured without).

    With gradients off (``torch.no_grad()``: a validation loss, ``ELBO.loss``) it runs the program itself and
    neither traces nor uses a graph. A graph traced then would record what the program does only without
    gradients (the Bernoulli log-density's forward-only form, `.detach()`s that are no-ops) and later steps would
    run it with gradients: the compiled ``trace`` loss (Pyro's ``JitTrace_ELBO`` then), first called under
    ``no_grad``, gave gradients off by a relative 1.3 with no error (`tests/test_objectives.py`).
    """

    #: Whether a graph whose inputs are all on the CPU runs under TorchScript's optimiser (class doc; set by
    #: ``benchmarks/graph_optimiser.py`` to time both).
    optimise_on_cpu = False

    def __init__(self, fn, ignore_warnings: bool = False, jit_options: dict | None = None):
        super().__init__(fn, ignore_warnings, jit_options)
        # key -> (every parameter name the program reads, the first name of each distinct tensor, whether every
        # input was on the CPU when it was traced). Per key: Pyro's keeps one layout, the last traced, so a
        # function compiled for two models passed the first graph the second model's parameters
        self._layouts: dict = {}

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.fn(*args, **kwargs)
        key = _hashable_args_kwargs(args, kwargs)
        if key not in self.compiled:
            self.compiled[key], self._layouts[key] = self._trace(args, kwargs)
        param_names, first_names, on_cpu = self._layouts[key]
        inputs = tuple(pyro.param(name).unconstrained() for name in first_names) + args
        with (poutine.block(hide=param_names), poutine.trace(param_only=True) as capture,
              torch.jit.optimized_execution(self.optimise_on_cpu or not on_cpu)):
            result = self.compiled[key](*inputs)
        for name in capture.trace.nodes:
            if name not in param_names:
                raise NotImplementedError("pyro.ops.jit.trace assumes all params are created on first invocation, "
                                          f"but found new param: {name}")
        return result

    def _trace(self, args: tuple, kwargs: dict):
        """The program traced on ``args`` and ``kwargs``, and its layout (`_layouts`)."""
        with poutine.block(), poutine.trace(param_only=True) as first_capture:
            self.fn(*args, **kwargs)
        param_names = list(first_capture.trace.nodes)
        slot_of_tensor: dict[int, int] = {}
        slots = [slot_of_tensor.setdefault(id(pyro.param(name).unconstrained()), len(slot_of_tensor))
                 for name in param_names]  # name i -> its tensor's input
        first_names = [param_names[slots.index(i)] for i in range(len(slot_of_tensor))]
        fn = self.fn

        def compiled(*params_and_args):
            tensors, args = params_and_args[: len(first_names)], params_and_args[len(first_names):]
            constrained = {}
            for name, slot in zip(param_names, slots):
                param = pyro.param(name)  # initialised by the capture above
                if param.unconstrained() is not tensors[slot]:
                    raise RuntimeError(f"pyro.param({name!r}) is not the tensor passed to the compiled function")
                constrained[name] = param
            return poutine.replay(fn, params=constrained)(*args, **kwargs)

        if self.ignore_warnings:
            compiled = ignore_jit_warnings()(compiled)
        inputs = tuple(pyro.param(name).unconstrained() for name in first_names) + args
        with pyro.validation_enabled(False):
            self.jit_options.pop("time_compilation", None)
            graph = torch.jit.trace(compiled, inputs, **self.jit_options)
        # a graph holds its trace's devices (its constants are tensors there): decided once, not per step
        on_cpu = all(t.device.type == "cpu" for t in inputs if isinstance(t, torch.Tensor))
        return graph, (param_names, first_names, on_cpu)


def differentiable(loss: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A scalar with ``loss``'s value and ``surrogate``'s gradient:
    ``loss.detach() + (surrogate - surrogate.detach())``."""
    return loss.detach() + (surrogate - surrogate.detach())


class CompiledSurrogate:
    """Mixin: JIT-compile ``differentiable_loss``, the `differentiable` of a class's ``loss_and_surrogate_loss(model,
    guide, *args)``, once, as Pyro's JIT losses do.

    For an objective of our own whose ``loss_and_surrogate_loss`` returns
    tensors (no ``.item()``, which tracing would freeze): put it first in the
    bases, ``class JitMine(CompiledSurrogate, Mine)``. Compiled once per
    (model, guide) pair and value of the non-tensor keyword arguments. The pair is compared with ``==``,
    not by ``id``: ``vae.model`` read afresh for each step is a new bound method equal to the last, so it
    reuses the graph; another model or guide gets its own. The graph returns the differentiable loss itself, so a
    step runs no op outside it; nor does it check the loss for NaN as the plain ``SurrogateLoss`` does (a host
    sync each step: ``train`` checks each window's losses, `inference.training.loop`).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        compiled = self.__dict__.get("_compiled_loss")
        if compiled is None:
            weakself = weakref.ref(self)

            def loss(*args, **kwargs):
                # model and guide travel as keyword arguments, so each pair is its own compiled key and trace
                model, guide = kwargs.pop("_pyro_model"), kwargs.pop("_pyro_guide")
                return differentiable(*weakself().loss_and_surrogate_loss(model, guide, *args, **kwargs))

            compiled = SharedParameterFunction(loss, self.ignore_jit_warnings, self.jit_options)
            self._compiled_loss = compiled
        return compiled(*args, _pyro_model=model, _pyro_guide=guide, **kwargs)


#: How far the compiled loss and each gradient may sit from the plain ones, relative to the plain
#: value's largest magnitude: float32 rounding of the same sums done in another order.
COMPILE_RTOL = 1e-4


#: Added to `check_compiled`'s error when the compiled loss passed on the whole probe and fails on its half.
FROZEN_SIZE_HINT = ("; it agreed on the batch of {} it was traced on, so the program likely computes a size from the "
                    "batch in Python, which tracing freezes: pyro.plate('data', len(x)) freezes, "
                    "pyro.plate('data', x.shape[0]) does not")


def check_compiled(model_fn, guide_fn, params: dict[str, torch.Tensor], compiled: ELBO, reference: ELBO,
                   probe: torch.Tensor) -> dict[str, float]:
    """Compile ``compiled`` on ``probe [B, D]`` and raise `CompileError` unless it matches ``reference``.

    Returns the largest relative difference (`relative_difference`) seen for the loss and for each
    tensor's gradient, over both batches (what `COMPILE_RTOL` is calibrated against).

    ``torch.jit.trace`` records one run of the Python program as a graph, so a value the program
    computes in Python from the data (a size, a branch, a ``float(x.mean())``) is frozen into it. Here
    both losses run on the same random draws, on all of ``probe`` and on its first ceil(B/2) rows (a
    frozen batch size shows there, and the error says so:
    `FROZEN_SIZE_HINT`), and their values and gradients for every tensor in ``params``
    must agree to `COMPILE_RTOL`. It all runs under a forked RNG: tracing runs the program more often
    than a step does, and those draws must not shift the training stream (or a resumed run, which
    compiles at another point of it, would diverge from an uninterrupted one). Pyro 1.9's
    ``JitTraceMeanField_ELBO`` fails it (loss and gradients differ from ``TraceMeanField_ELBO``'s on the
    same seed: it traces again on every call, and each trace draws from the RNG).
    """
    names, tensors = list(params), list(params.values())
    weight = torch.full((), 0.7, device=probe.device)  # not 1: a KL weight frozen into the trace would show

    def loss_and_grads(elbo: ELBO, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        torch.manual_seed(0)
        loss = elbo.differentiable_loss(model_fn, guide_fn, x, weight)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        return {"loss": loss.detach(), **dict(zip(names, grads))}

    def compiled_loss_and_grads(x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        try:
            return loss_and_grads(compiled, x)
        except Exception as e:  # noqa: BLE001 - any failure to compile or run means: do not use it
            raise CompileError(f"the JIT-compiled loss failed on a batch of {len(x)}: {failure_cause(e)}") from e

    with forked_rng(probe.device), warnings.catch_warnings():
        # The compiled losses are built on torch.jit.trace, deprecated in torch 2.15: nothing a user can change.
        # Its TracerWarnings ("might cause the trace to be incorrect") are what this check settles.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace. is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        compiled_loss_and_grads(probe)  # the first call traces the Python program; later calls run the graph
        differences: dict[str, float] = {}
        for x in (probe, probe[: (len(probe) + 1) // 2]):
            hint = "" if x is probe else FROZEN_SIZE_HINT.format(len(probe))
            try:
                got = compiled_loss_and_grads(x)
            except CompileError as e:
                raise CompileError(f"{e}{hint}") from e.__cause__
            want = loss_and_grads(reference, x)
            for key, value in want.items():
                difference = relative_difference(got[key], value)
                differences[key] = max(difference, differences.get(key, 0.0))
                if difference > COMPILE_RTOL:
                    raise CompileError(f"the JIT-compiled and the plain loss differ on a batch of {len(x)} with the "
                                       f"same seed (in {key}: relative difference {difference:.2g}){hint}")
    return differences
