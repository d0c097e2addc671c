"""Shared pieces of the benchmark scripts: timing, tables, the machine's name."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def checkpoint_and_images(run: str, device: torch.device, images: int, data_dir: str | None = None):
    """A trained run's model (in eval mode), its config and its first ``images`` evaluation images on ``device``."""
    from pyro_vae.checkpoint import load
    from pyro_vae.data import evaluation_images

    vae, config = load(run, device=str(device))
    vae.eval()
    x = evaluation_images(config.evaluation_data(data_dir, images), device)
    return vae, config, x


def gemm_rate(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``size x size`` matrix product on ``device``, the best of ``repeats``: this machine's
    FLOP limit as measured now (a CPU's varies between days, so a fraction of it uses the rate of the same run)."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best


def importance_flops_per_image(vae, x: torch.Tensor, k: int, chunk: int) -> float:
    """Matrix-product FLOPs (encoder, decoder) of one image's log p(x) with ``k`` particles in chunks of ``chunk``,
    as `inference.estimators.importance.estimate_log_marginal` runs it (counted by ``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from inference.estimators.importance import estimate_log_marginal

    with FlopCounterMode(display=False) as counter:
        estimate_log_marginal(vae.model, vae.guide, x[:1], k, chunk, seed=0)
    return float(counter.get_total_flops())


def interleaved_medians(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each contender once per round, ``repeats`` rounds, and take the median of what each returns. The order
    reverses every round (A B, B A, ...): on this CPU the first of two back-to-back contenders measured about 4%
    slower than the second, whichever it was (BENCHMARKS.md, "A standard-Normal prior")."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(repeats):
        for name, run in (list(contenders.items()) if round_ % 2 == 0 else reversed(list(contenders.items()))):
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def run_module(module: str, processes: int, threads: int, args: list[str], cwd: Path) -> None:
    """``python -m MODULE ARGS`` in one process, or under ``torchrun --nproc_per_node processes``.

    ``threads`` is the total: each process gets ``threads // processes`` (at least one), so N processes on one CPU
    share its cores as one process with all the threads would.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    subprocess.run([*launcher, "-m", module, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)


def alternating_runs(run: Callable[[int, Path], dict], seconds_of: Callable[[dict], float], rounds: int,
                     processes: tuple[int, ...] = (1, 2)) -> tuple[dict[int, float], dict[int, dict]]:
    """``run(n, out)`` for each n in ``processes``, alternating, ``rounds`` times, each into a fresh temporary folder.

    Returns the median of ``seconds_of(result)`` per n and the last result per n.
    """
    seconds: dict[int, list[float]] = {n: [] for n in processes}
    last: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for n in processes:
                last[n] = run(n, Path(tmp) / f"{n}-{r}")
                seconds[n].append(seconds_of(last[n]))
    return {n: statistics.median(s) for n, s in seconds.items()}, last
