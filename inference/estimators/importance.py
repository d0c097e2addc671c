r"""log p(x) by importance sampling, from Pyro traces of any model/guide pair.

For each datapoint x_i and K draws z_k ~ q(z | x_i) the log importance weight is

    log w_ik = log p(x_i, z_k) - log q(z_k | x_i),

the sum of every sample site's log-density *within datapoint i* (sites sit in
``pyro.plate("data")``; Pyro's ``vectorized_importance_weights`` sums over
the whole batch, which is why it is not used here). From one set of weights:

    log p-hat(x_i) = logsumexp_k(log w_ik) - log K        (Burda et al. 2015, k = K)
    ELBO(x_i)      = mean_k log w_ik
    IWAE-k(x_i)    = mean over the K/k disjoint groups g of logsumexp_{k in g} log w_ik - log k
    ESS(x_i)       = (sum_k w_ik)^2 / sum_k w_ik^2
    k-hat(x_i)     = the generalised Pareto shape that PSIS (ArviZ's ``psislw``, r_eff = 1) fits to the
                     upper tail of w_i1..w_iK, the M largest weights above the (M+1)-th:
                     M = ceil(min(K/5, 3 sqrt K)) in ArviZ 0.x, floor of the same in arviz_stats (ArviZ 1.x);
                     < 0.5 good, 0.5-0.7 usable, > 0.7 unreliable (Yao et al. 2018)

Particles are vectorised in an outer plate and processed ``chunk_size`` at a
time with streaming float64 reductions, so memory is bounded by
``chunk_size x batch`` for any K. Randomness is keyed by particle index (the
guide runs in seeded blocks of `DRAW_BLOCK` particles), so for a fixed seed
the results do not depend on ``chunk_size``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import pyro
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.device import forked_rng
from pyro_vae.errors import EstimationError
from pyro_vae.seeds import IMPORTANCE_DEQUANTIZATION, IMPORTANCE_DRAWS, seed_for

#: Particles drawn per seeded guide call: the unit of randomness.
DRAW_BLOCK = 50
DATA_PLATE = "data"
DEFAULT_LADDER = (1, 10, 100, 1000, 5000)


@dataclass
class MarginalEstimate:
    """Per-datapoint results (float64 tensors ``[B]`` on the CPU), from ``num_samples`` draws."""

    log_px: torch.Tensor
    elbo: torch.Tensor
    iwae: dict[int, torch.Tensor]
    ess: torch.Tensor
    khat: torch.Tensor
    num_samples: int

    def slice(self, start: int, stop: int) -> "MarginalEstimate":
        """The results of datapoints ``start..stop-1``."""
        return MarginalEstimate(self.log_px[start:stop], self.elbo[start:stop],
                                {k: v[start:stop] for k, v in self.iwae.items()}, self.ess[start:stop],
                                self.khat[start:stop], self.num_samples)

    @staticmethod
    def concat(parts: Sequence["MarginalEstimate"]) -> "MarginalEstimate":
        """Join estimates of consecutive batches of datapoints (same K and ladder)."""
        return MarginalEstimate(
            torch.cat([p.log_px for p in parts]), torch.cat([p.elbo for p in parts]),
            {k: torch.cat([p.iwae[k] for p in parts]) for k in parts[0].iwae},
            torch.cat([p.ess for p in parts]), torch.cat([p.khat for p in parts]), parts[0].num_samples)


# --- traces -> per-datapoint log weights ------------------------------------------------

def sample_sites(trace: poutine.Trace) -> dict[str, dict]:
    """The trace's sample sites (latent and observed), plates' subsample sites left out."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def data_frame_dim(name: str, site: dict) -> int:
    """The (negative) batch dim of ``pyro.plate("data")`` for a sample site; `EstimationError` if outside it."""
    data_frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
    if not data_frames:
        raise EstimationError(
            f"site {name!r} is outside pyro.plate({DATA_PLATE!r}); a per-datapoint log p(x) needs every sample "
            f"site of model and guide inside the data plate")
    return data_frames[0].dim


def sum_within_datapoint(name: str, values: torch.Tensor, data_dim: int, particle_dim: int, num_particles: int,
                         batch_size: int) -> torch.Tensor:
    """Sum batch-shaped ``values`` of site ``name`` within each datapoint: float64 ``[num_particles, batch_size]``.

    ``values`` has the site's batch shape (the particle plate at ``particle_dim``,
    the data plate at ``data_dim``, other plates and broadcast dims anywhere);
    every dim but the particle and data dims is summed out.
    """
    ndim = -particle_dim
    if values.dim() > ndim:
        raise EstimationError(f"site {name!r} has batch dimensions outside any plate: {list(values.shape)}")
    # no op where there is nothing to do: traced (AIS's potential), every op is one more node at each evaluation
    if values.dim() < ndim:
        values = values.reshape((1,) * (ndim - values.dim()) + values.shape)
    keep = (0, ndim + data_dim)  # the particle dim and the data dim, as positive indices
    others = [d for d in range(ndim) if d not in keep and values.shape[d] != 1]
    if others:
        values = values.sum(others, keepdim=True)
    if values.dim() != 2:
        values = values.reshape(values.shape[0], values.shape[keep[1]])
    if values.shape != (num_particles, batch_size):
        values = values.expand(num_particles, batch_size)
    return values if values.dtype == torch.float64 else values.double()


def _site_log_prob(name: str, site: dict, particle_dim: int, num_particles: int, batch_size: int) -> torch.Tensor:
    """log-density of one site, summed within each datapoint: ``[num_particles, batch_size]``."""
    data_dim = data_frame_dim(name, site)
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    return sum_within_datapoint(name, log_prob, data_dim, particle_dim, num_particles, batch_size)


def trace_sum(trace: poutine.Trace, sites: Sequence[str], particle_dim: int, num_particles: int, batch_size: int) -> torch.Tensor:
    """Unscaled log-densities of ``sites`` in ``trace``, summed within each datapoint: float64 ``[num_particles, batch_size]``."""
    nodes = trace.nodes
    terms = [_site_log_prob(n, nodes[n], particle_dim, num_particles, batch_size) for n in sites]
    return sum(terms[1:], terms[0]) if terms else 0.0


@dataclass(frozen=True)
class Layout:
    """What one inspection trace tells about a model/guide pair."""

    particle_dim: int
    guide_sites: tuple[str, ...]
    model_sites: tuple[str, ...]


def inspect_programs(model: Callable, guide: Callable, x: torch.Tensor) -> Layout:
    """Trace once (one particle, no particle plate) to find plate nesting and check the structure."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    plates = {f.name for trace in (guide_trace, model_trace) for site in sample_sites(trace).values()
              for f in site["cond_indep_stack"]}
    if DATA_PLATE not in plates:
        raise EstimationError(f"the model has no pyro.plate({DATA_PLATE!r}); put the datapoints in that plate")
    guide_sites = tuple(n for n, s in sample_sites(guide_trace).items() if not s["is_observed"])
    model_sites = tuple(sample_sites(model_trace))
    missing = [n for n, s in sample_sites(model_trace).items() if not s["is_observed"] and n not in guide_sites]
    if missing:
        raise EstimationError(f"model latent site(s) {missing} have no guide counterpart; the guide must sample every latent")
    nesting = max([-f.dim for t in (guide_trace, model_trace) for s in sample_sites(t).values()
                   for f in s["cond_indep_stack"] if f.vectorized] + [1])
    return Layout(-nesting - 1, guide_sites, model_sites)


def _guide_block(guide: Callable, x: torch.Tensor, layout: Layout, seed: int, block: int) -> tuple[dict, torch.Tensor, poutine.Trace]:
    """Run the guide for particles ``[block * DRAW_BLOCK, (block + 1) * DRAW_BLOCK)`` with their own seed."""
    torch.manual_seed(seed_for(seed, IMPORTANCE_DRAWS, block))
    with pyro.plate("_particles", DRAW_BLOCK, dim=layout.particle_dim):
        trace = poutine.trace(guide).get_trace(x)
    values = {n: trace.nodes[n]["value"] for n in layout.guide_sites}
    return values, trace_sum(trace, layout.guide_sites, layout.particle_dim, DRAW_BLOCK, len(x)), trace


def log_weights_chunk(model: Callable, guide: Callable, x: torch.Tensor, start: int, stop: int, seed: int,
                      layout: Layout | None = None) -> torch.Tensor:
    """log w for particles ``start..stop-1`` of every datapoint: float64 ``[stop - start, B]``.

    Particle k's draw depends only on ``(seed, k)``. Differentiable with
    respect to model and guide parameters (reparameterised sites).
    """
    layout = layout or inspect_programs(model, guide, x)
    first, last = start // DRAW_BLOCK, (stop - 1) // DRAW_BLOCK
    blocks = [_guide_block(guide, x, layout, seed, b) for b in range(first, last + 1)]
    lo, hi = start - first * DRAW_BLOCK, stop - first * DRAW_BLOCK
    pdim = layout.particle_dim
    values = {}
    for n in layout.guide_sites:  # the particle dim of a value sits left of its event dims
        dim = pdim - blocks[0][2].nodes[n]["fn"].event_dim
        values[n] = torch.cat([b[0][n] for b in blocks], dim=dim).narrow(dim, lo, hi - lo)
    log_q = torch.cat([b[1] for b in blocks])[lo:hi]
    replay_trace = blocks[0][2].copy()
    for name, value in values.items():
        replay_trace.nodes[name] = {**replay_trace.nodes[name], "value": value}
    with pyro.plate("_particles", stop - start, dim=pdim):
        model_trace = poutine.trace(poutine.replay(model, trace=replay_trace)).get_trace(x)
    return trace_sum(model_trace, layout.model_sites, pdim, stop - start, len(x)) - log_q


def dequantized_log_weights_chunk(model: Callable, guide: Callable, x: torch.Tensor, start: int, stop: int, seed: int,
                                  bit_depth: int) -> torch.Tensor:
    """log w for particles ``start..stop-1`` of integer levels ``x [B, D]`` under a density on [0, 1) trained on
    dequantized data: float64 ``[stop - start, B]``.

    Particle k draws its own u_k ~ U[0, 1)^D with z_k ~ q(z | (x + u_k) / 2^b): u is part of the proposal, and
    p(u) = q(u) = 1 on the unit cube, so

        log w_k = log p((x + u_k) / 2^b, z_k) - log q(z_k | (x + u_k) / 2^b) - D b log 2,

    whose mean exp is unbiased for P(x) = integral over the cube of p((x + u) / 2^b) 2^(-D b) du, the probability
    the dequantized density gives the bin of x (Theis et al. 2016): log-mean-exp over particles is a lower bound
    on log P(x) in expectation. The particles of a block of `DRAW_BLOCK` are flattened into the batch (each row
    its own (x, u)), so any model/guide pair of the contract is scored as it is; draws are keyed by block.
    """
    batch, dim = x.shape
    first, last = start // DRAW_BLOCK, (stop - 1) // DRAW_BLOCK
    blocks = []
    for block in range(first, last + 1):
        gen = torch.Generator(device=x.device).manual_seed(seed_for(seed, IMPORTANCE_DEQUANTIZATION, block))
        u = torch.rand((DRAW_BLOCK, batch, dim), generator=gen, device=x.device, dtype=x.dtype)
        rows = ((x + u) / 2.0 ** bit_depth).reshape(DRAW_BLOCK * batch, dim)
        lw = log_weights_chunk(model, guide, rows, 0, 1, seed_for(seed, IMPORTANCE_DRAWS, block))
        blocks.append(lw.reshape(DRAW_BLOCK, batch))
    lo = start - first * DRAW_BLOCK
    return torch.cat(blocks)[lo : lo + stop - start] - dim * bit_depth * math.log(2)


# --- streaming reductions ----------------------------------------------------------------

class _StreamingLogSumExp:
    """logsumexp over samples of ``[c, B]`` chunks, in float64, one chunk at a time."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def update(self, log_terms: torch.Tensor) -> None:
        chunk = torch.logsumexp(log_terms, dim=0)
        self.value = chunk if self.value is None else torch.logaddexp(self.value, chunk)


class _GroupedLogMeanExp:
    """IWAE-k: mean over consecutive disjoint groups of k samples of logsumexp - log k."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.total: torch.Tensor | float = 0.0  # sum over completed groups
        self.groups = 0
        self.partial = _StreamingLogSumExp()
        self.count = 0  # samples in the open group

    def update(self, lw: torch.Tensor) -> None:
        pos, n = 0, len(lw)
        while pos < n:
            if self.count == 0 and n - pos >= self.k:  # whole groups at once
                full = (n - pos) // self.k
                grouped = lw[pos : pos + full * self.k].reshape(full, self.k, -1)
                self.total = self.total + (torch.logsumexp(grouped, dim=1) - math.log(self.k)).sum(0)
                self.groups += full
                pos += full * self.k
                continue
            take = min(self.k - self.count, n - pos)
            self.partial.update(lw[pos : pos + take])
            self.count += take
            pos += take
            if self.count == self.k:
                self.total = self.total + self.partial.value - math.log(self.k)
                self.groups += 1
                self.partial, self.count = _StreamingLogSumExp(), 0

    def result(self) -> torch.Tensor:
        return self.total / self.groups


def _tail_size(num_samples: int) -> int:
    """How many of the largest weights PSIS looks at, the tail M plus the cutoff, at r_eff = 1.

    This is ArviZ 0.x's M = ceil(min(K/5, 3 sqrt K)); arviz_stats (ArviZ 1.x) fits
    floor(min(K/5, 3 sqrt K)) <= M tail weights, so M + 1 weights hold its tail and cutoff too.
    """
    return int(math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples)))) + 1


class _StreamingTopK:
    """The ``k`` largest log weights per datapoint seen so far: ``[<=k, B]``."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: torch.Tensor | None = None

    def update(self, lw: torch.Tensor) -> None:
        both = lw if self.values is None else torch.cat([self.values, lw])
        self.values = both.topk(min(self.k, len(both)), dim=0).values


def _khat_arviz_stats(log_weights: np.ndarray) -> np.ndarray:
    """k-hat of the upper tail of ``exp(log_weights)`` ``[B, K]`` along K, by ``arviz_stats``: float64 ``[B]``.

    ``arviz_stats.base.array_stats.psislw(ary, r_eff, axis)`` (ArviZ 1.x's home of
    PSIS) smooths the right tail of ``exp(-ary)``: it takes a log-likelihood, whose
    negation is PSIS-LOO's log ratio. So it gets ``-log_weights``, and fits the
    tail of the largest importance weights. It fits floor(min(K/5, 3 sqrt K)) tail
    weights and raises below 5 (K < 25) and on a tail of equal values: NaN there.
    """
    from arviz_stats.base import array_stats

    batch, num_samples = log_weights.shape
    if num_samples < 25:
        return np.full(batch, np.nan)
    try:
        # arviz_stats fits the tail of exp(-input): negated, that is the upper tail of the weights w
        _, khat = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
    except ValueError:  # a datapoint whose tail weights are all equal: no fit for it, a fit for the others
        khat = np.full(batch, np.nan)
        for i, row in enumerate(log_weights):
            try:
                khat[i] = array_stats.psislw(-row, r_eff=1.0, axis=-1)[1]
            except ValueError:
                pass
    return np.asarray(khat, dtype=np.float64).reshape(batch)


def _khat_arviz_legacy(log_weights: np.ndarray) -> np.ndarray:
    """k-hat of the upper tail of ``exp(log_weights)`` ``[B, K]`` along K, by ArviZ 0.x ``arviz.psislw``: float64 ``[B]``.

    ``arviz.psislw(log_weights, reff)`` takes the log importance ratios themselves
    (no negation; its LOO passes ``-log_likelihood``) with the samples on the last
    axis, and fits ceil(min(K/5, 3 sqrt K)) tail weights; its k-hat is inf when
    4 or fewer weights lie strictly above the cutoff (left so here).
    """
    import arviz

    _, khat = arviz.psislw(log_weights, reff=1.0)
    return np.asarray(khat, dtype=np.float64).reshape(log_weights.shape[0])


def psis_khat_function() -> Callable[[np.ndarray], np.ndarray]:
    """The installed PSIS k-hat: arviz_stats' (standalone, or under ArviZ >= 1.0) when importable, else ArviZ 0.x's.

    Either maps log weights ``[B, K]`` to the k-hat ``[B]`` of the upper tail of
    the weights. Imported on use: ArviZ is slow to import.
    """
    try:
        import arviz_stats.base  # noqa: F401
    except ImportError:
        return _khat_arviz_legacy
    return _khat_arviz_stats


def pareto_khat(top_log_weights: torch.Tensor, num_samples: int) -> torch.Tensor:
    """PSIS k-hat per datapoint from its largest log weights ``[M + 1, B]`` (`_tail_size`): float64 ``[B]``.

    PSIS fits the generalised Pareto to the weights above its cutoff, the
    (M'+1)-th largest with M' <= M (`_tail_size`); every smaller weight only needs
    to sit at or below the cutoff. So the other ``K - M - 1`` entries are filled
    with the smallest kept weight and `psis_khat_function` gives exactly the
    k-hat of all K weights. NaN where K is too small for a tail fit (5 tail
    weights at least: K > 20 with ArviZ 0.x, K >= 25 with arviz_stats).
    """
    batch = top_log_weights.shape[1]
    if _tail_size(num_samples) > num_samples or len(top_log_weights) < _tail_size(num_samples):
        return torch.full((batch,), float("nan"), dtype=torch.float64)
    top = top_log_weights.double().cpu().numpy().T  # [B, M+1]
    filler = np.repeat(top.min(axis=1, keepdims=True), num_samples - top.shape[1], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's import notice and its k-hat > 0.7 warning: we report k-hat ourselves
        khat = psis_khat_function()(np.concatenate([top, filler], axis=1))
    khat[np.isinf(khat)] = np.nan  # inf: ArviZ 0.x's k-hat for a tail of 4 points or fewer, arviz_stats' for a failed fit
    return torch.as_tensor(khat)


# --- the estimator --------------------------------------------------------------------------

def estimate_log_marginal(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    chunk_size: int | None = None,
    ladder: Sequence[int] = DEFAULT_LADDER,
    seed: int | None = None,
    dequantize_bits: int | None = None,
) -> MarginalEstimate:
    """Estimate log p(x_i) for each datapoint of ``x [B, ...]`` with ``num_samples`` draws from the guide.

    ``dequantize_bits`` b: ``x`` holds integer levels 0..2^b - 1 of a model of dequantized data, and the estimate
    is the lower bound on log P(x) of the discrete image of `dequantized_log_weights_chunk` (u drawn with each
    particle).

    ``model(x)`` and ``guide(x)`` are Pyro programs with the datapoints in
    ``pyro.plate("data")``; the guide proposes every latent site of the model.
    ``chunk_size`` particles are evaluated at once (default: all of them; a
    multiple of `DRAW_BLOCK` avoids re-running the guide for blocks that
    straddle two chunks); ``ladder`` lists the k of the IWAE-k bounds (those
    above ``num_samples`` are left out; IWAE-1 is the ELBO itself). ``seed=None``
    draws one from torch's global RNG; the global RNG state is restored after.
    Units: nats per datapoint.
    """
    if num_samples < 1:
        raise EstimationError(f"num_samples must be at least 1, got {num_samples}")
    if len(x) == 0:
        raise EstimationError("the batch of datapoints is empty")
    chunk = max(1, min(chunk_size or num_samples, num_samples))
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    with torch.no_grad(), forked_rng(x.device):
        layout = inspect_programs(model, guide, x if dequantize_bits is None else x / 2.0 ** dequantize_bits)
        total = _StreamingLogSumExp()
        total_sq = _StreamingLogSumExp()
        mean_sum = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        ks = sorted(k for k in set(ladder) if 1 <= k <= num_samples)
        groups = {k: _GroupedLogMeanExp(k) for k in ks if k > 1}  # IWAE-1 is the mean, kept in mean_sum
        top = _StreamingTopK(_tail_size(num_samples))
        for start in range(0, num_samples, chunk):
            stop = min(start + chunk, num_samples)
            lw = (log_weights_chunk(model, guide, x, start, stop, seed, layout) if dequantize_bits is None
                  else dequantized_log_weights_chunk(model, guide, x, start, stop, seed, dequantize_bits))
            if torch.isnan(lw).any():
                bad = torch.isnan(lw).any(0).nonzero().flatten().tolist()
                raise EstimationError(f"log weights are NaN for datapoints {bad[:10]}{'...' if len(bad) > 10 else ''}; "
                                      "check the model's parameters and the data")
            total.update(lw)
            total_sq.update(2 * lw)
            mean_sum += lw.sum(0)
            for g in groups.values():
                g.update(lw)
            top.update(lw)
    log_px = total.value - math.log(num_samples)
    elbo = (mean_sum / num_samples).cpu()
    return MarginalEstimate(
        log_px=log_px.cpu(),
        elbo=elbo,
        iwae={k: elbo if k == 1 else groups[k].result().cpu() for k in ks},
        ess=torch.exp(2 * total.value - total_sq.value).cpu(),
        khat=pareto_khat(top.values, num_samples),
        num_samples=num_samples,
    )
