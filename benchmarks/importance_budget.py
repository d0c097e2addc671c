"""Where the time of one importance-sampling call goes, against the FLOP limit measured in the same run.

`inference.estimators.importance.estimate_log_marginal` (c) on B test images with K particles, beside its parts
run on their own over the same tiles (`models.tiled`: about ``TILE_ROWS`` (particle, image) rows at a time),
interleaved in one process:

  (m) the decoder's matrix products alone (``torch.mm`` with each linear layer's weight, no bias, no activation):
      the estimator's floor;
  (d) the decoder, as the model runs it (biases, activations);
  (o) the observation's log-density, ``observation(decoder(z)).log_prob(x)``: the decoder and the likelihood;
  (f) (o) with the Bernoulli log-density's forward pass (``models.likelihoods._log_prob_sum``) compiled by
      ``torch.compile`` (inductor) into one loop: an experiment, not what the estimator runs (BENCHMARKS.md,
      "Evaluation throughput", says why); left out with one line where inductor cannot compile here;
  (k) the PSIS k-hat of the B images (`pareto_khat`, from the same call's largest weights): the one diagnostic
      whose cost is per image, not per particle;
  (c) the whole call: (o), (k), the guide's draws and log-densities, the prior, Pyro's traces and the streaming
      reductions.

Each row's fraction of the FLOP limit is the call's matrix-product FLOPs (counted by ``torch.utils.flop_counter``)
over that row's time, over the float32 GEMM rate of the same run (`_common.gemm_rate`): (m), (d) and (o) are the
fractions an estimator reaches whose every other part is free. The last rows say what (c) would reach without
(k), without the likelihood's log-density ((o) - (d)), or with it compiled ((o) - (f)).

    python benchmarks/importance_budget.py runs/RUN --device cpu --num-samples 1000 --images 100 --chunk-size 500

For a diagonal-guide VAE with an MLP decoder (`models.vae.VAE`): (m) reads the decoder's linear layers.
"""

from __future__ import annotations

import argparse
import sys
from unittest import mock
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (checkpoint_and_images, gemm_rate, importance_flops_per_image, interleaved_medians,  # noqa: E402
                     machine, timed)

from inference.estimators.importance import (_StreamingTopK, _tail_size, estimate_log_marginal,  # noqa: E402
                                             log_weights_chunk, pareto_khat)
from models import likelihoods, tiled  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402


def tiles(z: torch.Tensor) -> list[torch.Tensor]:
    """``z [K, B, z_dim]`` cut along K as `models.tiled.TiledObservation` cuts it."""
    step = max(1, tiled.TILE_ROWS // z.shape[1])
    return list(z.split(step))


@torch.no_grad()
def matmuls_alone(weights: list[torch.Tensor], z_tiles: list[torch.Tensor]) -> None:
    """(m): each tile through the decoder's matrix products only."""
    for z in z_tiles:
        h = z.reshape(-1, z.shape[-1])
        for w in weights:
            h = torch.mm(h, w.t())


@torch.no_grad()
def decoder_alone(vae, z_tiles: list[torch.Tensor]) -> None:
    """(d): each tile through the decoder."""
    for z in z_tiles:
        vae.decoder(z)


@torch.no_grad()
def observation_log_density(vae, z_tiles: list[torch.Tensor], x: torch.Tensor) -> None:
    """(o): each tile's log p(x | z), as the tiled estimator scores it."""
    for z in z_tiles:
        vae.observation(z).log_prob(x.expand(len(z), *x.shape))


def compiled_log_density(vae, z_tiles: list[torch.Tensor], x: torch.Tensor):
    """(f): a function running (o) with the log-density compiled, or None (and one line) where inductor fails."""
    fused = torch.compile(likelihoods._log_prob_sum, dynamic=True)

    def run() -> None:
        with mock.patch.object(likelihoods, "_log_prob_sum", fused):
            observation_log_density(vae, z_tiles, x)

    try:
        run()
    except Exception as error:  # noqa: BLE001 - any compiler failure leaves the row out, as it would the estimator
        print(f"(f) left out: torch.compile failed here: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="run folder or checkpoint of a diagonal-guide VAE with an MLP decoder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    vae, _, x = checkpoint_and_images(args.source, device, args.images, args.data_dir)
    k, chunk = args.num_samples, args.chunk_size
    with torch.no_grad():
        z = vae.posterior(x).sample((k,))  # [K, B, z_dim]: what the guide proposes, drawn once
    z_tiles = tiles(z)
    weights = [m.weight for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
    top = estimate_log_marginal(vae.model, vae.guide, x, k, chunk, seed=0)
    with torch.no_grad():
        largest = _StreamingTopK(_tail_size(k))
        largest.update(log_weights_chunk(vae.model, vae.guide, x, 0, k, seed=0))
    assert torch.allclose(pareto_khat(largest.values, k), top.khat, equal_nan=True)

    compiled = compiled_log_density(vae, z_tiles, x)
    contenders = {
        "m": lambda: timed(lambda: matmuls_alone(weights, z_tiles), device),
        "d": lambda: timed(lambda: decoder_alone(vae, z_tiles), device),
        "o": lambda: timed(lambda: observation_log_density(vae, z_tiles, x), device),
        "k": lambda: timed(lambda: pareto_khat(largest.values, k), device),
        **({"f": lambda: timed(compiled, device)} if compiled else {}),
        "c": lambda: timed(lambda: estimate_log_marginal(vae.model, vae.guide, x, k, chunk, seed=0), device),
    }
    for run in contenders.values():
        run()  # warm-up
    flops = importance_flops_per_image(vae, x, k, chunk) * len(x)
    limit = gemm_rate(device)
    seconds = interleaved_medians(contenders, args.repeats)
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; {args.images} test images, "
          f"K = {k}, chunk {chunk}, tiles of {len(z_tiles[0]) * args.images} rows; {flops / 1e9:.1f} GFLOP of matrix "
          f"products per call; FLOP limit {limit / 1e9:.1f} GFLOP/s (float32 2048 x 2048 GEMM, best of 5, this run); "
          f"medians of {args.repeats} interleaved rounds\n")
    rows = [
        ("(m) the decoder's matrix products alone", seconds["m"]),
        ("(d) the decoder", seconds["d"]),
        ("(o) the decoder and the likelihood's log-density", seconds["o"]),
        *([("(f) (o), the log-density compiled", seconds["f"])] if compiled else []),
        ("(k) the PSIS k-hat", seconds["k"]),
        ("(c) the estimator", seconds["c"]),
        ("(c) - (o) - (k): the rest (the guide's draws and log q, the prior, Pyro's traces, the reductions)",
         seconds["c"] - seconds["o"] - seconds["k"]),
        ("(c) - (k): the estimator without the k-hat", seconds["c"] - seconds["k"]),
        ("(c) - (o) + (d): the estimator with a free log-density", seconds["c"] - seconds["o"] + seconds["d"]),
        ("(c) - (k) - (o) + (d): without both", seconds["c"] - seconds["k"] - seconds["o"] + seconds["d"]),
        *([("(c) - (o) + (f): the estimator, its log-density compiled", seconds["c"] - seconds["o"] + seconds["f"])]
          if compiled else []),
    ]
    print("| | ms per call | share of (c) | of FLOP limit |")
    print("| --- | --- | --- | --- |")
    for name, s in rows:
        share = f"{s / seconds['c']:.0%}"
        fraction = "-" if name.startswith(("(k)", "(c) - (o) - (k)")) else f"{flops / s / limit:.1%}"
        print(f"| {name} | {s * 1e3:.1f} | {share} | {fraction} |", flush=True)


if __name__ == "__main__":
    main()
