"""Likelihoods for 8-bit images at one budget: grey-level MNIST (the MLP and the conv nets) under the discretized
logistic (K=1 and K=10), the beta-binomial and the learned Gaussian on uniformly dequantized data, then the colour
tiles folder under the mixture; bits per dimension by importance sampling and AIS, beside published 8-bit MNIST
results.

Trains each row with ``python -m inference.svi`` (same epochs, batch size, step size, activation, seed and data) and
reports it with ``python -m inference.evaluate`` (same K, test images, AIS schedule and seed), then prints one
Markdown table: -log2 P(x) / D of the discrete image (a lower bound's value for the dequantized row, said so)
by IS, the ELBO's, the rate, and IS beside AIS on the images AIS ran on. No timings: this is a table of likelihoods
(``benchmarks/train_throughput.py`` times training). The budget of BENCHMARKS.md's table:

    python benchmarks/eight_bit.py --epochs 3 --num-samples 5000 --test-limit 100 --ais-limit 50 --ais-steps 50 \\
        --ais-chains 4 --tiles /tmp/sample-folders/tiles --tiles-limit 25 --out runs/eight-bit

The mixture's log-density costs about ten times the others' per particle, and a colour tile has four times
MNIST's pixels: ``--tiles-limit N`` reports the tiles row on its first N test images (IS and AIS) to fit the
budget.

``--tiles`` is a folder from ``benchmarks/make_sample_folders.py`` (it needs scikit-learn); without it the colour
row is left out.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

#: One row's data and likelihood flags (the architecture is added per row).
LIKELIHOOD_ROWS = {
    "discretized logistic, K=1": ["--likelihood", "discretized-logistic", "--mixture-components", "1"],
    "discretized logistic, K=10": ["--likelihood", "discretized-logistic", "--mixture-components", "10"],
    "beta-binomial": ["--likelihood", "beta-binomial"],
    "gaussian-learned, --dequantize uniform": ["--likelihood", "gaussian-learned", "--dequantize", "uniform"],
}

#: Published bits/dim on 8-bit MNIST (28 x 28 unless said), test set.
PUBLISHED = [
    ("RealNVP (Dinh et al. 2017), dequantized flow", 1.06),
    ("Glow (Kingma & Dhariwal 2018), dequantized flow", 1.05),
    ("FFJORD (Grathwohl et al. 2019), dequantized flow", 0.99),
    ("Residual Flows (Chen et al. 2019), dequantized flow", 0.97),
    ("Bit-Swap (Kingma et al. 2019), hierarchical VAE, 32 x 32 padded images", 1.27),
]


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def rows(tiles: Path | None) -> list[tuple[str, list[str]]]:
    """(name, svi flags) of every row: both architectures on MNIST, then the colour tiles under the mixture."""
    out = [(f"MNIST {arch.upper()}, {name}", ["--binarize", "none", "--arch", arch, *flags])
           for arch in ("mlp", "conv") for name, flags in LIKELIHOOD_ROWS.items()]
    if tiles is not None:
        out.append(("colour tiles 32 x 32 x 3 (MLP), discretized logistic, K=10",
                    ["--dataset", f"folder:{tiles}", "--arch", "mlp", *LIKELIHOOD_ROWS["discretized logistic, K=10"]]))
    return out


def bits(nats_per_image: float, dim: int) -> float:
    """-log P per image in nats -> bits per dimension."""
    return nats_per_image / (dim * math.log(2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--activation", default="relu")
    p.add_argument("--num-samples", type=int, default=5000, help="K of importance sampling")
    p.add_argument("--test-limit", type=int, default=200)
    p.add_argument("--ais-limit", type=int, default=200)
    p.add_argument("--ais-steps", type=int, default=100)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--train-limit", type=int, help="train on the first N images (a smoke test; the table uses all)")
    p.add_argument("--tiles", type=Path, help="the colour tiles folder of benchmarks/make_sample_folders.py")
    p.add_argument("--tiles-limit", type=int, help="IS and AIS on the first N test tiles (default: as MNIST)")
    p.add_argument("--only", help="comma-separated row numbers (1-based) to run; the others are read from --out "
                                  "(--only 0: run none, print the table of what --out holds)")
    p.add_argument("--out", type=Path, default=Path("runs/eight-bit"))
    args = p.parse_args(argv)
    table = rows(args.tiles)
    only = {int(i) for i in args.only.split(",")} if args.only else set(range(1, len(table) + 1))
    for i, (name, flags) in enumerate(table, start=1):
        if i not in only:
            continue
        folder = args.out / f"row{i}"
        tiles = "--dataset" in flags and args.tiles_limit
        test_limit, ais_limit = (args.tiles_limit, args.tiles_limit) if tiles else (args.test_limit, args.ais_limit)
        run([sys.executable, "-m", "inference.svi", *flags, "--activation", args.activation, "--epochs",
             str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--out", str(folder),
             "--no-progress", *(["--train-limit", str(args.train_limit)] if args.train_limit else [])])
        run([sys.executable, "-m", "inference.evaluate", str(folder), "--num-samples", str(args.num_samples),
             "--test-limit", str(test_limit), "--ais-steps", str(args.ais_steps), "--ais-chains",
             str(args.ais_chains), "--ais-limit", str(ais_limit), "--no-progress"])
    print(f"{args.epochs} epochs, batch {args.batch_size}, Adam {args.lr:g}, {args.activation}; IS K={args.num_samples} "
          f"on the first {args.test_limit} test images; AIS T={args.ais_steps}, {args.ais_chains} chains on the first "
          f"{args.ais_limit}{f' (the tiles: both on the first {args.tiles_limit})' if args.tiles_limit else ''}; "
          "bits/dim = -log2 P(x) / D of the discrete 8-bit image (lower is better)\n")
    print("| data, nets, likelihood | kind | bits/dim IS | bits/dim ELBO | NLL IS (nats/image) | rate (nats) | "
          "AIS's images: bits/dim IS | bits/dim AIS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (name, _) in enumerate(table, start=1):
        folder = args.out / f"row{i}"
        if not (folder / "report" / "report.json").exists():
            print(f"| {name} | (not run) | | | | | | |")
            continue
        report = json.loads((folder / "report" / "report.json").read_text())
        dim = report["dim"]
        ais = report.get("ais") or {}
        ais_bits = f"{ais['bits_per_dim']:.3f}" if ais.get("bits_per_dim") is not None else "n/a"
        ais_is_bits = f"{bits(-ais['importance']['mean'], dim):.3f}" if ais else "n/a"  # IS on AIS's images
        rate = sum(v["rate"]["mean"] for v in report["latent_sites"].values())
        print(f"| {name} | {report['bits_per_dim_kind']} | {report['bits_per_dim']:.3f} | "
              f"{bits(-report['elbo']['mean'], dim):.3f} | {report['nll']:.1f} | {rate:.1f} | {ais_is_bits} | "
              f"{ais_bits} |")
    print("\nPublished, 8-bit MNIST test set, bits/dim:\n")
    print("| model | bits/dim |")
    print("| --- | --- |")
    for name, value in PUBLISHED:
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
