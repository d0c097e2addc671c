"""Evaluation throughput of log p(x) with K importance samples: hand-written vs Pyro's Importance vs ours.

Same trained checkpoint, same test images, same K, one process, interleaved:

  (a) a hand-written tensor implementation for this VAE: encoder once, K
      reparameterised draws in chunks, closed-form log-densities, logsumexp;
  (b) ``pyro.infer.Importance`` one image at a time (K sequential traces),
      timed on ``--pyro-images`` images and scaled to images/s;
  (c) ``inference.estimators.importance.estimate_log_marginal`` (all diagnostics included), with the model's
      observation tiled (`models.tiled`, the default since issue 27: decoder and log-density a few
      particles at a time, no ``[K, B, D]`` logits);
  (f) an experiment of issue 27, not in the estimator: (c) with the Bernoulli log-density's forward pass
      (``models.likelihoods._log_prob_sum``, about eight elementwise passes over each tile) compiled by
      ``torch.compile`` (inductor) into one loop; its first call, compiling included, is timed apart;
  (u) the estimator before issue 27: (c) under ``models.tiled.untiled()`` and with torch's Bernoulli
      log-density (``log1p`` per pixel) in place of ``models.likelihoods.bernoulli_log_prob_sum``.

Prints images/s and the ratios (c/u: what issue 27 saves; f/c: what compiling the log-density would), one row per ``--batch-sizes`` entry (images
given to (a) and (c) per call, as ``python -m inference.evaluate --batch-size``;
default: all ``--images`` at once); the share of the FLOP limit each of (a), (c), (f) and
(u) reaches (the matrix-product FLOPs of one image's K particles, counted by
``torch.utils.flop_counter``, times images/s, over the float32 GEMM rate measured
in the same run, `_common.gemm_rate`); and how much the peak memory grows during
(c) at two chunk sizes and two K, each in a fresh process (CPU: ru_maxrss;
CUDA: max_memory_allocated), above the baseline of the loaded model and data.

    python benchmarks/eval_throughput.py runs/RUN --device cpu --num-samples 1000
    python benchmarks/eval_throughput.py runs/RUN --device cuda --num-samples 5000 --images 10000 --batch-sizes 100,128,1024
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import time
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import Importance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gemm_rate, importance_flops_per_image, interleaved_medians, machine, timed  # noqa: E402

from inference.estimators.importance import estimate_log_marginal  # noqa: E402
from models import tiled  # noqa: E402
from models import likelihoods  # noqa: E402
from models.likelihoods import BernoulliPixels  # noqa: E402
from pyro_vae.checkpoint import load  # noqa: E402
from pyro_vae.data import evaluation_images  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402


@torch.no_grad()
def handwritten_log_px(vae, x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(a): log p(x) for the diagonal-Normal / Bernoulli VAE with plain tensors, float64 accumulation."""
    loc, scale_raw = vae.encoder(x).chunk(2, -1)
    scale = F.softplus(scale_raw) + 1e-3
    total = None
    for start in range(0, k, chunk):
        eps = torch.randn(min(chunk, k - start), *loc.shape, device=x.device)
        z = loc + scale * eps
        log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x.expand(len(z), -1, -1), reduction="none").sum(-1)
        lse = torch.logsumexp((log_prior + log_lik - log_q).double(), 0)
        total = lse if total is None else torch.logaddexp(total, lse)
    return total - math.log(k)


def pyro_importance_log_px(vae, x: torch.Tensor, k: int) -> torch.Tensor:
    """(b): Pyro's Importance, one image at a time."""
    out = []
    for xi in x.split(1):
        posterior = Importance(vae.model, vae.guide, num_samples=k).run(xi)
        out.append(posterior.get_log_normalizer())
    return torch.stack(out)


@contextlib.contextmanager
def before_issue_27() -> Iterator[None]:
    """(u)'s setting: the observation untiled, the Bernoulli log-density torch's."""
    with tiled.untiled(), mock.patch.object(BernoulliPixels, "log_prob", dist.Independent.log_prob):
        yield


@contextlib.contextmanager
def log_density(fn) -> Iterator[None]:
    """(f)'s setting: ``fn`` in place of `models.likelihoods.bernoulli_log_prob_sum` (no gradients here)."""
    with mock.patch.object(likelihoods, "bernoulli_log_prob_sum", fn):
        yield


def compiled_estimates(vae, batches, k: int, chunk: int, fused) -> list:
    """(f): (c) with the compiled log-density ``fused``."""
    with log_density(fused):
        return [estimate_log_marginal(vae.model, vae.guide, xb, k, chunk, seed=0) for xb in batches]


def untiled_estimates(vae, batches, k: int, chunk: int) -> list:
    """(u): (c) as before issue 27."""
    with before_issue_27():
        return [estimate_log_marginal(vae.model, vae.guide, xb, k, chunk, seed=0) for xb in batches]


def peak_memory(source: str, device: str, k: int, chunk: int, images: int, data_dir: str | None) -> float:
    """MiB the peak grows by during one ``estimate_log_marginal`` call, in a fresh process."""
    code = f"""
import resource, torch, json
from pyro_vae.checkpoint import load
from pyro_vae.data import evaluation_images
from inference.estimators.importance import estimate_log_marginal
vae, cfg = load({source!r}, device={device!r})
dev = next(vae.parameters()).device
x = evaluation_images(cfg.evaluation_data({data_dir!r}, {images}), dev)
estimate_log_marginal(vae.model, vae.guide, x[:2], 10, 10, seed=0)  # imports and allocator warm-up
base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
estimate_log_marginal(vae.model, vae.guide, x, {k}, {chunk}, seed=0)
peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps((peak - base) / 2**20))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="run folder or checkpoint of a diagonal-guide Bernoulli VAE")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--batch-sizes", help="images per call of (a) and (c), comma-separated, one row each, e.g. "
                                         "100,128,1024 (default: all --images at once)")
    p.add_argument("--memory-chunks", default="100,1000")
    p.add_argument("--pyro-images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir")
    p.add_argument("--tile-rows", type=int, default=tiled.TILE_ROWS,
                   help=f"models.tiled.TILE_ROWS for (c) (default {tiled.TILE_ROWS})")
    args = p.parse_args(argv)
    tiled.TILE_ROWS = args.tile_rows
    device = resolve_device(args.device)
    vae, cfg = load(args.source, device=str(device))
    x = evaluation_images(cfg.evaluation_data(args.data_dir, args.images), device)
    k, chunk = args.num_samples, args.chunk_size

    ours = estimate_log_marginal(vae.model, vae.guide, x, k, chunk, seed=0).log_px
    fused = torch.compile(likelihoods._log_prob_sum, dynamic=True)
    start = time.perf_counter()
    with log_density(fused):
        compiled = estimate_log_marginal(vae.model, vae.guide, x, k, chunk, seed=0).log_px
    compile_seconds = time.perf_counter() - start
    with before_issue_27():
        before = estimate_log_marginal(vae.model, vae.guide, x, k, chunk, seed=0).log_px
    mine = handwritten_log_px(vae, x, k, chunk).cpu()
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; "
          f"{args.images} test images, K = {k}, chunk {chunk}, tiles of {args.tile_rows} rows; mean log p(x): "
          f"(a) {mine.mean():.2f}, (c) {ours.mean():.2f}; largest |c - u| per image {(ours - before).abs().max():.2g}, "
          f"|c - f| {(ours - compiled).abs().max():.2g} nats (same draws); (f)'s first call, compiling included: "
          f"{compile_seconds:.1f} s\n")
    flops, limit = importance_flops_per_image(vae, x, k, chunk), gemm_rate(device)
    print(f"FLOP limit: {limit / 1e9:.1f} GFLOP/s (float32 2048 x 2048 GEMM, best of 5, this run); "
          f"{flops / k / 1e6:.3f} MFLOP per image-particle (matrix products)\n")
    print("| batch | (a) hand-written img/s | (b) pyro Importance img/s | (c) estimate_log_marginal img/s "
          "| (f) (c), log-density compiled img/s | (u) before issue 27 img/s | c/a (time) | f/c (time) | c/u (time) "
          "| b/c (time) | (a) of FLOP limit | (c) of FLOP limit | (f) of FLOP limit | (u) of FLOP limit |")
    print("| --- |" + " --- |" * 13)
    pyro_seconds = None  # (b) takes one image at a time: timed with the first batch size, the same for all
    for batch in [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.images]:
        contenders = {
            "a": lambda: timed(lambda: [handwritten_log_px(vae, xb, k, chunk) for xb in x.split(batch)], device),
            "c": lambda: timed(lambda: [estimate_log_marginal(vae.model, vae.guide, xb, k, chunk, seed=0)
                                        for xb in x.split(batch)], device),
            "f": lambda: timed(lambda: compiled_estimates(vae, x.split(batch), k, chunk, fused), device),
            "u": lambda: timed(lambda: untiled_estimates(vae, x.split(batch), k, chunk), device),
        }
        if pyro_seconds is None:
            contenders["b"] = lambda: (timed(lambda: pyro_importance_log_px(vae, x[: args.pyro_images], k), device)
                                       * args.images / args.pyro_images)
        seconds = interleaved_medians(contenders, args.repeats)
        pyro_seconds = seconds["b"] = seconds.get("b", pyro_seconds)
        rate = {name: args.images / s for name, s in seconds.items()}
        print(f"| {min(batch, args.images)} | {rate['a']:.1f} | {rate['b']:.2f} | {rate['c']:.1f} | {rate['f']:.1f} | {rate['u']:.1f} | "
              f"{seconds['c'] / seconds['a']:.2f} | {seconds['f'] / seconds['c']:.2f} | {seconds['c'] / seconds['u']:.2f} | "
              f"{seconds['b'] / seconds['c']:.1f} | {rate['a'] * flops / limit:.1%} | {rate['c'] * flops / limit:.1%} "
              f"| {rate['f'] * flops / limit:.1%} | {rate['u'] * flops / limit:.1%} |", flush=True)
    print()
    print(f"| peak memory growth of (c), {args.images} images | " + " | ".join(
        f"K={kk}, chunk {c}" for c in args.memory_chunks.split(",") for kk in (k, 4 * k)) + " |")
    print("| --- | " + " | ".join("---" for _ in range(2 * len(args.memory_chunks.split(",")))) + " |")
    print("| MiB | " + " | ".join(
        f"{peak_memory(args.source, str(device), kk, int(c), args.images, args.data_dir):.0f}"
        for c in args.memory_chunks.split(",") for kk in (k, 4 * k)) + " |")


if __name__ == "__main__":
    main()
