"""A training job for the ``torchrun`` tests of tests/test_distributed.py: ``torchrun ... tests/torchrun_worker.py``.

Trains one epoch at a time (resuming each time, as a long job restarted per
epoch would) and saves each rank's parameters after every epoch into
``--dump``, so the test can compare ranks. ``--fault KIND:RANK:CALL`` makes
rank RANK's CALL-th loss computation raise (``raise``) or send its own process
SIGTERM (``sigterm``): a failure or a signal that reaches one rank only.
Exits with `inference.svi.main`'s statuses (0, 2, 128 + signal).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

import torch

from inference import svi
from inference.training import loop
from pyro_vae import distributed
from pyro_vae.cli import error, signal_status
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import PyroVAEError
from user_models import USER_MODELS  # registers them, as a user's own module does


def inject(kind: str, rank: int, call: int) -> None:
    """Wrap `build_step` so that rank ``rank``'s ``call``-th loss computation raises or signals itself."""
    real, calls = loop.build_step, [0]  # counted across the per-epoch train() calls

    def build_step(*args, **kwargs):
        step, compiled = real(*args, **kwargs)
        if distributed.current().rank != rank:
            return step, compiled
        inner = step.loss_and_grads

        def loss_and_grads(x, kl_weight):
            calls[0] += 1
            if calls[0] == call:
                if kind == "raise":
                    raise RuntimeError("injected failure")
                os.kill(os.getpid(), signal.SIGTERM)
            return inner(x, kl_weight)

        step.loss_and_grads = loss_and_grads
        return step, compiled

    loop.build_step = build_step


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=2400)
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dump", type=Path)
    p.add_argument("--fault", help="raise|sigterm:RANK:CALL")
    p.add_argument("--user-model", choices=sorted(USER_MODELS),
                   help="train a model written from scratch (tests/user_models.py) instead of the VAE")
    args = p.parse_args()
    if args.fault:
        kind, rank, call = args.fault.split(":")
        inject(kind, int(rank), int(call))
    config = TrainConfig(model=ModelConfig(z_dim=args.latent, hidden_dims=(args.hidden,)), preset=None,
                         train_limit=args.train_limit, test_limit=args.test_limit, batch_size=args.batch_size,
                         epochs=args.epochs, device="cpu", out=args.out, seed=args.seed)
    try:
        first = 1
        if args.resume:  # continue from wherever the checkpoint stopped
            first = len(torch.load(Path(args.out) / "checkpoint.pt", weights_only=True)["history"]) + 1
        for epoch in range(first, args.epochs + 1):
            resuming = args.resume or epoch > 1
            model = USER_MODELS[args.user_model]() if args.user_model and not resuming else None
            result = svi.train(dataclasses.replace(config, epochs=epoch, elbo="trace" if args.user_model else config.elbo),
                               resume=resuming, progress=False, model=model)
            if result.interrupted:
                return signal_status(result.stop_signal)
            if args.dump:
                args.dump.mkdir(exist_ok=True)
                torch.save(result.model.state_dict(), args.dump / f"rank{distributed.current().rank}-epoch{epoch}.pt")
    except PyroVAEError as e:
        return 2 if distributed.quiet_rank() else error(e)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
