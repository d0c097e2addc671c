"""Milliseconds per training step of ``inference.training.step.make_step`` under a few settings, one process.

For looking inside the training step rather than comparing with other code:
Trace_ELBO with Pyro's validation on and off, the compiled loss ``train`` uses
by default (``inference.training.objectives.JitTraceELBO``, compiled once, then reused), and
``pyro.infer.SVI`` with ``pyro.optim.Adam`` (the per-tensor optimisers the loop
used to have). Every contender is built and warmed up
first, then passes of 100 steps alternate between them; median of
``--repeats`` rounds. burda2015 preset, batch 128, real MNIST.

    python benchmarks/step_profile.py --device cpu
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, machine, timed  # noqa: E402

from inference.training.objectives import make_elbo  # noqa: E402
from inference.training.step import make_step  # noqa: E402
from models.vae import VAE  # noqa: E402
from pyro_vae.data import Images, load_pixels  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402


def pass_ms(contender, images: Images, batch_size: int, epoch: int, device: torch.device) -> float:
    """Milliseconds per step over one pass of the images, for ``contender = (vae, step)``.

    Pyro's param store is global and the contenders' parameters share names, so
    each pass starts by clearing it and registering this model's parameters
    (one uncompiled run of model and guide; the JIT loss looks them up by name).
    """
    vae, step = contender
    pyro.clear_param_store()
    probe = images.frozen(0)[:2]
    vae.guide(probe)
    vae.model(probe)
    n = images.num_batches(batch_size)
    return timed(lambda: [step(x) for x in images.batches(batch_size, epoch=epoch)], device) / n * 1000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    images = Images(load_pixels("mnist", True, args.data_dir)[: 100 * args.batch_size], "dynamic", 0, device)
    one = torch.ones((), device=device)

    def ours(elbo, validate: bool):
        vae = VAE().to(device)
        step = make_step(vae, elbo, torch.optim.Adam(vae.parameters(), lr=1e-3))

        def run(x):
            pyro.enable_validation(validate)
            return step(x, one)

        return vae, run

    def pyro_svi():
        vae = VAE().to(device)
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

        def run(x):
            pyro.enable_validation(True)
            return svi.step(x)

        return vae, run

    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; "
          f"batch {args.batch_size}, median of {args.repeats} interleaved rounds of 100-step passes\n")
    steps = {"make_step, Trace_ELBO, validation on (train --no-jit)": ours(Trace_ELBO(), True),
             "make_step, Trace_ELBO, validation off": ours(Trace_ELBO(), False),
             "make_step, compiled JitTraceELBO (train default)": ours(make_elbo("trace", jit=True), True),
             "pyro.infer.SVI + pyro.optim.Adam": pyro_svi()}
    for contender in steps.values():  # warm-up, and the JIT compile
        pass_ms(contender, images, args.batch_size, 0, device)
    rounds = iter(range(1, 10**6))
    medians = interleaved_medians(
        {label: (lambda c=contender: pass_ms(c, images, args.batch_size, next(rounds), device))
         for label, contender in steps.items()}, args.repeats)
    pyro.enable_validation(True)
    print("| step | ms/step |\n| --- | --- |")
    for label, ms in medians.items():
        print(f"| {label} | {ms:.2f} |")


if __name__ == "__main__":
    main()
