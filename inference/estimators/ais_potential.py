r"""AIS's potential: the chains' densities and their gradients, by autograd or compiled.

`Target` holds, for C chains of B datapoints at unconstrained latents u (one tensor per latent site, `Site`),

    log base(u) = log q(z|x) or log p(z),        log target(u) = log p(x, z),        z = T(u),

both float64 ``[C, B]`` with log|dz/du| added, from Pyro traces of the model and the guide conditioned on z
(`inference.estimators.importance.trace_sum`). A transition of HMC needs of them (`Derivatives`): at its end
point the two values and the two gradients in u (`evaluate`), at the positions inside it only the gradient of
log f_b = (1 - b) log base + b log target (`gradient`: one backward pass seeded by 1 - b and b, `backward_seeds`).

Plainly (`Autograd`) each evaluation runs Pyro's programs and ``torch.autograd.grad``. ``compile`` replaces it,
once per batch (the data are the graphs' constants), by the first form of `COMPILED_FORMS` that builds and agrees
with the plain one at two points (shapes, dtypes, values within `AIS_COMPILE_RTOL`):

- ``graphs`` (`GradientGraphs`): the two evaluations, values and gradients, each recorded with its backward ops as
  one graph (`pyro_vae.frozen_graph`): no autograd at run time, and only the backward ops a leapfrog gradient
  needs;
- ``traced`` (`traced_autograd`): the potential traced by ``torch.jit.trace``, differentiated by autograd at every
  evaluation, for models whose ops cannot be recorded so (the IAF guide's inverse indexes by a tensor).

Either way what depends on the data and the parameters alone (the guide's encoder of x) is computed once; the
parameters are frozen for the run (`frozen_parameters`). Where no form agrees, AIS runs the plain potential and
warns once. `evaluate` and `gradient` count the chains' evaluations (``Target.evaluations``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from torch.distributions.transforms import Transform

from inference.estimators.importance import Layout, sum_within_datapoint, trace_sum
from pyro_vae.agreement import failure_cause, relative_difference
from pyro_vae.errors import CompileError
from pyro_vae.frozen_graph import frozen_graph

#: How far a compiled potential (values and gradients) may sit from the plain one, relative to the plain value's
#: largest magnitude, before AIS falls back to the plain one.
AIS_COMPILE_RTOL = 1e-5


@dataclass(frozen=True)
class Site:
    """Where a latent site's chains and datapoints sit in its value ``[C, ..., B, ..., *event]``."""

    name: str
    transform: Transform | None  # unconstrained -> the site's support (None: the identity)
    event_dim: int  # of the constrained value z
    data_pos: int  # index of the data dim in the value

    @property
    def u_event_dim(self) -> int:
        """Event dims of the unconstrained value u (a bijection may change the rank: LKJ's Cholesky factor)."""
        return self.event_dim if self.transform is None else self.transform.domain.event_dim + (
            self.event_dim - self.transform.codomain.event_dim)

    def per_chain(self, v: torch.Tensor, ndim: int) -> torch.Tensor:
        """A ``[C, B]`` tensor viewed to broadcast against this site's value (``ndim`` dims)."""
        shape = [1] * ndim
        shape[0], shape[self.data_pos] = v.shape
        return v.reshape(shape)


class Target:
    """log base(z) and log p(x, z) at unconstrained latents ``u``: float64 ``[C, B]``, log|dz/du| in both.

    Calling it runs the Pyro programs. The chains read values and gradients through ``derivatives``
    (`Derivatives`): autograd over the call, or after `compile` a faster form of the same. ``evaluations`` counts
    the chains' evaluations (`evaluate`, `gradient`)."""

    def __init__(self, model: Callable, guide: Callable, x: torch.Tensor, layout: Layout, sites: list[Site],
                 num_chains: int, init: str):
        self.model, self.guide, self.x, self.layout, self.sites = model, guide, x, layout, sites
        self.num_chains, self.init = num_chains, init
        self.latents = tuple(s.name for s in sites)
        self.derivatives: Derivatives = Autograd(self)
        self.compiled_form: str | None = None  # the key of `COMPILED_FORMS` in use, after `compile`
        self.evaluations = 0

    @property
    def compiled(self) -> bool:
        return self.compiled_form is not None

    def compile(self, u: dict[str, torch.Tensor]) -> None:
        """Use the first compiled form of the derivatives (`COMPILED_FORMS`) that builds at ``u`` (this batch's
        shapes) and agrees with the plain one at ``u`` and at a second point (a value computed in Python from u
        would be frozen): the same shapes and dtypes, values within `AIS_COMPILE_RTOL`. Where none does, warn in
        one line and keep the plain one."""
        points = (u, {n: v + 0.5 * torch.randn_like(v) for n, v in u.items()})
        plain = [_outputs(self.derivatives, point) for point in points]
        causes: list[str] = []
        for form, build in COMPILED_FORMS.items():
            try:
                candidate = build(self, u)
                for point, wanted in zip(points, plain):
                    for name, got in _outputs(candidate, point).items():
                        want = wanted[name]
                        if got.shape != want.shape or got.dtype != want.dtype:
                            raise CompileError(f"the compiled AIS potential gives {name} as {got.dtype} "
                                               f"{list(got.shape)}, the plain one as {want.dtype} {list(want.shape)}")
                        difference = relative_difference(got, want)
                        if not difference <= AIS_COMPILE_RTOL:
                            raise CompileError(f"the compiled and the plain AIS potential differ (in {name}: "
                                               f"relative difference {difference:.2g})")
            except Exception as e:  # noqa: BLE001 - any failure to build or to agree means: do not use it
                causes.append(f"{form}: {failure_cause(e)}")
                continue
            self.derivatives, self.compiled_form = candidate, form
            return
        warnings.warn(f"AIS runs its potential uncompiled: {'; '.join(causes)}", RuntimeWarning, stacklevel=3)

    def _sum(self, trace: poutine.Trace, names: Sequence[str]) -> torch.Tensor:
        return trace_sum(trace, names, self.layout.particle_dim, self.num_chains, len(self.x))

    def __call__(self, u: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_jacobian = {}, 0.0
        for s in self.sites:
            if s.transform is None:
                z[s.name] = u[s.name]
                continue
            z[s.name] = s.transform(u[s.name])
            ladj = s.transform.log_abs_det_jacobian(u[s.name], z[s.name])
            extra = s.event_dim - s.transform.codomain.event_dim
            if extra:
                ladj = ladj.sum(list(range(-extra, 0)))
            log_jacobian = log_jacobian + sum_within_datapoint(s.name, ladj, s.data_pos - ladj.dim(),
                                                               self.layout.particle_dim, self.num_chains, len(self.x))
        with pyro.plate("_chains", self.num_chains, dim=self.layout.particle_dim):
            model_trace = poutine.trace(poutine.condition(self.model, data=z)).get_trace(self.x)
            target = self._sum(model_trace, self.layout.model_sites)
            if self.init == "guide":
                guide_trace = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(self.x)
                base = self._sum(guide_trace, self.latents)
            else:
                base = self._sum(model_trace, self.latents)
        if isinstance(log_jacobian, float):  # every latent unconstrained: nothing to add
            return base, target
        return base + log_jacobian, target + log_jacobian


# --- values and gradients: autograd, or a compiled form -------------------------------------

@dataclass
class State:
    """Chains at ``u`` with log base, log target (``[C, B]``) and their gradients in u."""

    u: dict[str, torch.Tensor]
    base: torch.Tensor
    target: torch.Tensor
    grad_base: dict[str, torch.Tensor]
    grad_target: dict[str, torch.Tensor]

    def log_f(self, b: float) -> torch.Tensor:
        return torch.lerp(self.base, self.target, b)

    def grad_log_f(self, b: float) -> dict[str, torch.Tensor]:
        return {n: torch.lerp(g, self.grad_target[n], b) for n, g in self.grad_base.items()}


class Derivatives:
    """What a chain needs of the potential at ``u``: `state` (log base, log target and both their gradients: a
    transition's end point) and `gradient` (grad log f_b alone, from the backward pass's `backward_seeds`: the leapfrog
    positions inside a transition, whose values nothing reads)."""

    def state(self, u: dict[str, torch.Tensor]) -> State:
        raise NotImplementedError

    def gradient(self, u: dict[str, torch.Tensor], seeds: tuple[torch.Tensor, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Autograd(Derivatives):
    """The derivatives by ``torch.autograd.grad`` through ``potential`` (``u -> (log base, log target)``): the
    Pyro programs themselves, or their traced graph."""

    def __init__(self, potential: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]):
        self.potential = potential

    def state(self, u: dict[str, torch.Tensor]) -> State:
        """One forward pass, then two backward passes (the second only through the base, which does not depend
        on the decoder)."""
        u = {n: v.detach().requires_grad_(True) for n, v in u.items()}
        with torch.enable_grad():
            base, tgt = self.potential(u)
            leaves = list(u.values())
            ones = torch.ones_like(tgt)  # the backward passes' seeds, in place of a sum in the graph
            g_target = torch.autograd.grad(tgt, leaves, ones, retain_graph=True, allow_unused=True)
            g_base = torch.autograd.grad(base, leaves, ones, allow_unused=True)
        return State({n: v.detach() for n, v in u.items()}, base.detach(), tgt.detach(), _filled(u, g_base),
                     _filled(u, g_target))

    def gradient(self, u: dict[str, torch.Tensor], seeds: tuple[torch.Tensor, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
        """One backward pass of (1 - b) log base + b log target; the weights enter as its seeds, no ops of their
        own in the graph."""
        u = {n: v.detach().requires_grad_(True) for n, v in u.items()}
        with torch.enable_grad():
            base, tgt = self.potential(u)
            grads = torch.autograd.grad((base, tgt), list(u.values()), seeds, allow_unused=True)
        return _filled(u, grads)


def _filled(u: dict[str, torch.Tensor], grads: Sequence[torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """``{site: gradient}``, zeros for a latent the output does not depend on."""
    return {n: torch.zeros_like(v) if g is None else g for (n, v), g in zip(u.items(), grads)}


class GradientGraphs(Derivatives):
    """`state` and `gradient` of the plain `Autograd`, each recorded with its backward ops as one graph
    (`pyro_vae.frozen_graph`): no autograd tape at run time, only the backward ops each output needs (the
    leapfrog gradient skips the Bernoulli log-density's forward pass), and the guide's encoder of x computed once.
    The fastest form (BENCHMARKS.md, "AIS throughput", issue 40). Inputs are made dense, as recorded.

    An output that does not depend on ``u`` is computed once, the same tensor at every call: nothing may change
    the outputs in place (nothing in `inference.estimators.ais` does)."""

    def __init__(self, target: Target, u: dict[str, torch.Tensor]):
        plain, self.names = Autograd(target), list(u)

        def state(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            s = plain.state(dict(zip(self.names, values)))
            return (s.base, s.target, *s.grad_base.values(), *s.grad_target.values())

        def gradient(seed_base: torch.Tensor, seed_target: torch.Tensor, *values: torch.Tensor
                     ) -> tuple[torch.Tensor, ...]:
            return tuple(plain.gradient(dict(zip(self.names, values)), (seed_base, seed_target)).values())

        values = self._inputs(u)
        with pyro.validation_enabled(False):
            self.state_graph = frozen_graph(state, *values)
            like = torch.zeros(target.num_chains, len(target.x), dtype=torch.float64, device=target.x.device)
            seeds = backward_seeds(like, 0.5)  # log base and log target are float64 [C, B] (`sum_within_datapoint`)
            self.gradient_graph = frozen_graph(gradient, *seeds, *values)

    def state(self, u: dict[str, torch.Tensor]) -> State:
        out = self.state_graph(*self._inputs(u))
        k = len(self.names)
        return State(dict(u), out[0], out[1], dict(zip(self.names, out[2 : 2 + k])),
                     dict(zip(self.names, out[2 + k :])))

    def gradient(self, u: dict[str, torch.Tensor], seeds: tuple[torch.Tensor, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.gradient_graph(*seeds, *self._inputs(u))))

    def _inputs(self, u: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        # dense, when recorded and at every call: a view recorded on a dense input fails on an expanded one, and
        # one recorded on an expanded input copies at every call (BDMC's exact start is expanded over chains)
        return [u[n].contiguous() for n in self.names]


def traced_autograd(target: Target, u: dict[str, torch.Tensor]) -> Autograd:
    """Autograd through the potential traced by ``torch.jit.trace`` at ``u``. The latents are the graph's only
    inputs: the data and every parameter (frozen for the run, `frozen_parameters`: AIS does not change them)
    are constants, so constant propagation computes once what depends on them alone (the guide's encoder of x,
    the prior's parameters) instead of at every evaluation."""
    names = list(u)

    def flat(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return target(dict(zip(names, values)))

    with warnings.catch_warnings(), pyro.validation_enabled(False), torch.enable_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # what `compile`'s check settles
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace. is deprecated", category=FutureWarning)
        graph = torch.jit.trace(flat, tuple(u[n].detach().requires_grad_(True) for n in names), check_trace=False)
    fold = getattr(torch._C, "_jit_pass_constant_propagation", None)
    if fold is not None:  # an optimisation only: without it the graph is right, and slower
        fold(graph.graph)

    def traced(point: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return graph(*(point[n] for n in names))

    return Autograd(traced)


#: The compiled forms `Target.compile` tries, fastest first, by name (`AISEstimate.compiled_form`): the graphs
#: with their backward ops (which some models' ops cannot be recorded into), then autograd through the traced
#: potential.
COMPILED_FORMS: dict[str, Callable[[Target, dict[str, torch.Tensor]], Derivatives]] = {
    "graphs": GradientGraphs, "traced": traced_autograd}


@contextlib.contextmanager
def frozen_parameters(*programs: Callable) -> Iterator[None]:
    """The programs' parameters (`_parameters`) with ``requires_grad`` off for the duration, restored after.

    AIS differentiates in the latents only; the traced graph holds the parameters as constants, which
    TorchScript cannot run while they require grad (it fails on its second call, once it optimises the graph)."""
    frozen = [p for p in _parameters(*programs) if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with warnings.catch_warnings():
            # pyro.module says so on every call of a frozen module's program: the point here, not a problem
            warnings.filterwarnings("ignore", message=r".*was not registered in the param store because "
                                                      r"requires_grad=False", category=UserWarning)
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _parameters(*programs: Callable) -> list[torch.Tensor]:
    """The tensors a model and guide learn: the parameters of the modules whose methods they are, and Pyro's param
    store (the unconstrained tensors), each once."""
    found: dict[int, torch.Tensor] = {}
    for program in programs:
        owner = getattr(program, "__self__", program)
        if isinstance(owner, torch.nn.Module):
            found.update((id(p), p) for p in owner.parameters())
    store = pyro.get_param_store()
    found.update((id(t), t) for t in (store.get_param(n).unconstrained() for n in store.keys()))
    return list(found.values())


def _outputs(derivatives: Derivatives, u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Log base, log target, their gradients and grad log f_b at b = 0.3 (`Derivatives.gradient`) at ``u``, by
    name: what `Target.compile` compares."""
    state = derivatives.state(u)
    f_b = derivatives.gradient(u, backward_seeds(state.base, 0.3))
    return {"log base": state.base, "log target": state.target,
            **{f"grad log base {n}": g for n, g in state.grad_base.items()},
            **{f"grad log target {n}": g for n, g in state.grad_target.items()},
            **{f"grad log f_b {n}": g for n, g in f_b.items()}}


def evaluate(target: Target, u: dict[str, torch.Tensor]) -> State:
    """The chains' state at ``u`` (one evaluation of every chain, counted in ``target.evaluations``)."""
    target.evaluations += 1
    return target.derivatives.state(u)


def gradient(target: Target, u: dict[str, torch.Tensor], seeds: tuple[torch.Tensor, torch.Tensor]
             ) -> dict[str, torch.Tensor]:
    """grad log f_b at ``u`` alone (one evaluation, counted): for the leapfrog positions inside a transition, whose
    values nothing reads. ``seeds``: `backward_seeds` of b."""
    target.evaluations += 1
    return target.derivatives.gradient(u, seeds)


def backward_seeds(like: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward pass's seeds for grad log f_b, 1 - b for log base and b for log target, shaped ``like [C, B]``."""
    return torch.full_like(like, 1 - b), torch.full_like(like, b)
