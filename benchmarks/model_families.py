"""Model families at one budget on MNIST: the one-layer VAE, the two-layer VAE, the VampPrior VAE and the two-layer
IWAE, each trained and reported the same way, then compared image by image (``python -m inference.compare``).

Trains each with ``python -m inference.svi`` (same epochs, batch size, seed, data) and reports each checkpoint with
``python -m inference.evaluate`` (the same K, test images, AIS schedule and seed), then prints one Markdown table:
test log p(x) by importance sampling and AIS, the ELBO, per-layer rate and active units, seconds per training
epoch (the median over epochs), the paired difference against the first row (from ``inference.compare``), and the published NLL where the
family has one. Example (the budget of BENCHMARKS.md's table):

    python benchmarks/model_families.py --epochs 20 --num-samples 5000 --test-limit 2000 --ais-limit 200 --ais-steps 100 --out runs/families
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

#: name -> (svi flags, published NLL and its source, or None)
FAMILIES = {
    "VAE, one layer (burda2015)": (["--preset", "burda2015"], (86.76, "Burda et al. 2015, Table 1, k=1, 3,280 epochs")),
    "VAE, two layers (burda2015-2layer)": (["--preset", "burda2015-2layer"],
                                           (85.33, "Burda et al. 2015, Table 1, k=1, 3,280 epochs")),
    "VampPrior VAE, one layer (K=500)": (["--preset", "burda2015", "--prior", "vamp", "--pseudo-inputs", "500"], None),
    "IWAE k=5, two layers": (["--preset", "burda2015-2layer", "--elbo", "iwae", "--num-particles", "5"],
                             (82.90, "Burda et al. 2015, Table 1, IWAE k=50 (not 5), 3,280 epochs")),
}


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--num-samples", type=int, default=5000, help="K of importance sampling")
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--ais-limit", type=int, default=200)
    p.add_argument("--ais-steps", type=int, default=100)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--only", help="comma-separated row numbers (1-based) to run; the others are read from --out "
                                  "(--only 0: run none, print the table of what --out holds)")
    p.add_argument("--out", type=Path, default=Path("runs/families"))
    args = p.parse_args(argv)
    only = {int(i) for i in args.only.split(",")} if args.only else set(range(1, len(FAMILIES) + 1))
    folders = []
    for i, (name, (flags, _)) in enumerate(FAMILIES.items(), start=1):
        folder = args.out / f"family{i}"
        folders.append(folder)
        if i not in only:
            continue
        run([sys.executable, "-m", "inference.svi", *flags, "--epochs", str(args.epochs), "--batch-size",
             str(args.batch_size), "--out", str(folder), "--no-progress"])
        run([sys.executable, "-m", "inference.evaluate", str(folder), "--num-samples", str(args.num_samples),
             "--test-limit", str(args.test_limit), "--ais-steps", str(args.ais_steps), "--ais-chains",
             str(args.ais_chains), "--ais-limit", str(args.ais_limit), "--no-progress"])
    compared = json.loads(run([sys.executable, "-m", "inference.compare", *(str(f / "report") for f in folders),
                               "--json"]))
    print(f"{args.epochs} epochs, batch {args.batch_size}; IS K={args.num_samples} on the first {args.test_limit} test "
          f"images; AIS T={args.ais_steps}, {args.ais_chains} chains on the first {args.ais_limit}; nats per image\n")
    print("| model | log p(x) IS | log p(x) AIS | ELBO | minus row 1 (IS, paired) | rate by layer | active units by "
          "layer | s/epoch (median) | published NLL |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    differences = {Path(c["report"]).parent.name: c for c in compared.get("comparisons", [])}
    for i, (name, (_, published)) in enumerate(FAMILIES.items()):
        folder = folders[i]
        report = json.loads((folder / "report" / "report.json").read_text())
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        seconds = statistics.median(h["seconds"] for h in history)  # robust to an epoch slowed by other work
        sites = report["latent_sites"]
        rate = ", ".join(f"{s} {v['rate']['mean']:.1f}" for s, v in sites.items())
        active = ", ".join(f"{s} {v['active_units']}/{v['units']}" for s, v in sites.items())
        diff = differences.get(folder.name)
        paired = (f"{diff['difference']['log_px']['mean']:+.2f} ± {diff['difference']['log_px']['se']:.2f}" if diff
                  else "(baseline)")
        pub = f"{published[0]:.2f} ({published[1]})" if published else "n/a (other architecture)"
        print(f"| {name} | {report['log_px']['mean']:.2f} ± {report['log_px']['se']:.2f} | "
              f"{report['ais']['log_px']['mean']:.2f} | {report['elbo']['mean']:.2f} | {paired} | {rate} | {active} | "
              f"{seconds:.1f} | {pub} |")


if __name__ == "__main__":
    main()
