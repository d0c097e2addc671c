"""Model families side by side on MNIST, each with its default flags: one and two stochastic layers, the two-layer
IWAE, the VampPrior on one and on two layers, the learned mixture prior, and 8-bit MNIST under the discretized
logistic; the same seed, epochs, batch and test images.

Every row trains with ``python -m inference.svi`` (the mixture prior, a variant written in Python, through
``inference.svi.train``), then reports with ``python -m inference.evaluate`` (importance sampling, the same K on
the same test images; AIS only when ``--ais-steps`` is given), and the binarised rows are compared image by image
with row 1 (``python -m inference.compare``). It prints one Markdown table: log p(x), the ELBO, the paired
difference with row 1, the rate and active units of every latent site, seconds per epoch (median), and the
published NLL where there is one; then, from each run's ``metrics.jsonl``, the first epoch at which the two-layer
VAE's test ELBO is above the one-layer VAE's (the same estimator, ``Trace_ELBO``, in both).

Resumable: a run folder that holds fewer epochs than asked is resumed (``--resume``), a finished report is kept,
so the command can be stopped at any point and started again. Example (BENCHMARKS.md's table):

    python benchmarks/model_families.py --epochs 50 --num-samples 5000 --test-limit 1000 --out runs/families50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: name -> (svi flags, or None for the Python-built mixture prior; published NLL and its source, or None).
#: The binarised rows train Trace_ELBO, so every ELBO (and the per-epoch comparison of rows 1 and 2) is the same
#: estimator; the 8-bit row trains its own default.
FAMILIES = {
    "VAE, one layer (burda2015)": (["--preset", "burda2015", "--elbo", "trace"],
                                   (86.76, "Burda et al. 2015, Table 1, k=1, 3,280 epochs")),
    "VAE, two layers (burda2015-2layer)": (["--preset", "burda2015-2layer"],
                                           (85.33, "Burda et al. 2015, Table 1, k=1, 3,280 epochs")),
    "IWAE k=5, two layers": (["--preset", "burda2015-2layer", "--elbo", "iwae", "--num-particles", "5"],
                             (82.90, "Burda et al. 2015, Table 1, IWAE k=50 (not 5), 3,280 epochs")),
    "VampPrior K=500, one layer": (["--preset", "burda2015", "--elbo", "trace", "--prior", "vamp"], None),
    "VampPrior K=500, two layers": (["--preset", "burda2015-2layer", "--prior", "vamp"], None),
    "mixture prior (10 Gaussians), one layer": (None, None),
    "8-bit MNIST, discretized logistic K=10": (["--binarize", "none"], None),
}
EIGHT_BIT = "8-bit MNIST, discretized logistic K=10"


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def epochs_done(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def train_mixture(folder: Path, epochs: int, batch_size: int, seed: int) -> None:
    """The mixture-prior row: `models.MixturePriorVAE` (Burda et al.'s net, tanh) trained by `inference.svi.train`."""
    from inference.svi import train
    from models import MixturePriorVAE
    from pyro_vae.cli import signal_status
    from pyro_vae.config import TrainConfig

    resume = (folder / "checkpoint.pt").exists()
    config = TrainConfig(elbo="trace", epochs=epochs, batch_size=batch_size, seed=seed, out=str(folder))
    with contextlib.redirect_stdout(sys.stderr):  # its epoch lines, as the other rows' (stdout is the table)
        result = train(config, resume=resume, progress=False, model=MixturePriorVAE(num_components=10))
    if result.interrupted:
        sys.exit(signal_status(result.stop_signal))


def train_row(flags: list[str] | None, folder: Path, args: argparse.Namespace) -> None:
    if epochs_done(folder) >= args.epochs:
        return
    if flags is None:
        print(f"$ (mixture prior) {folder}", file=sys.stderr, flush=True)
        train_mixture(folder, args.epochs, args.batch_size, args.seed)
        return
    resume = ["--resume"] if (folder / "checkpoint.pt").exists() else [*flags, "--batch-size", str(args.batch_size),
                                                                       "--seed", str(args.seed)]
    run([sys.executable, "-m", "inference.svi", *resume, "--epochs", str(args.epochs), "--out", str(folder),
         "--no-progress"])


def report_row(folder: Path, args: argparse.Namespace, test_limit: int) -> None:
    done = folder / "report" / "report.json"
    if done.exists():
        report = json.loads(done.read_text())
        if (report["epochs_trained"], report["num_samples"], report["n_images"]) == (args.epochs, args.num_samples,
                                                                                    test_limit):
            return
    ais = (["--ais-steps", str(args.ais_steps), "--ais-limit", str(args.ais_limit), "--ais-chains", str(args.ais_chains)]
           if args.ais_steps else ["--ais-steps", "0"])
    run([sys.executable, "-m", "inference.evaluate", str(folder), "--num-samples", str(args.num_samples),
         "--test-limit", str(test_limit), *ais, "--no-progress"])


def first_epoch_above(history: list[dict], baseline: list[dict]) -> int | None:
    """The first epoch at which ``history``'s test ELBO is above ``baseline``'s at the same epoch, or None."""
    for mine, theirs in zip(history, baseline):
        if mine["test_elbo"] > theirs["test_elbo"]:
            return mine["epoch"]
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=5000, help="K of importance sampling")
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--levels-test-limit", type=int, default=200,
                   help="test images of the 8-bit row's report (its pmf over 256 levels costs about 10x a Bernoulli's "
                        "per particle; the row is not paired with the others)")
    p.add_argument("--ais-steps", type=int, default=0, help="T of AIS (default 0: no AIS)")
    p.add_argument("--ais-limit", type=int, default=100)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--only", help="comma-separated row numbers (1-based) to run; the others are read from --out "
                                  "(--only 0: run none, print the table of what --out holds)")
    p.add_argument("--out", type=Path, default=Path("runs/families"))
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    only = {int(i) for i in args.only.split(",")} if args.only else set(range(1, len(FAMILIES) + 1))
    folders = {name: args.out / f"family{i}" for i, name in enumerate(FAMILIES, start=1)}
    rows = [(i, name, flags) for i, (name, (flags, _)) in enumerate(FAMILIES.items(), start=1) if i in only]
    for _, name, flags in rows:  # every run first, then every report: a stop leaves trained models
        train_row(flags, folders[name], args)
    for _, name, _ in rows:
        report_row(folders[name], args, args.levels_test_limit if name == EIGHT_BIT else args.test_limit)

    binarised = [str(folders[name] / "report") for name in FAMILIES if name != EIGHT_BIT]
    compared = json.loads(run([sys.executable, "-m", "inference.compare", *binarised, "--json"]))
    differences = {Path(c["report"]).parent.name: c for c in compared.get("comparisons", [])}
    print(f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}; IS K={args.num_samples} on the first "
          f"{args.test_limit} test images (the 8-bit row: the first {args.levels_test_limit}, and bits/dim of the "
          "discrete image too); nats per image\n")
    print("| model | log p(x) IS | ELBO | minus row 1 (IS, paired) | rate by site | active units by site | "
          "s/epoch (median) | published NLL |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (_, published) in FAMILIES.items():
        folder = folders[name]
        report = json.loads((folder / "report" / "report.json").read_text())
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        seconds = statistics.median(h["seconds"] for h in history)
        sites = report["latent_sites"]
        rate = ", ".join(f"{s} {v['rate']['mean']:.1f}" for s, v in sites.items())
        active = ", ".join(f"{s} {v['active_units']}/{v['units']}" for s, v in sites.items())
        diff = differences.get(folder.name)
        paired = (f"{diff['difference']['log_px']['mean']:+.2f} ± {diff['difference']['log_px']['se']:.2f}" if diff
                  else "(baseline)" if name == next(iter(FAMILIES)) else "n/a (other data)")
        log_px = f"{report['log_px']['mean']:.2f} ± {report['log_px']['se']:.2f}"
        if name == EIGHT_BIT:
            log_px += f" ({report['bits_per_dim']:.3f} bits/dim)"
        pub = f"{published[0]:.2f} ({published[1]})" if published else "n/a"
        print(f"| {name} | {log_px} | {report['elbo']['mean']:.2f} | {paired} | {rate} | {active} | {seconds:.1f} | "
              f"{pub} |")
    histories = {name: [json.loads(line) for line in (folders[name] / "metrics.jsonl").read_text().splitlines()]
                 for name in list(FAMILIES)[:2]}
    one, two = histories.values()
    crossing = first_epoch_above(two, one)
    print(f"\nTest ELBO (Trace_ELBO, one draw per test image) by epoch, one layer / two layers: "
          + ", ".join(f"{a['epoch']}: {a['test_elbo']:.2f} / {b['test_elbo']:.2f}" for a, b in zip(one, two)
                      if a["epoch"] in (1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 150, 200) or a is one[-1]))
    print("Two layers above one from epoch " + (str(crossing) if crossing else f"- (not within {len(two)} epochs)"))


if __name__ == "__main__":
    main()
