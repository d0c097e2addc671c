r"""log p(x) by annealed importance sampling (AIS), and BDMC sandwich bounds on it.

AIS (Neal 2001) walks from a normalised start f_0 to the unnormalised
posterior f_T(z) = p(x, z) through T intermediate targets

    f_t(z) = q(z|x)^(1 - b_t) p(x, z)^(b_t)        init = "guide"  (Wu et al. 2017)
    f_t(z) = p(z) p(x|z)^(b_t)                      init = "prior"

with 0 = b_0 < b_1 < ... < b_T = 1. A chain draws z_0 ~ f_0, then for t = 1..T
adds log f_t(z_{t-1}) - log f_{t-1}(z_{t-1}) = (b_t - b_{t-1}) log[p(x, z) / base(z)]
to its log weight (base = q(z|x) or p(z)) and moves z by one HMC transition that
leaves f_t invariant (none after the last increment: it cannot change the
weight). Each weight w has E[w] = p(x), so

    log p-hat(x) = log mean_c w_c    (over C chains)

is a stochastic lower bound: E[log p-hat] <= log p(x) (Jensen). With T = 1 it is
importance sampling with C draws from the start distribution.

Run the same chain backwards (BDMC, Grosse et al. 2015) from an exact posterior
sample, which is available for data simulated from the model, (z, x) ~ p(z) p(x|z),
and the reverse weights have E[w_rev] = 1 / p(x): -log mean_c w_rev,c is a
stochastic *upper* bound. The two sandwich log p(x) of simulated data; their
gap bounds the error of forward AIS at that schedule on data like it.

Densities come from Pyro traces of the model and the guide, conditioned on the
chain's z and summed within each datapoint by `inference.estimators.importance`, so any
model/guide pair the importance sampler takes works here: datapoints in
``pyro.plate("data")``, continuous latent sites (several, and constrained ones,
which HMC moves in unconstrained space u = biject_to(support)^-1(z) with the
log-Jacobian added to every f_t). Chains x datapoints run as one batch (a
particle plate left of the model's plates).

HMC: fresh momentum r ~ N(0, I), ``leapfrog_steps`` leapfrog steps, Metropolis
accept/reject. Each chain has its own step size (an ``[C, B]`` tensor), which
`pyro.ops.integrator.velocity_verlet` cannot take (one step size for every
site), hence the few lines of leapfrog here. Step sizes are adapted toward
acceptance 0.65 in a tuning run whose weights are discarded, then frozen: with
transitions fixed before the measured pass, its weights are unbiased for p(x).
``tuning`` says which tuning run (`TUNINGS`):

- ``pilot`` (the default): a short run of T_p = min(T, max(`PILOT_MIN_STEPS`, T // `PILOT_FRACTION`)) steps
  (`pilot_steps`) adapting one step size per datapoint (from its chains' mean acceptance), whose log step size
  is then interpolated linearly in b onto the T-step schedule, eps_i(b), the same for every chain of datapoint
  i; the measured pass costs T transitions, the pilot about T / 10 more;
- ``two-pass``: a full T-step tuning pass, its step sizes replayed (twice the cost).

Both are per image and per chain, so results do not depend on batching. Reverse AIS replays the forward
run's step sizes in reverse order rather than tuning its own: its chains start at the exact draw, and step
sizes that depend on that draw would break E[w_rev] = 1 / p(x).

Cost: each transition of L leapfrog steps evaluates log f and its gradient L times (the gradient at the
start is the last one of the transition before; the weight increment reuses the cached log p(x, z) and
log base). Only the end point needs log base and log target and their two gradients (one backward pass each);
the L - 1 positions inside a transition take one backward pass of log f_b itself. `AISEstimate.gradient_evaluations` counts them per image (chains x evaluations, pilot included).
Each evaluation is one run of the potential, log base(z) and log p(x, z) at every chain, and its gradients
(`inference.estimators.ais_potential`). With ``compiled=True`` (the default) they are compiled once per call, in
the fastest form that agrees with the plain potential (``AISEstimate.compiled_form``: ``graphs``, the values
and gradients with their backward ops, no autograd at run time; else ``traced``); where none agrees, AIS runs
the plain potential and warns once.

Limits: a latent's support may not depend on other latents' values (each
bijection is built once, from the start draws); the guide must have the
model's supports (checked; importance sampling needs that too).

Randomness is keyed by datapoint (``seed``, ``first_index + i``), so for a fixed
seed the result does not depend on how images are batched. Weights are
accumulated in float64. Memory: the chains' state is ``C x B`` latents; the
step-size schedule of the tuning pass is ``T x C x B`` numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample
from torch.distributions.transforms import Transform
from tqdm.auto import tqdm

# inference.ais hands it on; compile reads ais_potential's, so that is the one to change
from inference.estimators.ais_potential import AIS_COMPILE_RTOL  # noqa: F401
from inference.estimators.ais_potential import (Site, State, Target, backward_seeds, evaluate, frozen_parameters,
                                                gradient)
from inference.estimators.importance import data_frame_dim, inspect_programs, sum_within_datapoint
from pyro_vae.device import forked_rng
from pyro_vae.distributed import sharded_map
from pyro_vae.errors import EstimationError
from pyro_vae.seeds import (AIS_DEQUANTIZATION, AIS_FORWARD, AIS_REVERSE, AIS_SIMULATED, AIS_START, AIS_TUNING,
                            AIS_TUNING_START, seed_for)

INITS = ("guide", "prior")
SCHEDULES = ("sigmoid", "linear")
TARGET_ACCEPT = 0.65
#: How fast the tuning pass moves log(step size): += ADAPT_RATE * (acceptance - TARGET_ACCEPT) per transition.
ADAPT_RATE = 0.2
#: Extra transitions at b_0 that move the tuning pass's step sizes from `initial_step_size` toward the target
#: acceptance, at the faster rate `WARMUP_ADAPT_RATE` (up to x1.4 or x0.5 per transition).
WARMUP_TRANSITIONS = 20
WARMUP_ADAPT_RATE = 1.0
SIGMOID_SHARPNESS = 4.0
TUNINGS = ("pilot", "two-pass")
#: The pilot run of ``tuning="pilot"``: max(PILOT_MIN_STEPS, T // PILOT_FRACTION) steps (at most T).
PILOT_FRACTION = 10
PILOT_MIN_STEPS = 10
#: The pilot adapts one step size per datapoint (its chains' mean acceptance: less noisy than one chain's) at
#: this rate, fast enough to follow the posterior's shrinking scale over T_p transitions.
PILOT_ADAPT_RATE = 1.0


@dataclass(frozen=True)
class AISSettings:
    """How AIS anneals each datapoint (the same for `ais_log_marginal`, `dequantized_ais` and `bdmc`).

    ``num_chains`` C chains per datapoint, ``num_steps`` T intermediate distributions on the ``schedule``
    (`SCHEDULES`: ``sigmoid`` or ``linear``), from ``init`` (`INITS`: ``guide``, q(z|x); ``prior``, p(z));
    ``leapfrog_steps`` per HMC transition, starting at ``initial_step_size`` and tuned by ``tuning`` (`TUNINGS`:
    ``pilot``, a T / 10-step pilot run, or ``two-pass``, a full tuning pass); ``compiled``: compile the potential
    (module doc). `with_options` takes the keywords the functions took before this class (``num_chains=...``).
    """

    num_chains: int = 16
    num_steps: int = 1000
    leapfrog_steps: int = 10
    init: str = "guide"
    schedule: str = "sigmoid"
    initial_step_size: float = 0.01
    tuning: str = "pilot"
    compiled: bool = True

    def with_options(self, **options) -> "AISSettings":
        """These settings with ``options`` (field names) changed; `TypeError` for a name that is not a field."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown AIS setting(s) {', '.join(unknown)}; AISSettings has "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **options) if options else self

    def validated(self) -> "AISSettings":
        """``self``, or `EstimationError` naming the first setting AIS cannot run with."""
        _check_positive_ints(num_chains=self.num_chains, num_steps=self.num_steps, leapfrog_steps=self.leapfrog_steps)
        if self.init not in INITS:
            raise EstimationError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.schedule not in SCHEDULES:
            raise EstimationError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.tuning not in TUNINGS:
            raise EstimationError(f"unknown tuning {self.tuning!r}; choose one of {', '.join(TUNINGS)}")
        step = self.initial_step_size
        if isinstance(step, bool) or not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
            raise EstimationError(f"initial_step_size must be a positive finite number, got {step!r}")
        return self


def _settings(settings: AISSettings | None, options: dict) -> AISSettings:
    """``settings`` (default `AISSettings()`) with the keyword ``options`` of an older call, checked."""
    if settings is not None and not isinstance(settings, AISSettings):
        raise TypeError(f"settings must be an AISSettings, got {type(settings).__name__} {settings!r}; pass counts "
                        "by name (num_chains=..., num_steps=...) or as AISSettings(...)")
    return (settings or AISSettings()).with_options(**options).validated()


@dataclass
class AISEstimate:
    """Per-datapoint AIS results (float64 tensors on the CPU), nats.

    ``log_px [B]``: log-mean-exp of the chains' weights (for a reverse run, minus
    that of the reverse weights: an upper bound); ``se [B]``: its Monte Carlo
    standard error over chains (delta method: sd(w) / (sqrt(C) mean(w)));
    ``log_weights [C, B]``; ``acceptance [B]``: mean HMC acceptance probability of
    the returned pass (NaN for T = 1: no transitions); ``step_size [C, B]``: each chain's step size at the last
    transition (tuned in the tuning run, replayed in the returned one). ``gradient_evaluations``: evaluations of
    log f and its gradient per image, over all its chains and both runs (pilot or tuning pass included);
    ``tuning``: `TUNINGS`; ``compiled``: whether a compiled potential ran (False after a fallback), and
    ``compiled_form`` which (a key of `inference.estimators.ais_potential.COMPILED_FORMS`: ``graphs`` or ``traced``;
    None when plain).
    """

    log_px: torch.Tensor
    se: torch.Tensor
    log_weights: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    num_steps: int
    num_chains: int
    leapfrog_steps: int
    gradient_evaluations: int = 0
    tuning: str = "pilot"
    compiled: bool = False
    compiled_form: str | None = None

    def slice(self, start: int, stop: int) -> "AISEstimate":
        """The results of datapoints ``start..stop-1``."""
        return dataclasses.replace(self, log_px=self.log_px[start:stop], se=self.se[start:stop],
                                   log_weights=self.log_weights[:, start:stop],
                                   acceptance=self.acceptance[start:stop], step_size=self.step_size[:, start:stop])

    @staticmethod
    def concat(parts: Sequence["AISEstimate"]) -> "AISEstimate":
        """Join estimates of consecutive batches of datapoints (same settings; ``compiled`` if every part was, and
        ``compiled_form`` where every part ran the same form)."""
        forms = {p.compiled_form for p in parts}
        return dataclasses.replace(parts[0], log_px=torch.cat([p.log_px for p in parts]),
                                   se=torch.cat([p.se for p in parts]),
                                   log_weights=torch.cat([p.log_weights for p in parts], dim=1),
                                   acceptance=torch.cat([p.acceptance for p in parts]),
                                   step_size=torch.cat([p.step_size for p in parts], dim=1),
                                   gradient_evaluations=max(p.gradient_evaluations for p in parts),
                                   compiled=all(p.compiled for p in parts),
                                   compiled_form=forms.pop() if len(forms) == 1 else None)


@dataclass
class Sandwich:
    """BDMC on images simulated from the model: ``x [N, ...]`` and, per image, bounds on log p(x) (float64 ``[N]``)."""

    x: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    forward: AISEstimate
    reverse: AISEstimate

    @property
    def gap(self) -> torch.Tensor:
        """upper - lower, nats: how far forward AIS can be from log p(x) on these images at this schedule."""
        return self.upper - self.lower


def annealing_schedule(num_steps: int, schedule: str = "sigmoid") -> torch.Tensor:
    """b_0 = 0 < ... < b_T = 1 (float64 ``[T + 1]``); sigmoid: Grosse et al. (2015), sharpness 4."""
    if schedule not in SCHEDULES:
        raise EstimationError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if schedule == "linear" or num_steps == 1:
        return t
    s = torch.sigmoid(SIGMOID_SHARPNESS * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _transform_to(support: constraints.Constraint) -> Transform | None:
    """The bijection from unconstrained space onto ``support``; None where the support is all of R^n."""
    return None if _unwrap(support) is constraints.real else biject_to(support)


def _select(accept: torch.Tensor, new: State, old: State, sites: list[Site]) -> State:
    """Per chain: ``new`` where ``accept [C, B]`` is true, else ``old``."""
    def pick(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {s.name: torch.where(s.per_chain(accept, a[s.name].dim()), a[s.name], b[s.name]) for s in sites}

    return State(pick(new.u, old.u), torch.where(accept, new.base, old.base),
                 torch.where(accept, new.target, old.target), pick(new.grad_base, old.grad_base),
                 pick(new.grad_target, old.grad_target))


# --- randomness keyed by datapoint ---------------------------------------------------------

class _Noise:
    """Momenta and uniforms for ``[C, B]`` chains, each datapoint drawn from its own generator."""

    def __init__(self, seeds: Sequence[int], device: torch.device, num_chains: int):
        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.device, self.num_chains = device, num_chains

    def momentum(self, like: dict[str, torch.Tensor], sites: list[Site]) -> dict[str, torch.Tensor]:
        shapes = {s.name: _without(like[s.name].shape, s.data_pos) for s in sites}
        sizes = [math.prod(shapes[s.name]) for s in sites]
        draws = [torch.randn(sum(sizes), generator=g, device=self.device) for g in self.generators]
        out = {}
        offset = 0
        for s, size in zip(sites, sizes):
            pieces = [d[offset : offset + size].reshape(shapes[s.name]) for d in draws]
            out[s.name] = torch.stack(pieces, dim=s.data_pos).to(like[s.name].dtype)
            offset += size
        return out

    def uniform(self) -> torch.Tensor:
        return torch.stack([torch.rand(self.num_chains, generator=g, device=self.device, dtype=torch.float64)
                            for g in self.generators], dim=1)


def _without(shape: torch.Size, pos: int) -> tuple[int, ...]:
    return tuple(shape[:pos]) + tuple(shape[pos + 1 :])


# --- one pass of AIS ------------------------------------------------------------------------

def _kinetic(r: dict[str, torch.Tensor], sites: list[Site], target: Target) -> torch.Tensor:
    total = 0.0
    for s in sites:
        sq = r[s.name].double().pow(2)
        if s.u_event_dim:
            sq = sq.sum(list(range(-s.u_event_dim, 0)))
        total = total + sum_within_datapoint(s.name, sq, s.data_pos - sq.dim(), target.layout.particle_dim,
                                             target.num_chains, len(target.x))
    return 0.5 * total


def _hmc(target: Target, state: State, b: float, step_size: torch.Tensor, leapfrog_steps: int,
         noise: _Noise) -> tuple[State, torch.Tensor]:
    """One HMC transition leaving f_b invariant, for every chain at once; returns the state and acceptance [C, B]."""
    sites = target.sites
    eps = {s.name: s.per_chain(step_size, state.u[s.name].dim()).to(state.u[s.name].dtype) for s in sites}
    half = {n: 0.5 * e for n, e in eps.items()}
    r0 = noise.momentum(state.u, sites)
    seeds = backward_seeds(state.base, b)
    grad, u, new = state.grad_log_f(b), state.u, state
    r = {n: r0[n].addcmul(half[n], grad[n]) for n in r0}  # the first half step of the momentum
    for step in range(leapfrog_steps):
        u = {n: u[n].addcmul(eps[n], r[n]) for n in u}
        if step < leapfrog_steps - 1:  # a half step to end this leapfrog step, a half step to start the next: one
            grad = gradient(target, u, seeds)
            r = {n: r[n].addcmul(eps[n], grad[n]) for n in r}
        else:  # the end point: its values decide acceptance, its two gradients start the next transition
            new = evaluate(target, u)
            grad = new.grad_log_f(b)
            r = {n: r[n].addcmul(half[n], grad[n]) for n in r}
    log_accept = (new.log_f(b) - _kinetic(r, sites, target)) - (state.log_f(b) - _kinetic(r0, sites, target))
    acceptance = torch.exp(log_accept.clamp(max=0)).nan_to_num(nan=0.0)  # a diverged proposal is rejected
    accept = noise.uniform() < acceptance
    return _select(accept, new, state, sites), acceptance


@dataclass(frozen=True)
class _Pass:
    """One annealing pass of `_run`: its label for the progress bar, and how a tuning pass adapts (``adapt_rate``;
    ``pooled``: one step size per datapoint from its chains' mean acceptance, else each chain's own)."""

    desc: str
    adapt_rate: float = ADAPT_RATE
    pooled: bool = False


def _anneal(target: Target, start: dict[str, torch.Tensor], betas: torch.Tensor, noise: _Noise,
            step_sizes: torch.Tensor | None, settings: AISSettings, run: _Pass,
            progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the chains from ``start`` along ``betas``; return (log weights ``[C, B]``, mean acceptance ``[B]``, step sizes).

    ``step_sizes [T-1, C, B]`` replays a schedule (frozen); ``None`` adapts one from ``settings.initial_step_size``
    (the tuning pass), returned as the third item: log step size += ``run.adapt_rate`` (acceptance - 0.65) per
    transition, each chain's own, or with ``run.pooled`` one per datapoint from its chains' mean acceptance.
    """
    leapfrog_steps, adapt_rate, pooled = settings.leapfrog_steps, run.adapt_rate, run.pooled
    with pyro.validation_enabled(False):  # a diverged leapfrog gives NaN parameters: rejected, not an exception
        state = evaluate(target, start)
        num_steps = len(betas) - 1
        log_w = torch.zeros_like(state.base)
        accept_sum = torch.zeros_like(state.base)
        tuning = step_sizes is None
        if tuning:
            log_eps = torch.full_like(state.base, math.log(settings.initial_step_size))
            schedule = []
            for _ in range(WARMUP_TRANSITIONS if num_steps > 1 else 0):  # T = 1 has no transition to tune
                state, acc = _hmc(target, state, betas[0].item(), log_eps.exp(), leapfrog_steps, noise)
                log_eps = log_eps + WARMUP_ADAPT_RATE * ((acc.mean(0) if pooled else acc) - TARGET_ACCEPT)
        for t in tqdm(range(1, num_steps + 1), desc=run.desc, disable=not progress, leave=False):
            b_prev, b = betas[t - 1].item(), betas[t].item()
            log_w = log_w + (b - b_prev) * (state.target - state.base)
            if t == num_steps:
                break
            eps = log_eps.exp() if tuning else step_sizes[t - 1].to(log_w)
            state, acc = _hmc(target, state, b, eps, leapfrog_steps, noise)
            accept_sum += acc
            if tuning:
                schedule.append(eps.float())
                log_eps = log_eps + adapt_rate * ((acc.mean(0) if pooled else acc) - TARGET_ACCEPT)
    # with T = 1 there is no transition (plain importance sampling): no acceptance to report
    acceptance = (accept_sum / (num_steps - 1)).mean(0) if num_steps > 1 else torch.full_like(log_w[0], float("nan"))
    if tuning:
        step_sizes = torch.stack(schedule) if schedule else log_eps.exp().float()[None]
    return log_w, acceptance, step_sizes


def pilot_steps(num_steps: int) -> int:
    """T_p, the steps of the pilot run that tunes a T-step run's step sizes under ``tuning="pilot"``."""
    return min(num_steps, max(PILOT_MIN_STEPS, num_steps // PILOT_FRACTION))


def _interpolated(pilot_betas: torch.Tensor, pilot_step_sizes: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """Step sizes ``[T-1, C, B]`` at the transitions of ``betas`` (b_1..b_{T-1}) from a pilot's ``[T_p-1, C, B]``
    at its own b_1..b_{T_p-1}: log step size linear in b between the pilot's points, constant beyond them."""
    src, dst = pilot_betas[1:-1], betas[1:-1]
    if len(dst) == 0 or len(src) <= 1:
        return pilot_step_sizes[:1].expand(max(len(dst), 1), *pilot_step_sizes.shape[1:]).clone()
    log_eps = pilot_step_sizes.double().log()
    hi = torch.searchsorted(src, dst).clamp(1, len(src) - 1)
    lo = hi - 1
    w = ((dst - src[lo]) / (src[hi] - src[lo])).clamp(0, 1).to(log_eps.device).view(-1, 1, 1)
    return ((1 - w) * log_eps[lo] + w * log_eps[hi]).exp().to(pilot_step_sizes.dtype)


# --- setting up ---------------------------------------------------------------------------

def _latent_sites(trace: poutine.Trace, names: Sequence[str], particle_dim: int) -> list[Site]:
    """`Site` of each latent in a chains-plated model ``trace``; `EstimationError` for a discrete one."""
    sites = []
    for name in names:
        node = trace.nodes[name]
        fn = node["fn"]
        if fn.support.is_discrete:
            raise EstimationError(f"latent site {name!r} is discrete ({type(fn).__name__}); AIS moves latents with "
                                  "HMC, which needs continuous ones. Use inference.importance for this model")
        sites.append(Site(name, _transform_to(fn.support), fn.event_dim, -particle_dim + data_frame_dim(name, node)))
    return sites


def _check_positive_ints(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EstimationError(f"{name} must be a positive integer, got {value!r}")


def _latent_names(model: Callable, guide: Callable, x: torch.Tensor) -> tuple[str, ...]:
    """The model's latent sites, checked against the guide's: the same sites, with the same supports.

    Runs before `inspect_programs`, which replays the model on the guide's draws
    and would fail inside the model on a draw outside the model's support.
    """
    with poutine.block():
        model_trace = poutine.trace(model).get_trace(x)
        guide_trace = poutine.trace(guide).get_trace(x)

    def latent_sites(trace: poutine.Trace) -> dict[str, dict]:
        return {n: site for n, site in trace.nodes.items()
                if site["type"] == "sample" and not site_is_subsample(site) and not site["is_observed"]}

    latents, proposed = latent_sites(model_trace), latent_sites(guide_trace)
    extra = [n for n in proposed if n not in latents]
    if extra:
        raise EstimationError(f"guide site(s) {extra} are not latent sites of the model; AIS anneals between q(z|x) "
                              "and p(x, z) on the same z")
    for name in latents.keys() & proposed.keys():
        ours, theirs = _unwrap(proposed[name]["fn"].support), _unwrap(latents[name]["fn"].support)
        if type(ours) is not type(theirs):
            raise EstimationError(f"guide site {name!r} has support {ours} but the model's has {theirs}; AIS from "
                                  "the guide needs the guide to propose inside the model's support")
    return tuple(latents)


def _unwrap(support: constraints.Constraint) -> constraints.Constraint:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _start_draws(program: Callable, x: torch.Tensor, names: Sequence[str], particle_dim: int, num_chains: int,
                 seed: int, stream: int, first_index: int) -> dict[str, torch.Tensor]:
    """C draws per datapoint from ``program``, each datapoint run alone with its own seed: ``{site: [C, ..., B, ...]}``."""
    traces = []
    for i in range(len(x)):
        torch.manual_seed(seed_for(seed, stream, first_index + i))
        with pyro.plate("_chains", num_chains, dim=particle_dim):
            traces.append(poutine.trace(program).get_trace(x[i : i + 1]))
    return {n: torch.cat([t.nodes[n]["value"].detach() for t in traces],
                         dim=-particle_dim + data_frame_dim(n, traces[0].nodes[n])) for n in names}


def _summary(log_w: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log-mean-exp over chains (times ``sign``) and its delta-method standard error: ``[B]`` each."""
    num = log_w.shape[0]
    lme = torch.logsumexp(log_w, 0) - math.log(num)
    if num < 2:
        return sign * lme, torch.full_like(lme, float("nan"))
    w = torch.exp(log_w - log_w.max(0).values)
    se = w.std(0) / (math.sqrt(num) * w.mean(0))
    return sign * lme, se


def _run(model: Callable, guide: Callable, x: torch.Tensor, settings: AISSettings, seed: int, first_index: int,
         progress: bool, exact: dict[str, torch.Tensor] | None = None,
         step_sizes: torch.Tensor | None = None) -> tuple[AISEstimate, torch.Tensor]:
    """Forward AIS (a tuning run, ``settings.tuning``, then the returned pass); or, given ``exact`` posterior
    draws ``{site: [C, ..., B, ...]}`` and a forward run's ``step_sizes``, reverse AIS with that schedule reversed.

    The reverse run must not tune on its own chains: they start at the exact
    draw, and step sizes that depend on it would break E[w_rev] = 1 / p(x).
    The forward schedule depends on x only. Returns the estimate and the step
    sizes ``[T-1, C, B]`` its transitions used.
    """
    if len(x) == 0:
        raise EstimationError("the batch of datapoints is empty")
    num_chains, num_steps, init, tuning = settings.num_chains, settings.num_steps, settings.init, settings.tuning
    reverse = exact is not None
    betas = annealing_schedule(num_steps, settings.schedule)
    noise = lambda stream: _Noise([seed_for(seed, stream, first_index + i) for i in range(len(x))],  # noqa: E731
                                  x.device, num_chains)
    with torch.no_grad(), forked_rng(x.device):
        # before freezing: a PyroModule's first run puts its parameters in the param store, as new tensors
        latents = _latent_names(model, guide, x)
    with torch.no_grad(), forked_rng(x.device), frozen_parameters(model, guide):
        layout = inspect_programs(model, guide, x)
        if reverse:
            starts = {"returned": exact}
        else:
            program = guide if init == "guide" else poutine.block(model, hide_fn=lambda site: site["is_observed"])
            starts = {pass_: _start_draws(program, x, latents, layout.particle_dim, num_chains, seed, stream,
                                          first_index)
                      for pass_, stream in (("tuning", AIS_TUNING_START), ("returned", AIS_START))}
        with pyro.plate("_chains", num_chains, dim=layout.particle_dim):
            chains_trace = poutine.trace(poutine.condition(model, data=starts["returned"])).get_trace(x)
        sites = _latent_sites(chains_trace, latents, layout.particle_dim)
        target = Target(model, guide, x, layout, sites, num_chains, init)
        u = {pass_: {s.name: z[s.name] if s.transform is None else s.transform.inv(z[s.name]) for s in sites}
             for pass_, z in starts.items()}
        if settings.compiled:
            target.compile(u["returned"])
        if reverse:
            log_w, acceptance, step_sizes = _anneal(target, u["returned"], betas.flip(0), noise(AIS_REVERSE),
                                                    step_sizes.flip(0), settings, _Pass("reverse AIS"), progress)
        else:
            if tuning == "two-pass":
                _, _, step_sizes = _anneal(target, u["tuning"], betas, noise(AIS_TUNING), None, settings,
                                           _Pass("AIS (tuning)"), progress)
            else:
                pilot_betas = annealing_schedule(pilot_steps(num_steps), settings.schedule)
                _, _, pilot = _anneal(target, u["tuning"], pilot_betas, noise(AIS_TUNING), None, settings,
                                      _Pass("AIS (pilot)", PILOT_ADAPT_RATE, pooled=True), progress)
                step_sizes = _interpolated(pilot_betas, pilot, betas)
            log_w, acceptance, _ = _anneal(target, u["returned"], betas, noise(AIS_FORWARD), step_sizes, settings,
                                           _Pass("AIS"), progress)
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        bad = (torch.isnan(log_w) | (log_w == float("inf"))).any(0).nonzero().flatten().tolist()
        raise EstimationError(f"AIS log weights are NaN or +inf for datapoints {bad[:10]}"
                              f"{'...' if len(bad) > 10 else ''}; check the model's parameters and the data")
    log_px, se = _summary(log_w.cpu(), -1.0 if reverse else 1.0)
    estimate = AISEstimate(log_px, se, log_w.cpu(), acceptance.cpu(), step_sizes[-1].double().cpu(), num_steps,
                           num_chains, settings.leapfrog_steps, target.evaluations * num_chains, tuning,
                           target.compiled, target.compiled_form)
    return estimate, step_sizes


def ais_log_marginal(model: Callable, guide: Callable, x: torch.Tensor, settings: AISSettings | None = None, *,
                     seed: int = 0, first_index: int = 0, progress: bool = False, **options) -> AISEstimate:
    """Estimate log p(x_i) for each datapoint of ``x [B, ...]`` by AIS with ``settings.num_chains`` chains each.

    ``model(x)``/``guide(x)``: Pyro programs with the datapoints in
    ``pyro.plate("data")`` and continuous latent sites (the guide samples
    exactly the model's latents). ``settings`` (`AISSettings`; default ``AISSettings()``): the chains, the
    schedule, the HMC transitions and their tuning; ``options``: any of its fields by name, as calls before it
    took them (``num_chains=4, num_steps=10``). Randomness
    is keyed by (``seed``, ``first_index + i``): pass the index of ``x[0]`` in
    the whole data set to batch a large one. Runs on ``x``'s device; the
    global RNG is left alone. Cost: about
    (T + T_p + `WARMUP_TRANSITIONS`) x ``leapfrog_steps`` gradient evaluations of log f at ``C x B`` points
    (T_p = `pilot_steps` (T), or T for ``two-pass``), counted in ``gradient_evaluations``; T = 1 is importance
    sampling from the start with C particles (one evaluation per run, nothing to tune).
    """
    return _run(model, guide, x, _settings(settings, options), seed, first_index, progress)[0]


def dequantized_ais(model: Callable, guide: Callable, x: torch.Tensor, bit_depth: int,
                    settings: AISSettings | None = None, *, seed: int = 0, first_index: int = 0,
                    progress: bool = False, **options) -> AISEstimate:
    """AIS for integer levels ``x [B, D]`` under a density trained on dequantized data: each chain c draws its
    own u_c ~ U[0, 1)^D and anneals to the posterior of (x + u_c) / 2^b, its log weight less D b log 2.

    Each chain's weight is unbiased for p((x + u_c) / 2^b) 2^(-D b) given u_c, so their mean is unbiased for
    P(x), the mass the density gives x's bin: log-mean-exp over chains is a stochastic lower bound on log P(x)
    (as `inference.estimators.importance.dequantized_log_weights_chunk`). The C chains of B images run as C x B rows of one
    chain each; randomness keyed by (``seed``, ``first_index``). ``settings`` and ``options``: as `ais_log_marginal`'s.
    """
    settings = _settings(settings, options)
    num_chains, num_steps = settings.num_chains, settings.num_steps
    batch, dim = x.shape
    gen = torch.Generator(device=x.device).manual_seed(seed_for(seed, AIS_DEQUANTIZATION, first_index))
    u = torch.rand((num_chains, batch, dim), generator=gen, device=x.device, dtype=x.dtype)
    rows = ((x + u) / 2.0 ** bit_depth).reshape(num_chains * batch, dim)
    flat = ais_log_marginal(model, guide, rows, dataclasses.replace(settings, num_chains=1), seed=seed,
                            first_index=first_index * num_chains, progress=progress)
    log_w = flat.log_weights.reshape(num_chains, batch) - dim * bit_depth * math.log(2)
    log_px, se = _summary(log_w, 1.0)
    return AISEstimate(log_px, se, log_w, flat.acceptance.reshape(num_chains, batch).mean(0),
                       flat.step_size.reshape(num_chains, batch), num_steps, num_chains, flat.leapfrog_steps,
                       flat.gradient_evaluations * num_chains, flat.tuning, flat.compiled, flat.compiled_form)


def simulate(model: Callable, like: torch.Tensor, num_images: int, seed: int = 0) -> tuple[torch.Tensor, poutine.Trace]:
    """Draw ``num_images`` (z, x) ~ p(z) p(x|z) (``poutine.uncondition``): x ``[N, ...]`` and the trace holding z.

    ``like``: datapoints shaped as the model takes them (only shape, dtype and
    device are used). The model must have exactly one observed site, the data.
    """
    template = like[:1].expand(num_images, *like.shape[1:]).clone()
    with torch.no_grad(), forked_rng(like.device), poutine.block():
        conditioned = poutine.trace(model).get_trace(template)
        torch.manual_seed(seed_for(seed, AIS_SIMULATED, 0))
        trace = poutine.trace(poutine.uncondition(model)).get_trace(template)
    observed = [n for n, site in conditioned.nodes.items() if site["type"] == "sample" and site["is_observed"]]
    if len(observed) != 1:
        raise EstimationError(f"simulating data needs a model with exactly one observed site, found {observed}")
    return trace.nodes[observed[0]]["value"].detach(), trace


def _exact_chains(trace: poutine.Trace, names: Sequence[str], lo: int, hi: int, particle_dim: int,
                  num_chains: int) -> dict[str, torch.Tensor]:
    """Datapoints ``lo..hi-1`` of each simulated latent, repeated for every chain: ``{site: [C, ..., hi-lo, ...]}``."""
    out = {}
    for name in names:
        node = trace.nodes[name]
        value, event_dim = node["value"].detach(), node["fn"].event_dim
        batch_dims = value.dim() - event_dim
        value = value.narrow(batch_dims + data_frame_dim(name, node), lo, hi - lo)
        value = value.reshape((1,) * (-particle_dim - 1 - batch_dims) + value.shape)
        out[name] = value.unsqueeze(0).expand(num_chains, *value.shape)
    return out


def bdmc(model: Callable, guide: Callable, num_images: int, like: torch.Tensor, settings: AISSettings | None = None, *,
         seed: int = 0, batch_size: int = 100, progress: bool = False, **options) -> Sandwich:
    """Bidirectional Monte Carlo (Grosse et al. 2015) on ``num_images`` images simulated from the model.

    Forward AIS on each simulated x is a stochastic lower bound on log p(x);
    reverse AIS from the simulated z (an exact posterior sample; all chains
    start there), run with the forward run's step sizes in reverse order, is
    a stochastic upper bound. ``like``: a datapoint shaped as the model takes
    them. ``settings``, ``options``, ``seed``: as in `ais_log_marginal`. The reverse estimate's
    ``se`` treats its chains as independent; they share their start, so it
    understates the Monte Carlo error of the upper bound.
    """
    _check_positive_ints(num_images=num_images, batch_size=batch_size)
    settings = _settings(settings, options)
    x, trace = simulate(model, like, num_images, seed)
    with torch.no_grad(), forked_rng(x.device):
        latents = _latent_names(model, guide, x[:1])
        layout = inspect_programs(model, guide, x[:1])

    def sandwich_batch(lo: int) -> tuple[AISEstimate, AISEstimate]:
        xb = x[lo : lo + batch_size]
        forward, step_sizes = _run(model, guide, xb, settings, seed, lo, progress)
        exact = _exact_chains(trace, latents, lo, lo + len(xb), layout.particle_dim, settings.num_chains)
        return forward, _run(model, guide, xb, settings, seed, lo, progress, exact=exact, step_sizes=step_sizes)[0]

    halves = sharded_map(sandwich_batch, range(0, num_images, batch_size))  # batches shared out under torchrun
    fwd, rev = AISEstimate.concat([f for f, _ in halves]), AISEstimate.concat([r for _, r in halves])
    return Sandwich(x.cpu(), fwd.log_px, rev.log_px, fwd, rev)
