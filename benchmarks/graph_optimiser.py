"""A compiled loss's step with and without TorchScript's graph optimiser, per objective and batch size.

`inference.training.compiled.SharedParameterFunction` runs its graph on the CPU under
``torch.jit.optimized_execution(False)``: the traced ops then record eager autograd's backward instead of the
optimiser's own differentiation of the graph. This times one step's loss and backward (no optimiser step, no data
serving) both ways (its ``optimise_on_cpu`` set per contender), on the same network, batch and seed: (o) with the
optimiser, (n) without; two loss objects of the same objective, so each graph keeps its own executor state.
burda2015 network, real MNIST, one process, contenders interleaved, median of ``--repeats`` rounds of ``--steps``
steps, milliseconds per step:

    python benchmarks/graph_optimiser.py --device cpu
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, machine, timed  # noqa: E402

from inference.training.compiled import SharedParameterFunction  # noqa: E402
from inference.training.objectives import make_elbo  # noqa: E402
from models.vae import VAE  # noqa: E402
from pyro_vae.config import PRESETS  # noqa: E402
from pyro_vae.data import load_pixels  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402

#: (--elbo, --gradient, k)
OBJECTIVES = [("meanfield", "standard", 1), ("trace", "standard", 1), ("trace", "stl", 1), ("iwae", "standard", 5),
              ("iwae", "dreg", 5)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="20,100,128")
    p.add_argument("--steps", type=int, default=40, help="steps per timing")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    pixels = load_pixels("mnist", True, args.data_dir)
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; median of "
          f"{args.repeats} interleaved rounds of {args.steps} steps (loss and backward)\n")
    print("| objective | batch | (o) optimised ms/step | (n) not ms/step | n/o (time) |\n"
          "| --- | --- | --- | --- | --- |")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        x = torch.bernoulli(pixels[:batch_size].to(device).float() / 255)
        for name, gradient, k in OBJECTIVES:
            pyro.clear_param_store()
            torch.manual_seed(0)
            vae = VAE.from_config(PRESETS["burda2015"].model).to(device)
            model, guide, weight = vae.model, vae.guide, torch.ones((), device=device)

            def steps(optimise: bool):
                elbo = make_elbo(name, True, k, gradient)

                def run() -> None:
                    SharedParameterFunction.optimise_on_cpu = optimise
                    try:
                        for _ in range(args.steps):
                            elbo.differentiable_loss(model, guide, x, weight).backward()
                    finally:
                        SharedParameterFunction.optimise_on_cpu = False
                return run

            contenders = {"o": steps(True), "n": steps(False)}
            for run in contenders.values():
                run(), run()  # trace, then let the profiling executor settle
            ms = {key: value / args.steps * 1000 for key, value in
                  interleaved_medians({key: (lambda run=run: timed(run, device)) for key, run in contenders.items()},
                                      args.repeats).items()}
            label = name if gradient == "standard" else f"{name} --gradient {gradient}"
            print(f"| {label}{f' k={k}' if k > 1 else ''} | {batch_size} | {ms['o']:.3f} | {ms['n']:.3f} | "
                  f"{ms['n'] / ms['o']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
