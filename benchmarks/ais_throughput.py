"""AIS throughput: a hand-written batched AIS in plain tensors vs ``inference.estimators.ais.ais_log_marginal``.

Same trained checkpoint (diagonal-Normal guide, Bernoulli decoder), same test
images, chains, steps and leapfrog steps, one process, interleaved rounds:

  (a) hand-written: the same algorithm (guide start, sigmoid schedule, a
      tuning pass adapting one step size per chain toward acceptance 0.65, then
      the frozen pass), with closed-form log q(z|x), log p(z) and their
      gradients, log p(x|z) from the decoder's logits (by the log-density (c) uses,
      `models.likelihoods.bernoulli_log_prob_sum`: c/a measures what Pyro's traces and the general code add)
      and one ``torch.autograd.grad`` per leapfrog step; global RNG, float64 weights;
  (c) ``ais_log_marginal`` (Pyro traces, per-datapoint RNG, any model), four ways:
      ``two-pass, plain`` (the same algorithm as (a), Pyro's Python at every
      gradient evaluation, as before issue 27), ``two-pass, compiled`` (the
      same algorithm compiled as ``compiled=True`` does it, the values and
      gradients as frozen graphs with their backward ops: c/a compares like
      with like, target <= 1.1), ``two-pass, traced`` (the form before those
      graphs, issue 40: the potential traced, autograd at every evaluation)
      and ``pilot, compiled`` (the default: a T/10-step pilot run instead of
      the full tuning pass).

Prints seconds per image, gradient evaluations per image (chains included) and
the mean log p(x) of each (they should agree within their Monte Carlo error),
the ratios to (a), and the default's cost scaled to T=1000.

    python benchmarks/ais_throughput.py runs/RUN --device cpu --images 100 --chains 16 --steps 100
    python benchmarks/ais_throughput.py runs/RUN --device cpu --images 5 --chains 4 --steps 100
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkpoint_and_images, interleaved_medians, machine, timed  # noqa: E402

from inference.estimators import ais_potential  # noqa: E402
from inference.estimators.ais import (ADAPT_RATE, TARGET_ACCEPT, WARMUP_ADAPT_RATE, WARMUP_TRANSITIONS,  # noqa: E402
                                      AISSettings, ais_log_marginal, annealing_schedule)
from models.likelihoods import bernoulli_log_prob_sum  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@torch.no_grad()
def handwritten_ais(vae, x: torch.Tensor, chains: int, steps: int, leapfrog: int, step_size: float = 0.01) -> torch.Tensor:
    """(a): log p(x) ``[B]`` by AIS from q(z|x) for the diagonal-Normal / Bernoulli VAE, plain tensors."""
    loc, scale_raw = vae.encoder(x).chunk(2, -1)
    scale = F.softplus(scale_raw) + 1e-3
    betas = annealing_schedule(steps, "sigmoid").tolist()

    def densities(z: torch.Tensor):
        """log q, log p(x, z) ``[C, B]`` and their gradients in z."""
        eps = (z - loc) / scale
        log_q = (-0.5 * eps.pow(2) - scale.log() - HALF_LOG_2PI).sum(-1)
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            logits = vae.decoder(z_)
            log_lik = bernoulli_log_prob_sum(logits, x)
            (grad_lik,) = torch.autograd.grad(log_lik.sum(), z_)
        log_joint = log_lik.detach() + (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(-1)
        return log_q.double(), log_joint.double(), -eps / scale, grad_lik - z

    def hmc(state, b: float, eps: torch.Tensor):
        z, log_q, log_joint, g_q, g_joint = state
        log_f = lambda lq, lj: lq + b * (lj - lq)  # noqa: E731
        e = eps.unsqueeze(-1).float()
        r0 = torch.randn_like(z)
        r = r0 + 0.5 * e * (g_q + b * (g_joint - g_q))
        z_new = z
        for i in range(leapfrog):
            z_new = z_new + e * r
            new = densities(z_new)
            grad = new[2] + b * (new[3] - new[2])
            r = r + (e if i < leapfrog - 1 else 0.5 * e) * grad
        log_accept = (log_f(new[0], new[1]) - 0.5 * r.double().pow(2).sum(-1)) - (
            log_f(log_q, log_joint) - 0.5 * r0.double().pow(2).sum(-1))
        acceptance = log_accept.clamp(max=0).exp().nan_to_num(0.0)
        accept = torch.rand_like(acceptance) < acceptance
        a = accept.unsqueeze(-1)
        state = (torch.where(a, z_new, z), torch.where(accept, new[0], log_q), torch.where(accept, new[1], log_joint),
                 torch.where(a, new[2], g_q), torch.where(a, new[3], g_joint))
        return state, acceptance

    def anneal(schedule):
        z = loc + scale * torch.randn(chains, *loc.shape, device=x.device)
        state = (z, *densities(z))
        log_w = torch.zeros(chains, len(x), dtype=torch.float64, device=x.device)
        tuning = schedule is None
        if tuning:
            log_eps = torch.full_like(log_w, math.log(step_size))
            schedule = []
            for _ in range(WARMUP_TRANSITIONS):
                state, acc = hmc(state, 0.0, log_eps.exp())
                log_eps += WARMUP_ADAPT_RATE * (acc - TARGET_ACCEPT)
        for t in range(1, steps + 1):
            log_w += (betas[t] - betas[t - 1]) * (state[2] - state[1])
            if t == steps:
                break
            eps = log_eps.exp() if tuning else schedule[t - 1]
            state, acc = hmc(state, betas[t], eps)
            if tuning:
                schedule.append(eps)
                log_eps += ADAPT_RATE * (acc - TARGET_ACCEPT)
        return log_w, schedule

    _, schedule = anneal(None)
    log_w, _ = anneal(schedule)
    return torch.logsumexp(log_w, 0) - math.log(chains)


def handwritten_evaluations(chains: int, steps: int, leapfrog: int) -> int:
    """Gradient evaluations per image of (a): two passes, one at each start, L per transition, the warm-up."""
    return chains * ((1 + (WARMUP_TRANSITIONS + steps - 1) * leapfrog) + (1 + (steps - 1) * leapfrog))


@contextlib.contextmanager
def only_traced_autograd():
    """AIS compiled as before the frozen graphs of issue 40: the potential traced, autograd at every evaluation."""
    forms = ais_potential.COMPILED_FORMS
    ais_potential.COMPILED_FORMS = {"traced": forms["traced"]}
    try:
        yield
    finally:
        ais_potential.COMPILED_FORMS = forms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (default VAE)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    vae, _, x = checkpoint_and_images(args.run, device, args.images, args.data_dir)
    results, evaluations = {}, {"a": handwritten_evaluations(args.chains, args.steps, args.leapfrog)}

    def run_a() -> float:
        return timed(lambda: results.__setitem__("a", handwritten_ais(vae, x, args.chains, args.steps, args.leapfrog)),
                     device)

    def run_c(name: str, tuning: str, compiled: bool, traced_only: bool = False):
        def go() -> None:
            with only_traced_autograd() if traced_only else contextlib.nullcontext():
                est = ais_log_marginal(vae.model, vae.guide, x, AISSettings(args.chains, args.steps, args.leapfrog,
                                                                            tuning=tuning, compiled=compiled))
            form = ("traced" if traced_only else "graphs") if compiled else None
            if est.compiled_form != form:
                raise SystemExit(f"{name}: AIS ran {est.compiled_form or 'plain'}, not {form or 'plain'}")
            results[name], evaluations[name] = est.log_px, est.gradient_evaluations
        return lambda: timed(go, device)

    variants = {"c two-pass, plain": ("two-pass", False), "c two-pass, traced": ("two-pass", True, True),
                "c two-pass, compiled": ("two-pass", True), "c pilot, compiled": ("pilot", True)}
    medians = interleaved_medians({"a": run_a, **{k: run_c(k, *v) for k, v in variants.items()}}, args.repeats)
    print(f"machine: {machine(device)}; torch {torch.__version__}")
    print(f"{args.images} images, C={args.chains} chains, T={args.steps} steps, L={args.leapfrog} leapfrog steps, "
          f"median of {args.repeats} interleaved rounds")
    for name in ("a", *variants):
        label = "(a) hand-written, two-pass" if name == "a" else f"(c) {name[2:]}"
        print(f"  {label:<28} {medians[name] / args.images:8.4f} s/image  {evaluations[name]:>8,} gradient "
              f"evaluations/image  mean log p(x) {results[name].mean().item():9.3f}  "
              f"{medians[name] / medians['a']:5.2f} x (a)")
    print(f"  c/a, same algorithm (two-pass, compiled): {medians['c two-pass, compiled'] / medians['a']:.2f} "
          "(target <= 1.1)")
    print(f"  compiled over traced + autograd (two-pass; time): "
          f"{medians['c two-pass, compiled'] / medians['c two-pass, traced']:.2f}")
    print(f"  compiled speed-up over plain (two-pass): "
          f"{medians['c two-pass, plain'] / medians['c two-pass, compiled']:.2f} x")
    print(f"  default (pilot, compiled) over two-pass, plain (the default before issue 27): "
          f"{medians['c two-pass, plain'] / medians['c pilot, compiled']:.2f} x faster")
    per_image_t1000 = medians["c pilot, compiled"] / args.images * 1000 / args.steps
    print(f"  default at T=1000 (scaled linearly from T={args.steps}): {per_image_t1000:.2f} s/image")


if __name__ == "__main__":
    main()
