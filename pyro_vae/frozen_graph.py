"""A tensor function, its ``torch.autograd.grad`` calls included, as one frozen TorchScript graph that runs with
no autograd at all.

`torch.jit.trace` records a function's forward ops; a gradient of the traced graph then costs an autograd pass at
every call: the tape recorded while the graph runs, and the engine walking it back. For a small function called
thousands of times (AIS's potential at a few chains: one gradient per leapfrog step, tens of ops on tensors of a
few thousand numbers) that bookkeeping takes as long as the arithmetic. ``make_fx`` records instead the ATen ops
that *run*, below autograd, so a function that calls ``torch.autograd.grad`` inside is recorded with its backward
ops as ordinary ops, and only those its outputs need. Scripted and frozen (``torch.jit.freeze``), the tensors the
function closes over (a model's parameters, the data) become constants, constant propagation computes once what
depends on them alone, and the graph runs under ``torch.no_grad``.

Like any trace, the graph is right only for inputs of the traced shapes, dtypes and devices, and only for the
Python control flow taken at the example: a caller checks it against the function at other points before using it
(AIS: `inference.estimators.ais`). ``make_fx`` lives in ``torch.fx.experimental`` and the last steps use two of
TorchScript's graph passes by their private names: a torch release may change them, and any failure here is an
exception for the caller to fall back on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def frozen_graph(fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
                 *example: torch.Tensor) -> torch.jit.ScriptModule:
    """``fn`` recorded by ``make_fx`` at ``example`` (positional tensors), backward ops included, then scripted and
    frozen: call it as ``fn`` (same arguments, a tensor or a tuple of tensors back) on inputs shaped as ``example``.

    Raises whatever recording or scripting raises (an op TorchScript cannot express, a tensor turned into a Python
    number inside ``fn``, ...); the graph is not checked here (module doc)."""
    from torch.fx.experimental.proxy_tensor import make_fx  # an experimental namespace: imported where it is used

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # TorchScript's deprecation notice: settled here
        # scripting a GraphModule says this of torch.nn.Module's own attributes, on every call
        warnings.filterwarnings("ignore", message=r"The TorchScript type system doesn't support instance-level")
        # through a function with no annotations: make_fx copies the return annotation into code TorchScript reads
        recorded = make_fx(lambda *args: fn(*args))(*example)
        for node in recorded.graph.nodes:
            if isinstance(node.target, torch._ops.OpOverload):  # TorchScript resolves aten.mul, not aten.mul.Tensor
                node.target = node.target.overloadpacket
            # TorchScript reads a device as its name ("cuda:1"), not as the torch.device that make_fx writes
            node.kwargs = {k: str(v) if isinstance(v, torch.device) else v for k, v in node.kwargs.items()}
        recorded.recompile()
        scripted = torch.jit.script(recorded)
        remove_mutation = getattr(torch._C, "_jit_pass_remove_mutation", None)
        if remove_mutation is not None:  # in-place ops become out-of-place ones that freezing can fold
            remove_mutation(scripted.graph)
        return torch.jit.freeze(scripted.eval())
