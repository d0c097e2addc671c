"""Shared pieces of the benchmark scripts: timing, tables, the machine's name."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

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


def interleaved_medians(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each contender once per round, ``repeats`` rounds, and take the median of what each returns."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}
