"""Equal budget, equal model: this project's training vs a hand-written PyTorch VAE, scored by one estimator.

The yardstick of issue 10. For each training seed:

- (h) a hand-written PyTorch VAE: the same networks (built by ``VAE.from_config`` and started by its
  ``initialise_burda2015``, so the same initialisation for the same seed as ``--init burda2015``), the same
  batches in the same order (this project's seeded dynamic binarisation), Adam 1e-3 on the *mean* loss,
  closed-form KL, no Pyro in the step;
- each ``--variant NAME=FLAGS``: ``inference.svi.train`` with the base settings plus FLAGS
  (any ``python -m inference.svi`` flags), e.g. ``stl=--gradient stl``.

Every model is scored by the same importance sampler (``inference.estimators.importance``, K draws from
its own guide, same seed) on the same first ``--test-limit`` binarised test images, so
differences are paired per image. Printed: log p(x) and ELBO gap per model (mean over seeds of
the per-image values, ± standard error over images), the paired difference to (h) with its
standard error, the per-seed means (seed-to-seed spread is part of the answer), and seconds
per training epoch (the same process, one after another).

    python benchmarks/quality_parity.py --epochs 150 --seeds 2 --test-limit 2000 -K 5000 \\
        --variant "trace=--elbo trace" --variant "stl=--elbo trace --gradient stl" --variant "meanfield=--elbo meanfield"
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from inference.estimators.importance import estimate_log_marginal  # noqa: E402
from inference.svi import build_parser, config_from_args, train  # noqa: E402
from models.vae import VAE  # noqa: E402
from pyro_vae.config import PRESETS  # noqa: E402
from pyro_vae.data import DataSpec, DataSplits, load_splits  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402
from inference.training.run_start import mean_training_pixels  # noqa: E402


def train_handwritten(data: DataSplits, epochs: int, batch_size: int, seed: int, lr: float) -> tuple[VAE, float]:
    """(h): plain PyTorch on the project's networks and batches. Returns the model and seconds per epoch."""
    torch.manual_seed(seed)
    vae = VAE.from_config(PRESETS["burda2015"].model).to(data.train.device)
    vae.initialise_burda2015(mean_training_pixels(data.train))  # the start `train` gives it (--init burda2015)
    optim = torch.optim.Adam(vae.parameters(), lr=lr)
    started = time.perf_counter()
    for epoch in range(epochs):
        for x in data.train.batches(batch_size, epoch):
            q = vae.posterior(x).base_dist  # Normal(loc, softplus(.) + 1e-3): the same guide head
            z = q.rsample()
            logits = vae.decoder(z)
            reconstruction = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = 0.5 * (q.loc.pow(2) + q.scale.pow(2) - 1 - 2 * q.scale.log()).sum()
            loss = (kl - reconstruction) / len(x)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    return vae.eval(), (time.perf_counter() - started) / epochs


def score(vae: VAE, x: torch.Tensor, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (log p-hat(x), ELBO), float64 ``[N]``: K draws from the model's own guide, batches of 100."""
    parts = [estimate_log_marginal(vae.model, vae.guide, xb, num_samples, min(num_samples, 500), (1,), seed=seed + i)
             for i, xb in enumerate(x.split(100))]
    return torch.cat([p.log_px for p in parts]), torch.cat([p.elbo for p in parts])


def mean_se(values: torch.Tensor) -> str:
    return f"{values.mean():.2f} ± {values.std() / math.sqrt(len(values)):.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--seeds", type=int, default=2, help="training seeds 0..N-1")
    p.add_argument("--test-limit", type=int, default=2000, help="first N test images, scored by every model")
    p.add_argument("-K", "--num-samples", type=int, default=5000, help="importance samples per image")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--variant", action="append", metavar="NAME=FLAGS",
                   help="a training of this project: a name and inference.svi flags (repeatable; default: the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    variants = dict(v.split("=", 1) for v in (args.variant or ["default="]))
    device = resolve_device(args.device)
    base = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--device", str(device), "--no-progress"]
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}\n"
          f"budget: {args.epochs} epochs, batch {args.batch_size}, Adam {args.lr}, dynamic binarisation, "
          f"{args.train_limit or 60000} training images; seeds 0..{args.seeds - 1}; scored with K = {args.num_samples} "
          f"on the first {args.test_limit} test images\n", flush=True)

    log_px: dict[str, list[torch.Tensor]] = {"hand-written": []}
    gap: dict[str, list[torch.Tensor]] = {"hand-written": []}
    seconds: dict[str, list[float]] = {"hand-written": []}
    for seed in range(args.seeds):
        data = load_splits(DataSpec("mnist", "dynamic", args.data_dir, args.train_limit, args.test_limit, seed), device)
        vae, per_epoch = train_handwritten(data, args.epochs, args.batch_size, seed, args.lr)
        lp, elbo = score(vae, data.test, args.num_samples, seed=10_000)
        log_px["hand-written"].append(lp), gap["hand-written"].append(lp - elbo), seconds["hand-written"].append(per_epoch)
        print(f"seed {seed} hand-written: log p(x) {lp.mean():.2f}, {per_epoch:.2f} s/epoch", flush=True)
        for name, flags in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                config = config_from_args(build_parser().parse_args([*base, "--seed", str(seed), "--out", tmp,
                                                                      *shlex.split(flags)]))
                result = train(config, progress=False, data=data)
            lp, elbo = score(result.model.eval(), data.test, args.num_samples, seed=10_000)
            per_epoch = sum(h["seconds"] for h in result.history) / len(result.history)
            for table, value in ((log_px, lp), (gap, lp - elbo), (seconds, per_epoch)):
                table.setdefault(name, []).append(value)
            print(f"seed {seed} {name} ({flags or 'defaults'}; compiled: {result.compiled}): log p(x) {lp.mean():.2f}, "
                  f"{per_epoch:.2f} s/epoch", flush=True)

    reference = torch.stack(log_px["hand-written"]).mean(0)
    print("\n| model | flags | log p(x) | ELBO gap | paired difference to hand-written | per-seed log p(x) | s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in log_px:
        mean_over_seeds = torch.stack(log_px[name]).mean(0)
        difference = "" if name == "hand-written" else mean_se(mean_over_seeds - reference)
        per_seed = ", ".join(f"{v.mean():.2f}" for v in log_px[name])
        print(f"| {name} | {variants.get(name, 'closed-form KL, mean loss')} | {mean_se(mean_over_seeds)} | "
              f"{torch.stack(gap[name]).mean(0).mean():.2f} | {difference} | {per_seed} | "
              f"{sum(seconds[name]) / len(seconds[name]):.2f} |")


if __name__ == "__main__":
    main()
