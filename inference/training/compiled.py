r"""The compiled (JIT) loss, and the check that it computes what the plain loss does.

``torch.jit.trace`` (under Pyro's ``JitTrace_ELBO``) records one run of a Pyro
program as a graph, which removes Pyro's Python from each training step. It
also freezes anything the program computes in Python from the data, so
`check_compiled` runs the compiled and the plain loss side by side before the
first step, and training uses the compiled one only when they agree.

Pyro's ``pyro.ops.jit.trace`` passes each parameter to ``torch.jit.trace`` once per *name*, so a
tensor that a model reaches under two names (a layer shared by two networks, weights tied between
the generative and the inference network) is passed twice, and the tracer hands the program a
different tensor for the second copy: Pyro's own ``assert constrained_param.unconstrained() is
unconstrained_param`` then fails with an empty message. `SharedParameterFunction` passes each
tensor once, under all its names; the losses here compile with it.
"""

from __future__ import annotations

import warnings
import weakref

import pyro
import pyro.ops.jit
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO
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
    value of the keyword arguments, as Pyro's.

    With gradients off (``torch.no_grad()``: a validation loss, ``ELBO.loss``) it runs the program itself and
    neither traces nor uses a graph. A graph traced then would record what the program does only without
    gradients (the Bernoulli log-density's forward-only form, `.detach()`s that are no-ops) and later steps would
    run it with gradients: the compiled ``trace`` loss (Pyro's JIT), first called under ``no_grad``, gave
    gradients off by a relative 1.3 with no error (`tests/test_objectives.py`).
    """

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.fn(*args, **kwargs)
        key = _hashable_args_kwargs(args, kwargs)
        if key not in self.compiled:
            with poutine.block(), poutine.trace(param_only=True) as first_capture:
                self.fn(*args, **kwargs)
            self._param_names = list(first_capture.trace.nodes)
            slot_of_tensor: dict[int, int] = {}
            slots: list[int] = []  # name i -> its tensor's input
            for name in self._param_names:
                slots.append(slot_of_tensor.setdefault(id(pyro.param(name).unconstrained()), len(slot_of_tensor)))
            self._slots = slots
            self._first_names = [self._param_names[slots.index(i)] for i in range(len(slot_of_tensor))]
            weakself = weakref.ref(self)

            def compiled(*params_and_args):
                self = weakself()
                tensors, args = params_and_args[: len(self._first_names)], params_and_args[len(self._first_names):]
                constrained = {}
                for name, slot in zip(self._param_names, self._slots):
                    param = pyro.param(name)  # initialised by the capture above
                    if param.unconstrained() is not tensors[slot]:
                        raise RuntimeError(f"pyro.param({name!r}) is not the tensor passed to the compiled function")
                    constrained[name] = param
                return poutine.replay(self.fn, params=constrained)(*args, **kwargs)

            if self.ignore_warnings:
                compiled = ignore_jit_warnings()(compiled)
            inputs = tuple(pyro.param(name).unconstrained() for name in self._first_names) + args
            with pyro.validation_enabled(False):
                self.jit_options.pop("time_compilation", None)
                self.compiled[key] = torch.jit.trace(compiled, inputs, **self.jit_options)
        else:
            inputs = tuple(pyro.param(name).unconstrained() for name in self._first_names) + args
        with poutine.block(hide=self._param_names), poutine.trace(param_only=True) as capture:
            result = self.compiled[key](*inputs)
        for name in capture.trace.nodes:
            if name not in self._param_names:
                raise NotImplementedError("pyro.ops.jit.trace assumes all params are created on first invocation, "
                                          f"but found new param: {name}")
        return result


class _CompiledWithSharedParameters:
    """Descriptor for the attribute in which a Pyro JIT loss stores its ``pyro.ops.jit.trace`` function: what is
    stored there is re-wrapped as a `SharedParameterFunction` (the same program, compiled on its first call)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__.get(self.name)

    def __set__(self, obj, value) -> None:
        if type(value) is pyro.ops.jit.CompiledFunction:
            value = SharedParameterFunction(value.fn, value.ignore_warnings, value.jit_options)
        obj.__dict__[self.name] = value


class JitTraceELBO(JitTrace_ELBO):
    """``JitTrace_ELBO`` whose ``differentiable_loss`` has the ELBO's gradient, not twice it.

    Pyro 1.9's version returns ``loss + (surrogate - surrogate.detach())`` with
    ``loss`` still attached to the graph inside the compiled function, so its
    gradient is 2x ``Trace_ELBO``'s (Adam hardly notices; SGD would).
    `check_compiled` compares the two, so a change in Pyro shows. Compiled by `SharedParameterFunction`.
    """

    _loss_and_surrogate_loss = _CompiledWithSharedParameters()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class JitTraceMeanFieldELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once and then reuses the compiled loss.

    Pyro 1.9's version stores its compiled function as ``_differentiable_loss``
    but looks for ``_loss_and_surrogate_loss`` before building one, so it never
    finds it: every call builds and traces a new function, which runs the Pyro
    program three times (a warm-up, the trace, the graph) and so draws other
    random numbers than the plain loss on the same seed. That, not the maths,
    is why it failed `check_compiled`; reusing the stored function fixes both. Compiled by
    `SharedParameterFunction`.
    """

    _differentiable_loss = _CompiledWithSharedParameters()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:  # Pyro's method builds it, stores it and runs it
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled(*args, _pyro_model_id=id(model), _pyro_guide_id=id(guide), **kwargs)


class CompiledSurrogate:
    """Mixin: JIT-compile a class's ``loss_and_surrogate_loss(model, guide, *args)`` once, as Pyro's JIT losses do.

    For an objective of our own whose ``loss_and_surrogate_loss`` returns
    tensors (no ``.item()``, which tracing would freeze): put it first in the
    bases, ``class JitMine(CompiledSurrogate, Mine)``. Compiled per
    (model, guide) identity and non-tensor keyword arguments.
    """

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        compiled = self.__dict__.get("_compiled_surrogate")
        if compiled is None:
            weakself = weakref.ref(self)

            def surrogate(*args, **kwargs):
                # model and guide travel as keyword arguments, so each pair is its own compiled key and trace
                model, guide = kwargs.pop("_pyro_model"), kwargs.pop("_pyro_guide")
                return super(CompiledSurrogate, weakself()).loss_and_surrogate_loss(model, guide, *args, **kwargs)

            compiled = SharedParameterFunction(surrogate, self.ignore_jit_warnings, self.jit_options)
            self._compiled_surrogate = compiled
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
    same seed: it recompiled on every call, see `JitTraceMeanFieldELBO`, which passes).
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
        # Pyro's JIT losses are built on torch.jit.trace, deprecated in torch 2.15: nothing a user can change.
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
