"""A function with autograd calls inside, as one frozen graph: the same values and gradients, no autograd at run
time, what depends on closed-over tensors alone computed once."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from pyro_vae.frozen_graph import frozen_graph


def _value_and_gradient(weight: torch.Tensor, x: torch.Tensor):
    """f(z) = sum(tanh(x W) * z^2 * ones) and df/dz, the features tanh(x W) depending on the closed-over tensors
    alone; ``ones`` is made with a device argument, which the graph must carry over to TorchScript."""
    def fn(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            features = torch.tanh(x @ weight)
            value = (features * z.pow(2) * torch.ones(z.shape, device=z.device)).sum()
            (grad,) = torch.autograd.grad(value, z)
        return value.detach(), grad
    return fn


def test_the_graph_gives_the_functions_values_and_gradients_at_other_points():
    torch.manual_seed(0)
    fn = _value_and_gradient(torch.randn(5, 3), torch.randn(4, 5))
    graph = frozen_graph(fn, torch.randn(4, 3))
    for _ in range(3):  # TorchScript profiles the first runs, then optimises: every run must agree
        z = torch.randn(4, 3)
        with torch.no_grad():
            got = graph(z)
        want = fn(z)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_graph_records_no_autograd_and_computes_the_closed_over_part_once():
    """The backward ops are ordinary ops of the graph: outputs with no history even where grad mode is on, and
    no matrix product or tanh left (the features of x and W are a constant), only the ops that involve z."""
    torch.manual_seed(0)
    graph = frozen_graph(_value_and_gradient(torch.randn(5, 3), torch.randn(4, 5)), torch.randn(4, 3))
    value, grad = graph(torch.randn(4, 3))
    assert value.grad_fn is None and grad.grad_fn is None and not grad.requires_grad
    kinds = {node.kind() for node in graph.graph.nodes()}
    assert not kinds & {"aten::mm", "aten::matmul", "aten::tanh"}, kinds
    assert "aten::mul" in kinds


def test_a_value_read_into_python_cannot_be_recorded():
    """What a trace would freeze (a number computed from the input) is an error here, for the caller to fall back
    on, not a graph."""
    def fn(z: torch.Tensor) -> torch.Tensor:
        return z * float(z.abs().max())

    with pytest.raises(RuntimeError, match="data-dependent|value out of a tracing tensor"):
        frozen_graph(fn, torch.randn(3))


def test_a_graph_that_writes_in_place_to_its_input_is_refused():
    """An in-place write to an input (or to a tensor computed once, an input at every call) is refused; one into a
    tensor the graph builds at each call runs."""
    def fn(z: torch.Tensor) -> torch.Tensor:
        return z.add_(1)

    with pytest.raises(RuntimeError, match="writes in place"):
        frozen_graph(fn, torch.randn(3))

    def builds_its_own(z: torch.Tensor) -> torch.Tensor:  # into a tensor made at each call: allowed
        return (z * 2).add_(1)

    z = torch.randn(3)
    torch.testing.assert_close(frozen_graph(builds_its_own, torch.randn(3))(z), z * 2 + 1)


def test_a_tensor_built_in_place_from_constants_is_computed_once():
    """As the full-covariance guide fills its Cholesky factor (``index_put_`` into a tensor of its own): computed
    once, with the right values, where writing to an input is refused (above)."""
    rows, cols = torch.tril_indices(3, 3)
    values = torch.arange(1.0, 7.0)

    def fn(z: torch.Tensor) -> torch.Tensor:
        factor = torch.zeros(3, 3)
        factor[rows, cols] = values
        return z @ factor

    graph = frozen_graph(fn, torch.randn(2, 3))
    z = torch.randn(2, 3)
    torch.testing.assert_close(graph(z), fn(z))
    assert not {node.kind() for node in graph.graph.nodes()} & {"aten::index_put_", "aten::zeros"}


def test_the_graph_holds_no_tensor_and_goes_when_it_goes():
    """The closed-over tensors live as long as the returned function, not as long as the process (a graph compiled
    into TorchScript's global unit keeps its constants for good)."""
    weight = torch.randn(3, 2)
    graph = frozen_graph(lambda z: z @ weight, torch.randn(4, 3))  # the weight is an input of the graph
    graph(torch.randn(4, 3))
    alive = weakref.ref(weight)
    del weight, graph
    gc.collect()
    assert alive() is None


def test_random_draws_and_writes_at_each_call_are_not_computed_once():
    """A random draw, and a tensor of constants written from the input in place, run at every call."""
    def noisy(z: torch.Tensor) -> torch.Tensor:
        return z + torch.randn(3)

    graph = frozen_graph(noisy, torch.zeros(3))
    z = torch.zeros(3)
    assert not torch.equal(graph(z), graph(z))

    rows = torch.tensor([0, 2])

    def filled(z: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(3)
        out[rows] = z[:2] * 2  # a tensor built from constants, written from the input
        return out

    graph = frozen_graph(filled, torch.randn(3))
    for _ in range(2):
        z = torch.randn(3)
        torch.testing.assert_close(graph(z), filled(z))
