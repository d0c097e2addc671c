"""One writer per output folder: an exclusive OS lock on ``FOLDER/.lock``.

Everything that writes a run folder (training, a resume, rank 0 under
``torchrun``, figures into ``RUN/figures``, a report into its folder) holds
`run_lock` while it writes. The lock is ``fcntl.flock`` on ``FOLDER/.lock``:
the kernel releases it when the process ends, however it ends, so a crash or
``kill -9`` leaves nothing to clean up. The file itself stays (the lock is what
counts); once held, it is rewritten with ``pid N since TIME (WHAT)`` for the
message a second writer gets::

    error: OUT is in use by another run (pid N, since TIME); wait for it or choose another --out

A second writer is refused with `FolderInUse` (exit status 2) and writes
nothing. Readers (a report or figures reading a checkpoint) take no lock:
checkpoints are replaced atomically. On a file system that cannot lock (some
network mounts) the lock is a warning on stderr, not a refusal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path

from pyro_vae.errors import FolderInUse, WriteFailed

LOCK_NAME = ".lock"

#: errno values of a file system that does not do ``flock`` (NFS without lockd, some FUSE mounts).
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def _holder(fd: int) -> str:
    """``pid N, since TIME`` from the lock file (what its holder wrote), or what is known."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    # "pid N since TIME (what)" -> "pid N, since TIME"
    if text.startswith("pid ") and " since " in text:
        pid, _, rest = text.partition(" since ")
        return f"{pid}, since {rest.split(' (')[0]}"
    return "pid unknown, just starting"


def _in_use(folder: Path, fd: int, flag: str) -> FolderInUse:
    return FolderInUse(f"{folder} is in use by another run ({_holder(fd)}); wait for it or choose another {flag}")


def check_free(folder: str | os.PathLike, flag: str = "--out") -> None:
    """`FolderInUse` if another process holds ``folder``'s lock now; creates nothing (a quick check before
    loading data; `RunLock` itself is what excludes)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (no run has written here), or unreadable: the real lock decides
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(folder), fd, flag) from None
    except OSError:
        pass
    finally:
        os.close(fd)  # releases a lock taken here


class RunLock:
    """The exclusive lock of ``folder`` for ``what`` ("training", "the report"); a context manager.

    `acquire` creates ``folder`` (and its parents) and ``folder/.lock``, takes the lock without waiting and
    records this process in the file: `FolderInUse` when another process holds it, `WriteFailed` when the
    lock file cannot be created. `release` (or leaving the ``with`` block) lets go; so does the process's end.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a run", flag: str = "--out"):
        self.folder, self.what, self.flag = Path(folder), what, flag
        self.fd: int | None = None
        self.locked = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> "RunLock":
        if self.fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise WriteFailed(f"could not write {self.path} ({e.strerror or e}); nothing was written; "
                              f"free space or choose another {self.flag}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _in_use(self.folder, fd, self.flag)
            os.close(fd)
            raise error from None
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                os.close(fd)
                raise WriteFailed(f"could not lock {self.path} ({e.strerror or e}); nothing was written") from None
            print(f"warning: {self.folder} cannot be locked on this file system ({e.strerror or e}); a second run "
                  f"into it would not be stopped", file=sys.stderr)
        else:
            self.locked = True
            try:  # for the message a second writer gets; the lock already holds without it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')} ({self.what})\n"
                          .encode(), 0)
            except OSError:
                pass
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the one descriptor that holds it releases the flock
            self.fd, self.locked = None, False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(folder: str | os.PathLike, what: str = "a run", flag: str = "--out") -> RunLock:
    """``with run_lock(OUT, "training"): ...``: hold ``OUT``'s exclusive lock while writing it (see `RunLock`)."""
    return RunLock(folder, what, flag)
