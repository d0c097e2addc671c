"""Training throughput: hand-written PyTorch vs Pyro's example loop vs ``inference.svi``.

Same architecture (the burda2015 preset), batch size and MNIST images, one
process, contenders interleaved, median of ``--repeats`` rounds of one pass
over ``--images`` images each:

  (a) a hand-written PyTorch VAE step: reparameterised sample, closed-form KL,
      Bernoulli log-likelihood, ``torch.optim.Adam``; data on the device,
      binarised per batch on the device. The practical limit. (af) is (a) with
      Adam's fused kernel, which (c) uses on the CPU (`inference.training.optimizer`):
      c/af compares the two with the same optimiser.
  (b) the conventional Pyro loop as Pyro's VAE example writes it: torchvision
      ``DataLoader``, per-batch ``.to(device)``, ``svi.step`` with ``Trace_ELBO``.
  (c) this project's ``inference.svi.train`` (its recorded training seconds of
      one epoch), default settings: ``TraceMeanField_ELBO``, JIT-compiled and checked
      against the plain loss before the first step; and the same with ``--no-jit``.
      On CUDA (c) is the compiled step uncaptured (``--no-cuda-graph``), and
  (cg) is the default there: the compiled step captured in a CUDA graph
      (`inference.training.cuda_graph`), one replay per step.

(c) trains with denormal floats flushed to 0 on the CPU (`pyro_vae.device.denormals_flushed`); a hand-written
loop does not unless asked. ``--flush-denormal`` flushes them in every contender, to compare like with like.

Prints images/s and the ratios time(c)/time(a), time(c --no-jit)/time(a) and
time(b)/time(c) (on CUDA also time(cg)/time(a) and time(cg)/time(c)), then the
one-off seconds of compiling and checking the loss (on CUDA also of capturing
and checking the graph), which (c) pays before its first step and which its
epoch seconds leave out. A pass is a full MNIST epoch by default
(``--images 60000``), as a user runs it: the compiled graph's first, slower runs
(and the second graph, for the epoch's last, smaller batch) are inside it.

    python benchmarks/train_throughput.py --device cpu --batch-sizes 128,1024
    python benchmarks/train_throughput.py --device cuda --batch-sizes 100,128,1024
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, machine, timed  # noqa: E402

from inference.training.step import build_step  # noqa: E402
from inference.svi import train  # noqa: E402
from models.vae import VAE  # noqa: E402
from pyro_vae.config import PRESETS, TrainConfig  # noqa: E402
from pyro_vae.data import load_pixels  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402
from pyro_vae.nets import MLP  # noqa: E402


LOG_2PI = math.log(2 * math.pi)


def handwritten(pixels: torch.Tensor, batch_size: int, device: torch.device, particles: int = 0,
                fused: bool = False):
    """(a): the same networks, a plain PyTorch step. ``particles`` k > 0: the IWAE bound with k vectorised draws
    per image (log-mean-exp over k of log p(x, z) - log q(z|x), every density written out), as (ai).
    ``fused``: Adam's fused kernel, as (c) has on the CPU (af)."""
    cfg = PRESETS["burda2015"].model.resolved()
    enc = MLP(784, cfg.hidden_dims, 2 * cfg.z_dim, cfg.activation).to(device)
    dec = MLP(cfg.z_dim, tuple(reversed(cfg.hidden_dims)), 784, cfg.activation).to(device)
    optim = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3, **({"fused": True} if fused else {}))
    data = pixels.to(device)

    def epoch() -> None:
        order = torch.randperm(len(data), device=device)
        for i in range(0, len(data), batch_size):
            x = torch.bernoulli(data[order[i : i + batch_size]].float() / 255)
            loc, scale_raw = enc(x).chunk(2, -1)
            scale = F.softplus(scale_raw) + 1e-3
            if particles:
                eps = torch.randn((particles, *loc.shape), device=device)
                z = loc + scale * eps  # [k, B, Z]
                log_px_z = -F.binary_cross_entropy_with_logits(dec(z), x.expand(particles, *x.shape),
                                                                reduction="none").sum(-1)
                log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
                log_qz = -0.5 * (eps.pow(2) + LOG_2PI).sum(-1) - scale.log().sum(-1)
                loss = -(torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(particles)).sum()
            else:
                z = loc + scale * torch.randn_like(loc)
                recon = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
                kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
                loss = kl - recon
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

    return epoch


def pyro_example(pixels: torch.Tensor, batch_size: int, device: torch.device):
    """(b): torchvision-style DataLoader, per-batch copies, svi.step (as Pyro's examples/vae/vae.py)."""
    dataset = torch.utils.data.TensorDataset(pixels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    vae = VAE.from_config(PRESETS["burda2015"].model).to(device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def epoch() -> None:
        pyro.clear_param_store()  # (c) shares Pyro's global store; re-register this model's parameters
        for (x,) in loader:
            x = torch.bernoulli(x.float() / 255).to(device)
            svi.step(x)

    return epoch


def compile_seconds(pixels: torch.Tensor, batch_size: int, device: torch.device, cuda_graph: bool = False) -> float:
    """Seconds that ``inference.training.step.build_step`` takes to compile and check the default loss for a fresh model
    (``cuda_graph``: and to capture and check the CUDA-graph step)."""
    pyro.clear_param_store()
    vae = VAE.from_config(PRESETS["burda2015"].model).to(device)
    probe = torch.bernoulli(pixels[:batch_size].float() / 255).to(device)
    optim = torch.optim.Adam(vae.parameters(), lr=1e-3)
    config = TrainConfig(batch_size=batch_size, cuda_graph=cuda_graph)
    return timed(lambda: build_step(vae, config, optim, probe), device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds the CUDA-graph step as a contender)")
    p.add_argument("--batch-sizes", default="100,128,1024", help="comma-separated, one table row each")
    p.add_argument("--images", type=int, default=60000, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir")
    p.add_argument("--also-elbo", metavar="NAME",
                   help="also time (c) with --elbo NAME (e.g. trace; iwae: with --particles, beside (ai), a "
                        "hand-written IWAE step, and (c) iwae --no-jit), same rounds")
    p.add_argument("--particles", type=int, default=5, help="k of --also-elbo iwae (default 5)")
    p.add_argument("--flush-denormal", action="store_true",
                   help="every contender with denormal floats flushed to 0 (train does it on the CPU: "
                        "pyro_vae.device.denormals_flushed), so the hand-written ones too")
    args = p.parse_args(argv)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    pixels = load_pixels("mnist", True, args.data_dir)[: args.images]
    print(f"machine: {machine(device)}; torch {torch.__version__}, pyro {pyro.__version__}; "
          f"{args.images} images per pass, median of {args.repeats} interleaved rounds"
          f"{'; denormals flushed in every contender' if args.flush_denormal else ''}\n")
    graphs = device.type == "cuda"
    header = ["batch", "(a) hand-written img/s", "(af) (a) with fused Adam img/s", "(b) Pyro example img/s",
              "(c) inference.svi img/s", "(c) --no-jit img/s", *(["(cg) CUDA graph img/s"] if graphs else []),
              "c/a (time)", "c/af (time)", "c --no-jit/a (time)",
              "b/c (time)", *(["cg/a (time)", "cg/c (time)"] if graphs else []), "compile + check (s)",
              *(["compile + check + capture (s)"] if graphs else [])]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig(batch_size=batch_size, epochs=1, train_limit=args.images, test_limit=100,
                                 device=str(device), data_dir=args.data_dir)
            runs = iter(range(10**6))

            def ours(jit: bool | None = None, cuda_graph: bool | None = False, **changes) -> float:
                settings = {**config.__dict__, "out": f"{tmp}/{next(runs)}", "jit": jit, "cuda_graph": cuda_graph,
                            **changes}
                result = train(TrainConfig(**settings), progress=False)
                assert result.compiled == (jit is not False), "the default run did not compile"
                assert result.graphed == bool(cuda_graph), "the CUDA-graph run did not capture its step"
                return result.history[0]["seconds"]

            a, b = handwritten(pixels, batch_size, device), pyro_example(pixels, batch_size, device)
            af = handwritten(pixels, batch_size, device, fused=True)
            for warm in (a, af, b):
                warm()
            ours(), ours(jit=False)
            if graphs:
                ours(cuda_graph=True)
            pyro.clear_param_store()
            contenders = {"a": lambda: timed(a, device), "af": lambda: timed(af, device), "b": lambda: timed(b, device),
                          "c": ours,
                          "cp": lambda: ours(jit=False)}
            if graphs:
                contenders["cg"] = lambda: ours(cuda_graph=True)
            iwae = args.also_elbo == "iwae"
            if args.also_elbo:
                also = {"elbo": args.also_elbo, **({"num_particles": args.particles} if iwae else {})}
                contenders["ce"] = lambda: ours(**also)
            if iwae:
                ai = handwritten(pixels, batch_size, device, args.particles)
                aif = handwritten(pixels, batch_size, device, args.particles, fused=True)
                ai(), aif()
                ours(**also), ours(jit=False, **also)
                contenders["ai"] = lambda: timed(ai, device)
                contenders["aif"] = lambda: timed(aif, device)
                contenders["cep"] = lambda: ours(jit=False, **also)
            seconds = interleaved_medians(contenders, args.repeats)
        rate = {k: args.images / v for k, v in seconds.items()}
        if iwae:
            print(f"batch {batch_size}, IWAE k={args.particles}: (ai) hand-written {rate['ai']:.0f} img/s, (aif) with "
                  f"fused Adam {rate['aif']:.0f} img/s, (c) --elbo iwae {rate['ce']:.0f} img/s (compiled), --no-jit "
                  f"{rate['cep']:.0f} img/s; c/ai (time) {seconds['ce'] / seconds['ai']:.2f}, c/aif "
                  f"{seconds['ce'] / seconds['aif']:.2f}, c --no-jit/ai {seconds['cep'] / seconds['ai']:.2f}, "
                  f"c --no-jit/c {seconds['cep'] / seconds['ce']:.2f}", flush=True)
        elif args.also_elbo:
            print(f"batch {batch_size}, (c) --elbo {args.also_elbo}: {rate['ce']:.0f} img/s, time ratio to (a) "
                  f"{seconds['ce'] / seconds['a']:.2f}, to (af) {seconds['ce'] / seconds['af']:.2f}, to (c) "
                  f"{seconds['ce'] / seconds['c']:.2f}", flush=True)
        row = [batch_size, f"{rate['a']:.0f}", f"{rate['af']:.0f}", f"{rate['b']:.0f}", f"{rate['c']:.0f}",
               f"{rate['cp']:.0f}", *([f"{rate['cg']:.0f}"] if graphs else []), f"{seconds['c'] / seconds['a']:.2f}",
               f"{seconds['c'] / seconds['af']:.2f}",
               f"{seconds['cp'] / seconds['a']:.2f}", f"{seconds['b'] / seconds['c']:.2f}",
               *([f"{seconds['cg'] / seconds['a']:.2f}", f"{seconds['cg'] / seconds['c']:.2f}"] if graphs else []),
               f"{compile_seconds(pixels, batch_size, device):.2f}",
               *([f"{compile_seconds(pixels, batch_size, device, cuda_graph=True):.2f}"] if graphs else [])]
        print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
