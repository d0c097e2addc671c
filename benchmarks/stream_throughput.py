"""Streaming a folder vs holding it: images per second served, and training epochs, side by side in one run.

Writes ``--images`` random-blob PNGs of ``--side`` x ``--side`` (colour) into a temporary folder, then, one
contender after another per round (``--rounds``, median):

  (a) held: the folder decoded once into one uint8 tensor (`pyro_vae.images.Images`); the decoding itself is
      timed apart, as the one-off cost it is;
  (b) streamed with 0, 1, 2 ... ``--workers`` DataLoader processes (`pyro_vae.streaming.StreamedImages`).

First the bare serving of one epoch of batches (``--batch-size``, dynamic binarisation), then one training
epoch of the default MLP VAE on it (``python -m inference.svi``'s ``train``, its recorded ``seconds``), held
against streamed with the most workers. Prints images/s and the ratios streamed/held.

    python benchmarks/stream_throughput.py --images 6000 --side 32 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, machine  # noqa: E402

from inference.svi import train  # noqa: E402
from pyro_vae.config import ModelConfig, TrainConfig  # noqa: E402
from pyro_vae.data import load_splits  # noqa: E402


def write_pngs(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        image = np.full((side, side, 3), 20, np.uint8)
        r, c = rng.integers(0, side // 2, 2)
        image[r: r + side // 2, c: c + side // 2] = rng.integers(120, 256, 3, dtype=np.uint8)
        Image.fromarray(image).save(root / f"{i:05d}.png")


def serve_epoch(splits, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in splits.train.batches(batch_size, epoch=0):
        pass
    return time.perf_counter() - start


def train_epoch(folder: Path, budget: float, workers: int, out: Path, batch_size: int) -> float:
    config = TrainConfig(model=ModelConfig(z_dim=50, hidden_dims=(200, 200)), preset=None,
                         dataset=f"folder:{folder}", epochs=1, batch_size=batch_size, device="cpu", out=str(out),
                         memory_budget=budget, workers=workers, jit=False)
    with contextlib.redirect_stdout(io.StringIO()):  # train's per-epoch line
        return train(config, progress=False).history[-1]["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_pngs(folder, args.images, args.side)
        spec = f"folder:{folder}"
        start = time.perf_counter()
        held = load_splits(spec)
        decode_seconds = time.perf_counter() - start
        streamed = {w: load_splits(spec, memory_budget=0, workers=w) for w in range(args.workers + 1)}
        contenders = {"held": lambda: serve_epoch(held, args.batch_size)}
        contenders |= {f"streamed, {w} worker{'' if w == 1 else 's'}": (lambda s=s: serve_epoch(s, args.batch_size))
                       for w, s in streamed.items()}
        served = interleaved_medians(contenders, args.rounds)
        runs = iter(range(10**6))
        trained = interleaved_medians({
            "held": lambda: train_epoch(folder, 1e6, 0, Path(tmp) / f"run{next(runs)}", args.batch_size),
            f"streamed, {args.workers} worker{'' if args.workers == 1 else 's'}":
                lambda: train_epoch(folder, 0, args.workers, Path(tmp) / f"run{next(runs)}", args.batch_size),
        }, args.rounds)
    n_train = len(held.train)
    print(f"machine: {machine(torch.device('cpu'))}; {args.images} PNGs of {args.side}x{args.side}x3 "
          f"({n_train} training images), batch {args.batch_size}, median of {args.rounds} rounds")
    print(f"held: decoding the folder once took {decode_seconds:.2f} s ({args.images / decode_seconds:,.0f} images/s)")
    print("serving one epoch of batches:")
    for name, seconds in served.items():
        print(f"  {name:22s} {n_train / seconds:>10,.0f} images/s   streamed/held time {seconds / served['held']:.2f}")
    print("one training epoch (default MLP VAE, plain loss):")
    for name, seconds in trained.items():
        print(f"  {name:22s} {n_train / seconds:>10,.0f} images/s   {seconds / trained['held']:.2f}x the held time")


if __name__ == "__main__":
    main()
