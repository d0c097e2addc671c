"""The report's throughput at N = 1 and N = 2 processes (``torchrun``), same checkpoint, images and seed.

Runs ``python -m inference.evaluate`` once in one process and once under
``torchrun --nproc_per_node 2`` (as subprocesses, alternating, ``--rounds``
times), reads each report's ``seconds_log_px`` (the importance-sampling part)
and prints images per second for both and their ratio, and whether the two
reports agree. On a CPU the processes share the machine's cores: one process
with T threads against N processes with T/N threads each (``--threads``, the
total), so the ratio shows the cost or gain of sharding, not more hardware.

    python benchmarks/distributed_eval.py runs/RUN --images 500 --num-samples 1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternating_runs, machine, run_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_report(run: str, processes: int, threads: int, flags: list[str], out: Path) -> dict:
    """The report of ``python -m inference.evaluate RUN FLAGS`` with ``processes`` processes."""
    run_module("inference.evaluate", processes, threads, [run, *flags, "--out", str(out)], REPO)
    return json.loads((out / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="total threads, shared by the processes")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    flags = ["--test-limit", str(args.images), "--num-samples", str(args.num_samples), "--batch-size",
             str(args.batch_size), "--device", "cpu", "--no-progress"]
    seconds, reports = alternating_runs(lambda n, out: run_report(args.run, n, args.threads, flags, out),
                                        lambda report: report["seconds_log_px"], args.rounds)
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {machine(torch.device('cpu'))}; {args.images} images, K = {args.num_samples}, "
          f"batch {args.batch_size}, median of {args.rounds} rounds")
    rate = {n: args.images / s for n, s in seconds.items()}
    for n in (1, 2):
        print(f"N = {n}: {rate[n]:.1f} images/s ({max(1, args.threads // n)} threads each)")
    print(f"ratio N=2 / N=1: {rate[2] / rate[1]:.2f}")
    same = abs(reports[1]["log_px"]["mean"] - reports[2]["log_px"]["mean"]) <= 1e-9
    print(f"log p(x): {reports[1]['log_px']['mean']:.6f} (N=1), {reports[2]['log_px']['mean']:.6f} (N=2); "
          f"{'equal' if same else 'DIFFERENT'} (threads per process differ: float sums may too)")


if __name__ == "__main__":
    main()
