"""Resident memory kept by repeated AIS calls, per compiled form: what TorchScript holds after each call's graphs.

Calls ``ais_log_marginal`` ``--calls`` times on one batch (the default VAE, untrained: memory does not depend on
the weights), ``--images`` images, ``--chains`` chains, T = 2, and prints the process's resident memory (MiB)
every ``--every`` calls and the growth per call after the first ``--every``. ``--form``: ``graphs`` (the default
compiled form), ``traced`` (the fallback) or ``plain`` (uncompiled). One form per process, so each starts clean:

    python benchmarks/ais_memory.py --form graphs
    python benchmarks/ais_memory.py --form traced
    python benchmarks/ais_memory.py --form plain
"""

from __future__ import annotations

import argparse
import gc
import warnings

import torch

from inference.estimators import ais_potential
from inference.estimators.ais import ais_log_marginal
from models.vae import VAE


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--form", choices=("graphs", "traced", "plain"), default="graphs")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--calls", type=int, default=60)
    p.add_argument("--every", type=int, default=20)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.form == "traced":
        ais_potential.COMPILED_FORMS = {"traced": ais_potential.COMPILED_FORMS["traced"]}
    torch.manual_seed(0)
    vae = VAE()
    x = torch.bernoulli(torch.full((args.images, 784), 0.3))
    marks = []
    for call in range(1, args.calls + 1):
        est = ais_log_marginal(vae.model, vae.guide, x, num_chains=args.chains, num_steps=2, leapfrog_steps=2,
                               compiled=args.form != "plain")
        if call % args.every == 0:
            gc.collect()
            marks.append(resident_mib())
            print(f"{args.form}: after {call} calls {marks[-1]:.0f} MiB (ran: {est.compiled_form or 'plain'})",
                  flush=True)
    if len(marks) > 1:
        print(f"{args.form}: {(marks[-1] - marks[0]) / (args.calls - args.every):.2f} MiB a call after the first "
              f"{args.every}")


if __name__ == "__main__":
    main()
