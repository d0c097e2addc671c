"""AIS tuning at equal cost: ``two-pass`` at T steps against ``pilot`` at the T' steps the same gradient evaluations buy.

Two-pass spends (W + 2T - 2) L + 2 gradient evaluations per chain (W = `WARMUP_TRANSITIONS` warm-up transitions, a
full tuning pass, the returned pass); the pilot spends (W + T_p + T' - 2) L + 2 with T_p = T'/10 (at least 10), so
T' = 2T / 1.1 matches it exactly when T' >= 100 (T >= 55). On one trained checkpoint, same seed, chains and leapfrog
steps:

- the BDMC gap (upper - lower bound) on ``--bdmc`` images simulated from the model, mean and 95th percentile:
  how far forward AIS can be from log p(x) on data like them;
- the AIS mean log p(x) on the first ``--images`` test images, and the mean paired difference pilot - two-pass
  with its standard error over images: both are stochastic lower bounds, the higher the better.

The default tuning is the one with the narrower gap and the higher mean at equal evaluations. No timings: the
cost is the gradient evaluations (``benchmarks/ais_throughput.py`` times them).

    python benchmarks/ais_tuning.py runs/RUN --steps 100 --chains 16 --bdmc 50 --images 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkpoint_and_images, machine  # noqa: E402

from inference.estimators.ais import PILOT_FRACTION, AISSettings, ais_log_marginal, bdmc  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402


def equal_cost_pilot_steps(two_pass_steps: int) -> int:
    """T' with the pilot's T'/10 + T' transitions about the two-pass's 2T."""
    return round(2 * two_pass_steps / (1 + 1 / PILOT_FRACTION))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=100, help="T of the two-pass run")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--bdmc", type=int, default=50, help="images simulated from the model for the sandwich")
    p.add_argument("--images", type=int, default=50, help="test images for the AIS mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    vae, _, x = checkpoint_and_images(args.run, device, args.images, args.data_dir)
    settings = {"two-pass": args.steps, "pilot": equal_cost_pilot_steps(args.steps)}
    rows = {}
    for tuning, steps in settings.items():
        ais = AISSettings(args.chains, steps, args.leapfrog, tuning=tuning)
        sandwich = bdmc(vae.model, vae.guide, args.bdmc, x[:1], ais, seed=args.seed)
        est = ais_log_marginal(vae.model, vae.guide, x, ais, seed=args.seed)
        rows[tuning] = (steps, sandwich.gap, est)
    print(f"machine: {machine(device)}; torch {torch.__version__}; run {args.run}")
    print(f"C={args.chains} chains, L={args.leapfrog} leapfrog steps, seed {args.seed}; BDMC on {args.bdmc} simulated "
          f"images, AIS on the first {args.images} test images\n")
    print("| tuning | T | gradient evaluations / image | BDMC gap mean (nats) | gap p95 | AIS mean log p(x) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for tuning, (steps, gap, est) in rows.items():
        print(f"| {tuning} | {steps} | {est.gradient_evaluations:,} | {gap.mean().item():.4f} | "
              f"{torch.quantile(gap, 0.95).item():.4f} | {est.log_px.mean().item():.3f} |")
    diff = rows["pilot"][2].log_px - rows["two-pass"][2].log_px
    print(f"\npilot - two-pass, AIS per image: {diff.mean().item():+.4f} ± {diff.std().item() / len(diff) ** 0.5:.4f} "
          "nats (mean ± standard error over images; positive: the pilot's bound is higher)")


if __name__ == "__main__":
    main()
