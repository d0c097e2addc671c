"""Where a training step's time goes: the hand-written step of ``train_throughput.py`` (a) beside ``train``'s, phase by phase.

burda2015 network, real MNIST, one process. Each phase is timed alone over ``--steps`` repetitions, contenders
interleaved, median of ``--repeats`` rounds, in milliseconds per step:

  serve            a batch of the training images, binarised (ours: `pyro_vae.images.Images.batches`; (a):
                   index, scale, ``torch.bernoulli``)
  loss             the forward pass to the loss (ours: the compiled default loss, ``JitTraceMeanFieldELBO``)
  loss + backward  the same, then ``backward``
  Adam             one optimiser step on the model's parameters: torch's default on this device, and fused
  log-density      the Bernoulli log-density of a batch's logits, forward and backward: torch's fused
                   ``binary_cross_entropy_with_logits`` (what training uses now) and the product form with its own
                   exact backward (what it used before issue 40; kept here as the reference)

    python benchmarks/step_phases.py --device cpu --batch-sizes 20,100
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, machine, timed  # noqa: E402

from inference.training.objectives import make_elbo  # noqa: E402
from models.likelihoods import _log_prob_sum  # noqa: E402
from models.vae import VAE  # noqa: E402
from pyro_vae.config import PRESETS  # noqa: E402
from pyro_vae.data import Images, load_pixels  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402
from pyro_vae.nets import MLP  # noqa: E402


class ProductLogDensity(torch.autograd.Function):
    """The Bernoulli log-density that training used before issue 40: the product form's forward pass (what the
    report's forward passes still use, `models.likelihoods._log_prob_sum`) and the exact gradient x - sigmoid(l)
    written by hand."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, value)
        return _log_prob_sum(logits, value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, value = ctx.saved_tensors
        return (grad.unsqueeze(-1) * (value - torch.sigmoid(logits))).sum_to_size(logits.shape), None


def phases(pixels: torch.Tensor, batch_size: int, device: torch.device, steps: int) -> dict[str, callable]:
    """label -> a function that runs ``steps`` repetitions of one phase."""
    cfg = PRESETS["burda2015"].model.resolved()
    enc = MLP(784, cfg.hidden_dims, 2 * cfg.z_dim, cfg.activation).to(device)
    dec = MLP(cfg.z_dim, tuple(reversed(cfg.hidden_dims)), 784, cfg.activation).to(device)
    data = pixels.to(device)
    order = torch.randperm(len(data), device=device)
    x = torch.bernoulli(data[:batch_size].float() / 255)

    def hand_serve() -> None:
        for i in range(steps):
            start = (i * batch_size) % (len(data) - batch_size)
            torch.bernoulli(data[order[start: start + batch_size]].float() / 255)

    def hand_loss() -> torch.Tensor:
        loc, scale_raw = enc(x).chunk(2, -1)
        scale = F.softplus(scale_raw) + 1e-3
        z = loc + scale * torch.randn_like(loc)
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
        return kl + F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")

    vae = VAE.from_config(PRESETS["burda2015"].model).to(device)
    model, guide = vae.model, vae.guide
    elbo = make_elbo("meanfield", True)
    weight = torch.ones((), device=device)
    images = Images(pixels, "dynamic", 0, device)

    def ours_loss() -> torch.Tensor:
        return elbo.differentiable_loss(model, guide, x, weight)

    def ours_serve() -> None:
        served = 0
        while served < steps:
            for _ in zip(range(steps - served), images.batches(batch_size, epoch=served)):
                served += 1

    logits = torch.randn(batch_size, 784, device=device, requires_grad=True)

    def repeat(fn):
        def run() -> None:
            for _ in range(steps):
                fn()
        return run

    def copies() -> list[torch.Tensor]:
        return [p.detach().clone().requires_grad_() for p in vae.parameters()]

    def adam(params, **kernel):
        optim = torch.optim.Adam(params, lr=1e-3, **kernel)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        return repeat(optim.step)

    def registered(fn):
        """Pyro's param store is global: put this VAE's parameters back before its loss runs (one plain run)."""
        def run() -> None:
            pyro.clear_param_store()
            with torch.no_grad():
                guide(x[:2]), model(x[:2])
            fn()
        return run

    return {
        "serve (a)": hand_serve,
        "serve (ours)": ours_serve,
        "loss (a)": repeat(hand_loss),
        "loss (ours, compiled)": registered(repeat(ours_loss)),
        "loss + backward (a)": repeat(lambda: hand_loss().backward()),
        "loss + backward (ours, compiled)": registered(repeat(lambda: ours_loss().backward())),
        "Adam, torch's default": adam(copies()),
        "Adam, fused": adam(copies(), fused=True),
        "log-density, fused BCE": repeat(lambda: F.binary_cross_entropy_with_logits(
            logits, x, reduction="none").sum(-1).neg().sum().backward()),
        "log-density, product form (before)": repeat(lambda: ProductLogDensity.apply(logits, x).sum().backward()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="20,100")
    p.add_argument("--steps", type=int, default=200, help="repetitions of a phase per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    pixels = load_pixels("mnist", True, args.data_dir)[:12000]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; {args.steps} repetitions "
          f"per timing, median of {args.repeats} interleaved rounds; ms per step\n")
    medians = {}
    for batch_size in sizes:
        contenders = phases(pixels, batch_size, device, args.steps)
        for run in contenders.values():  # warm-up, and the compile
            run()
        seconds = interleaved_medians({k: (lambda f=f: timed(f, device)) for k, f in contenders.items()}, args.repeats)
        medians[batch_size] = {k: v / args.steps * 1000 for k, v in seconds.items()}
    print("| phase | " + " | ".join(f"batch {b} (ms)" for b in sizes) + " |\n|" + " --- |" * (len(sizes) + 1))
    for label in medians[sizes[0]]:
        print(f"| {label} | " + " | ".join(f"{medians[b][label]:.3f}" for b in sizes) + " |")


if __name__ == "__main__":
    main()
