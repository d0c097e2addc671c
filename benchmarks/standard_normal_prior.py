"""One training step with the N(0, I) prior as `models.priors.StandardNormal` against ``dist.Normal(zeros, ones)``.

`models.base.SingleLatentModel.prior` returns a `StandardNormal`, whose log-density skips the location and the
scale (the same values to the bit). This times one compiled step's loss and backward (no optimiser step, no data
serving) with it, (s), and with the plain Normal, (n), per objective and batch size: burda2015 network, real MNIST,
the same seed, one process, contenders interleaved in alternating order, median of ``--repeats`` rounds of
``--steps`` steps, milliseconds per step. ``meanfield`` takes the KL in closed form and never evaluates the prior's
log-density: its row shows the noise.

    python benchmarks/standard_normal_prior.py --device cpu
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, machine, timed  # noqa: E402

from inference.training.objectives import make_elbo  # noqa: E402
from models.vae import VAE  # noqa: E402
from pyro_vae.config import PRESETS  # noqa: E402
from pyro_vae.data import load_pixels  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402

#: (--elbo, k)
OBJECTIVES = [("meanfield", 1), ("trace", 1), ("iwae", 5)]


class PlainPriorVAE(VAE):
    """The VAE with p(z) as it was written before `StandardNormal`."""

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(x.new_zeros(self.z_dim), x.new_ones(self.z_dim)).to_event(1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="20,100,128")
    p.add_argument("--steps", type=int, default=50, help="steps per timing")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    torch.set_flush_denormal(True)  # as `train` runs on the CPU
    pixels = load_pixels("mnist", True, args.data_dir)
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; median of "
          f"{args.repeats} interleaved rounds of {args.steps} steps (loss and backward)\n")
    print("| objective | batch | (n) Normal ms/step | (s) StandardNormal ms/step | s/n (time) |\n"
          "| --- | --- | --- | --- | --- |")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        x = torch.bernoulli(pixels[:batch_size].to(device).float() / 255)
        for name, k in OBJECTIVES:
            def steps(cls: type[VAE]):
                pyro.clear_param_store()
                torch.manual_seed(0)
                vae = cls.from_config(PRESETS["burda2015"].model).to(device)
                elbo, weight = make_elbo(name, True, k), torch.ones((), device=device)

                def run() -> None:
                    for _ in range(args.steps):
                        elbo.differentiable_loss(vae.model, vae.guide, x, weight).backward()
                run(), run()  # trace (before the next contender clears the param store), then let the executor settle
                return run

            contenders = {"n": steps(PlainPriorVAE), "s": steps(VAE)}
            ms = {key: value / args.steps * 1000 for key, value in
                  interleaved_medians({key: (lambda run=run: timed(run, device)) for key, run in contenders.items()},
                                      args.repeats).items()}
            print(f"| {name}{f' k={k}' if k > 1 else ''} | {batch_size} | {ms['n']:.3f} | {ms['s']:.3f} | "
                  f"{ms['s'] / ms['n']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
