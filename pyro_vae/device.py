"""Choosing the torch device from a user's ``auto | cpu | cuda`` request, and forking its RNG."""

import torch

from pyro_vae.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` for work on ``device``: the CPU generator, plus that CUDA device's.

    Random draws inside leave the global streams where they were on exit.
    """
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def resolve_device(request: str = "auto") -> torch.device:
    """Return the device for ``request``: ``auto`` picks CUDA when present.

    ``cuda`` (or ``cuda:N``) on a machine without CUDA raises `DeviceError`
    naming the fix instead of failing later inside a kernel launch.
    """
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request == "cpu":
        return torch.device("cpu")
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {request} was asked for, but torch finds no CUDA device "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False). "
                "Use --device cpu (or auto), or run on a machine with an NVIDIA GPU "
                "and a CUDA build of torch."
            )
        return torch.device(request)
    raise DeviceError(f"unknown device {request!r}; choose one of {', '.join(DEVICE_CHOICES)}")
