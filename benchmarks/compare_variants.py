"""Guides x objectives on MNIST at one budget: test log p(x), ELBO and gap, side by side.

Trains each combination with ``python -m inference.svi`` (same epochs, batch
size, learning rate, seed and data) and evaluates each checkpoint with
``python -m inference.evaluate`` (same K, test images and seed), then prints a
Markdown table. Example (the closing-note budget):

    python benchmarks/compare_variants.py --epochs 5 --num-particles 5 --eval-samples 1000 --test-limit 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guides", default="diagonal,full,iaf")
    p.add_argument("--objectives", default="trace,iwae")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-particles", type=int, default=5, help="k of the iwae objective")
    p.add_argument("--train-limit", type=int)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/compare_variants")
    args = p.parse_args(argv)

    rows = []
    for guide in args.guides.split(","):
        for objective in args.objectives.split(","):
            out = Path(args.out) / f"{guide}-{objective}"
            train = [sys.executable, "-m", "inference.svi", "--guide", guide, "--elbo", objective, "--epochs",
                     str(args.epochs), "--device", args.device, "--out", str(out), "--no-progress"]
            if objective == "iwae":
                train += ["--num-particles", str(args.num_particles)]
            if args.train_limit:
                train += ["--train-limit", str(args.train_limit)]
            if not (out / "checkpoint.pt").exists():
                run(train)
            run([sys.executable, "-m", "inference.evaluate", str(out), "--num-samples", str(args.eval_samples),
                 "--test-limit", str(args.test_limit), "--device", args.device, "--no-progress"])
            report = json.loads((out / "report" / "report.json").read_text())
            seconds = sum(json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines())
            rows.append((guide, objective, report, seconds))

    print(f"\n{args.epochs} epochs, batch 128, Adam 1e-3, seed 0; iwae k = {args.num_particles}; "
          f"evaluation K = {args.eval_samples} on the first {args.test_limit} test images\n")
    print("| guide | objective | log p(x) | ELBO | gap | k-hat median | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for guide, objective, r, seconds in rows:
        print(f"| {guide} | {objective} | {r['log_px']['mean']:.2f} ± {r['log_px']['se']:.2f} | "
              f"{r['elbo']['mean']:.2f} | {r['elbo_gap']['mean']:.2f} | {r['khat']['median']:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
