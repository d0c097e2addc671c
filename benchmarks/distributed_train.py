"""Training throughput at N = 1 and N = 2 processes (``torchrun``), same settings and global batch.

Runs ``python -m inference.svi`` once in one process and once under
``torchrun --nproc_per_node 2`` (as subprocesses, alternating, ``--rounds``
times) for ``--epochs`` epochs on the first ``--train-limit`` images, reads the
last epoch's ``seconds`` from ``metrics.jsonl`` (the steps alone: no start-up,
loading or test ELBO) and prints training images per second for both, their
ratio, and the two runs' test ELBOs. On a CPU the processes share the
machine's cores: one process with T threads against N processes with T/N
threads each (``--threads``, the total), so the ratio shows the cost or gain
of splitting a batch, not more hardware.

    python benchmarks/distributed_train.py --train-limit 12000 --batch-size 100 --threads 2
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


def run_training(processes: int, threads: int, flags: list[str], out: Path) -> dict:
    """The last epoch's metrics record of one training run with ``processes`` processes."""
    run_module("inference.svi", processes, threads, [*flags, "--out", str(out)], REPO)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-limit", type=int, default=12000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100, help="the global batch, split across the processes")
    p.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (the first warms up)")
    p.add_argument("--preset", default="burda2015")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="total threads, shared by the processes")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    flags = ["--preset", args.preset, "--train-limit", str(args.train_limit), "--test-limit", str(args.test_limit),
             "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--device", args.device,
             "--no-progress"]
    seconds, records = alternating_runs(lambda n, out: run_training(n, args.threads, flags, out),
                                        lambda record: record["seconds"], args.rounds)
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {machine(torch.device(args.device))}; preset {args.preset}, {args.train_limit} images, "
          f"global batch {args.batch_size}, epoch {args.epochs} timed, median of {args.rounds} rounds")
    rate = {n: args.train_limit / s for n, s in seconds.items()}
    for n in (1, 2):
        threads = max(1, args.threads // n)
        print(f"N = {n}: {rate[n]:,.0f} images/s ({threads} thread{'s' if threads > 1 else ''} each), "
              f"test ELBO {records[n]['test_elbo']:.2f}")
    print(f"ratio N=2 / N=1: {rate[2] / rate[1]:.2f}")


if __name__ == "__main__":
    main()
