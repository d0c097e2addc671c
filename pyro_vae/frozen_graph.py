"""A tensor function, its ``torch.autograd.grad`` calls included, as one TorchScript graph that needs no autograd
to run, what depends on no input computed once.

`torch.jit.trace` records a function's forward ops; a gradient of the traced graph then costs an autograd pass at
every call: the tape recorded while the graph runs, and the engine walking it back. For a small function called
thousands of times (AIS's potential at a few chains: one gradient per leapfrog step, tens of ops on tensors of a
few thousand numbers) that bookkeeping takes as long as the arithmetic. ``make_fx`` records instead the ATen ops
that *run*, below autograd, so a function that calls ``torch.autograd.grad`` inside is recorded with its backward
ops as ordinary ops. The ops that read only tensors the function closes over (a model's parameters, the data:
the guide's encoder of x) run once, here; their results, and the closed-over tensors the rest reads, become extra
inputs of the graph, passed at every call; dead code elimination drops what no output needs. The rest is
compiled by TorchScript into a compilation unit of its own, which goes when the returned function goes. Called on
inputs that do not require grad (AIS calls it under ``torch.no_grad``), it records no tape.

Like any trace, the graph is right only for inputs of the traced shapes, dtypes, devices and memory layout
(``make_fx`` records a reshape as a view or as a copy by the example's strides: pass dense inputs), and only for
the Python control flow taken at the example: a caller checks it against the function at other points before
using it (AIS: `inference.estimators.ais_potential`). An in-place write the graph cannot keep right is refused,
and random draws run at every call. ``make_fx`` lives in ``torch.fx.experimental`` and the code FX writes is read
by TorchScript's own parser: a torch release may change either, and any failure here is an exception for the
caller to fall back on.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable

import torch


def frozen_graph(fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
                 *example: torch.Tensor) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
    """``fn`` recorded by ``make_fx`` at ``example`` (positional tensors), backward ops included, its constant part
    computed once, the rest compiled by TorchScript: call the result as ``fn`` (same arguments, a tensor or a tuple
    of tensors back) on inputs laid out as ``example`` (same shapes, dtypes and devices, dense). Its ``graph`` is
    the TorchScript graph that runs.

    Raises whatever recording or scripting raises (an op TorchScript cannot express, a tensor turned into a Python
    number inside ``fn``, ...); the graph is not checked here (module doc)."""
    from torch.fx.experimental.proxy_tensor import make_fx  # an experimental namespace: imported where it is used

    # through a function with no annotations: make_fx copies the return annotation into the code it writes
    recorded = make_fx(lambda *args: fn(*args))(*example)
    constants = _fold_constants(recorded)
    for node in recorded.graph.nodes:
        if isinstance(node.target, torch._ops.OpOverload):  # TorchScript resolves aten.mul, not aten.mul.Tensor
            node.target = node.target.overloadpacket
        # TorchScript reads a device as its name ("cuda:1"), not as the torch.device that make_fx writes
        node.kwargs = {k: str(v) if isinstance(v, torch.device) else v for k, v in node.kwargs.items()}
    recorded.recompile()
    # compiled into a compilation unit of its own, which goes when the graph goes: one compiled by `torch.jit.script`
    # stays in TorchScript's global unit for the life of the process, and with it what its executor keeps of its
    # runs (about 9 MB a graph in AIS at 100 images x 4 chains, BENCHMARKS.md)
    namespace = recorded.forward.__globals__
    unit = torch.jit.CompilationUnit()
    unit.define(_script_source(recorded.code), rcb=lambda name: namespace.get(name, getattr(builtins, name, None)))
    function = unit.forward

    def graph(*inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return function(*inputs, *constants)

    graph.graph = function.graph  # what runs, for a reader (and tests)
    return graph


def _writes_in_place(node: torch.fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable


def _written(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The tensors an in-place op writes to (its schema's written arguments, ``out=`` ones included)."""
    written = []
    for i, argument in enumerate(node.target._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
            written += [value] if isinstance(value, torch.fx.Node) else []
    return written


def _origin(node: torch.fx.Node) -> torch.fx.Node:
    """The tensor a chain of in-place writes (``x.neg_().exp_()``: each names the one before) writes into."""
    while _writes_in_place(node) and _written(node):
        node = _written(node)[0]
    return node


def _builds_its_own(node: torch.fx.Node) -> bool:
    """Whether ``node`` is an op whose result is a new tensor (no view of its inputs, by its schema)."""
    return (isinstance(node.target, torch._ops.OpOverload) and not _writes_in_place(node)
            and all(r.alias_info is None for r in node.target._schema.returns))


def _random(node: torch.fx.Node) -> bool:
    """Whether ``node`` draws random numbers: it must run at every call, never once."""
    return isinstance(node.target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in node.target.tags


def _script_source(code: str) -> str:
    """The code FX writes for a graph, as TorchScript's own parser reads it: a function (no ``self``, the graph
    holds no attribute), and no ``;  a = b = None`` after a statement (FX's hints that frees values early)."""
    lines = [re.sub(r";\s+(\w+ = )+None$", "", line) for line in code.splitlines()]
    return "\n".join(lines).replace("def forward(self, ", "def forward(", 1)


def _fold_constants(recorded: torch.fx.GraphModule) -> list[torch.Tensor]:
    """Compute once every node of ``recorded`` that depends on no input and draws no random number, and make each
    such tensor the graph reads an input after the function's own; returns those tensors, in that order (edits
    ``recorded`` in place). They are computed from the closed-over tensors as they are now: rebuild the graph after
    those change.

    An in-place write must go to a tensor the graph builds itself (by an op that is no view). Where everything it
    reads is computed once and only in-place writes read that tensor before it (the full-covariance guide fills its
    Cholesky factor by ``index_put_``), it is computed once too; else that tensor is built at every call. Any other
    in-place write is refused (`RuntimeError`): it could write to an input, or to a tensor the graph reads again
    at every call."""
    recorded.graph.eliminate_dead_code()  # first: a constant only dead code reads is not kept
    nodes = list(recorded.graph.nodes)
    writes = [(node, target) for node in nodes if _writes_in_place(node) for target in _written(node)]
    for node, target in writes:
        if not _builds_its_own(_origin(target)):
            raise RuntimeError(f"the recorded graph writes in place ({node.target}) to a tensor it does not build "
                               "itself: not compiled")
    at_each_call: set[torch.fx.Node] = set()
    while True:
        constant: set[torch.fx.Node] = set()
        for node in nodes:
            if node.op == "get_attr" or (node.op == "call_function" and node not in at_each_call and not _random(node)
                                         and all(n in constant for n in node.all_input_nodes)):
                constant.add(node)
        # a tensor written at every call, or read before a write computed once, is built at every call
        late = {_origin(target) for node, target in writes if _origin(target) in constant and (
            node not in constant or any(not _writes_in_place(user) for user in target.users))}
        if not late:
            break
        at_each_call |= late
    values: dict[torch.fx.Node, object] = {}
    with torch.no_grad():
        for node in nodes:
            if node.op == "get_attr":
                values[node] = getattr(recorded, node.target)
            elif node in constant:
                value = node.target(*torch.fx.node.map_arg(node.args, values.__getitem__),
                                    **torch.fx.node.map_arg(node.kwargs, values.__getitem__))
                values[node] = value.detach() if isinstance(value, torch.Tensor) else value
    first_op = next(n for n in nodes if n.op != "placeholder")
    constants = []
    for node, value in values.items():
        if all(user in values for user in node.users):
            continue  # read only by what is computed here: not needed at run time
        if not isinstance(value, torch.Tensor):
            raise RuntimeError(f"a value computed once, {type(value).__name__}, is read at every call: not compiled")
        with recorded.graph.inserting_before(first_op):
            lifted = recorded.graph.placeholder(f"constant_{len(constants)}")
        node.replace_all_uses_with(lifted, delete_user_cb=lambda user: user not in values)
        constants.append(value)
    for node in reversed(nodes):  # what is computed here, in-place writes included, no longer runs in the graph
        if node in values and not node.users:
            recorded.graph.erase_node(node)
    for name, _ in list(recorded.named_buffers()) + list(recorded.named_parameters()):
        delattr(recorded, name)
    for name in [n for n, v in vars(recorded).items() if isinstance(v, torch.Tensor)]:
        delattr(recorded, name)
    return constants
