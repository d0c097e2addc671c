"""Choosing the torch device from a user's ``auto | cpu | cuda`` request, forking its RNG, flushing denormal
floats on the CPU, and checking that a model fits in its memory before it is built."""

import contextlib
from collections.abc import Callable, Iterator

import torch

from pyro_vae.errors import ConfigError, DeviceError

# Parameters, their gradients and Adam's two moments: four tensors of each parameter's size.
TRAINING_COPIES = 4

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` for work on ``device``: the CPU generator, plus that CUDA device's.

    Random draws inside leave the global streams where they were on exit.
    """
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def denormals_flushed_now() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats to zero (``torch.set_flush_denormal``), read
    from one multiplication: torch has no getter."""
    return bool(torch.tensor(2.0**-140) * 1.0 == 0)


@contextlib.contextmanager
def denormals_flushed(device: torch.device) -> Iterator[None]:
    """On the CPU, denormal float results (float32 below 2^-126, about 1.2e-38) and inputs count as 0 for the
    duration (``torch.set_flush_denormal``: x86's FTZ and DAZ modes); on exit the calling thread's mode is what it
    was. Elsewhere nothing changes.

    x86 cores take a slow microcode path for denormal operands. Training on the IWAE bound, the normalised weights
    of the k particles go below 2^-126 and carry into the decoder's backward pass: a step of ``--elbo iwae
    --num-particles 50`` at batch 20 took about 3x the time with them (BENCHMARKS.md, "Denormal floats"). What is
    flushed lies below float32's resolution in any sum it enters (a weight under 1.2e-38 beside weights that sum
    to 1); log-densities, which stay in log space, are untouched. CUDA kernels flush or not as they were built.

    torch sets the mode per thread, and a thread takes the mode of the one that starts it. So torch's intra-op
    worker threads started inside (in a fresh process: all of them) keep flushing after exit, and those started
    before (in a session that ran torch work first) never flush. Either way a result differs only where a value
    falls below the smallest normal float (float64: 2^-1022), as 0 against a denormal. For the whole gain in such
    a session, call ``torch.set_flush_denormal(True)`` at its start (an IWAE k = 50 epoch: 1.4 s against 1.9 s).
    """
    if device.type != "cpu":
        yield
        return
    before = denormals_flushed_now()
    torch.set_flush_denormal(True)  # False where the CPU has no such mode: then nothing changed
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


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


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now (CUDA: the driver's count; CPU: Linux's MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(build: Callable[[], torch.nn.Module], device: torch.device, what: str,
               fix: str = "use smaller --hidden-dims or --latent-dim") -> None:
    """Raise `ConfigError` ("out of memory") when training ``build()`` on ``device`` could not fit in its memory.

    ``build`` runs on PyTorch's ``meta`` device (shapes only, nothing
    allocated); training needs `TRAINING_COPIES` times its parameter bytes.
    This turns an impossible size into one line before a byte is allocated,
    where the allocation itself might succeed lazily and the kernel's OOM
    killer end the process later. A model that cannot be built on ``meta``
    is not checked.
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception:  # noqa: BLE001 - not buildable on meta: the real build reports its own errors
        return
    need = TRAINING_COPIES * sum(p.numel() * p.element_size() for p in skeleton.parameters())
    free = free_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"out of memory: training {what} needs {need / 2**30:,.1f} GiB (parameters, gradients and "
                          f"Adam's moments) and {device} has {free / 2**30:,.1f} GiB free; {fix}")
