"""More than one process: ``torchrun`` sets the environment, this module joins the group and shares out work.

Under ``torchrun --nproc_per_node N`` every process sees ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; `setup` joins the default process group (backend
``nccl`` on CUDA, ``gloo`` on the CPU) and gives each process its device
(``cuda:LOCAL_RANK``, or the CPU). Without ``torchrun`` nothing is joined:
one process is rank 0 of 1 and every helper here is the identity.

`sharded_map` runs a function over a list of work items, item i on rank
i mod N, and hands every rank all the results in item order, so whatever is
computed per item (a batch of images with its own seed) does not depend on N.

Failing together: a rank that raises while the others wait in a collective
would hang them. `together` runs a block on every rank and, if it raised on
any, raises on all: the failing rank its own error, the others `PeerFailed`
naming it. Rank 0 is then the one process that reports (`quiet_rank`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pyro_vae.seeds import seed_for
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError, PeerFailed, PyroVAEError

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints results."""
        return self.rank == 0


def current() -> Group:
    """The group this process belongs to (rank 0 of 1 when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def launched_by_torchrun() -> bool:
    """Whether the environment asks for more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> tuple[Group, torch.device]:
    """Join the process group ``torchrun`` describes (once) and pick this process's device.

    ``device`` is a ``--device`` choice. On CUDA each process takes
    ``cuda:LOCAL_RANK`` and the ``nccl`` backend; on the CPU, ``gloo``.
    Without ``torchrun`` it returns rank 0 of 1 and ``resolve_device(device)``.
    """
    target = resolve_device(device)
    if not launched_by_torchrun():
        return current(), target
    if target.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA devices; use --nproc_per_node at most that")
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return current(), target


def sharded_map(fn: Callable[[T], Any], items: Sequence[T], progress: str | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, item i computed on rank i mod N; every rank gets the whole list.

    ``fn``'s results travel between processes pickled, so they should hold CPU
    tensors. ``progress``: a tqdm bar with that label over rank 0's items. In a
    single process this is a plain list comprehension.
    """
    group = current()
    mine = range(group.rank, len(items), group.world_size)
    bar = tqdm(mine, desc=progress, disable=not progress or not group.is_main, leave=False)
    if group.world_size == 1:
        return [fn(items[i]) for i in bar]
    mine = {i: fn(items[i]) for i in bar}
    gathered: list[dict[int, Any]] = [{} for _ in range(group.world_size)]
    dist.all_gather_object(gathered, mine)
    merged = {i: result for part in gathered for i, result in part.items()}
    return [merged[i] for i in range(len(items))]


def rank_seed(seed: int, rank: int, *position: int) -> int:
    """The seed of ``rank``'s own random draws: ``seed`` itself on rank 0 with no ``position``
    (so one process draws what it always drew), else a mix of (seed, rank, *position) below 2**32."""
    return seed if rank == 0 and not position else seed_for(seed, rank, *position) % 2**32


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    group = current()
    if group.world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def raise_together(error: BaseException | None, where: str = "") -> None:
    """Called by every rank at the same point: if ``error`` is set on any rank, raise on all of them.

    The rank that failed raises its own ``error``; the others raise
    `PeerFailed` with its type and message (the lowest failing rank's).
    ``where`` ("at epoch 3, step 40") is added to that message.
    """
    summaries = all_gather(_summary(error))
    if error is not None:
        raise error
    failed = [(rank, text) for rank, text in enumerate(summaries) if text is not None]
    if failed:
        rank, text = failed[0]
        raise PeerFailed(f"rank {rank} of {len(summaries)} failed{' ' + where if where else ''}: {text}", rank)


def _summary(error: BaseException | None) -> str | None:
    """One line for another rank to report: our own errors' messages; a bug's type and message."""
    if error is None:
        return None
    text = " ".join(str(error).split())
    return text if isinstance(error, PyroVAEError) else f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def together(where: str = "") -> Iterator[None]:
    """Run the block on every rank; when it raises on any rank, raise on all (see `raise_together`).

    Only ``Exception`` is shared: an interrupt (``KeyboardInterrupt``) passes through at once.
    In one process this is a plain block.
    """
    if current().world_size == 1:
        yield
        return
    error = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - shared with the other ranks below, then raised again
        error = e
    raise_together(error, where)


def quiet_rank() -> bool:
    """Whether this process should keep its messages to itself: every rank but 0 of a ``torchrun`` job.

    Errors are shared by `together`, so rank 0 reports each one once, naming the rank it came from.
    """
    return not current().is_main


#: Seconds a rank waits at `shutdown` for the others to arrive before it leaves anyway (one may have died).
SHUTDOWN_WAIT = 30


def shutdown() -> None:
    """Leave the process group, if one was joined (all ranks call this at the end).

    Under gloo the ranks meet first (a monitored barrier, `SHUTDOWN_WAIT` seconds at most): a rank that tore its
    connections down while another still read from them had that one aborted in C++ now and then (``terminate
    called without an active exception``, exit -6), after its work was done and written."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=SHUTDOWN_WAIT))
        except RuntimeError:  # a rank that is gone or stuck: leave without it
            pass
    dist.destroy_process_group()
