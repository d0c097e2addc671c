"""Writing files so that a failed write (no space, quota, I/O error, read-only file system) loses nothing.

`write_atomic` replaces a file whole (a temporary file beside it, flushed to disk,
then a rename) or leaves it as it was: the one atomic write of the project, under
checkpoints (`pyro_vae.checkpoint.save`), run files, reports and comparisons;
`write_text_atomic` is it for text. `append_line` adds one line or none (a partial
line is cut off again). They raise the operating system's ``OSError`` with the
file's name; `write_failed` turns one into the one-line `WriteFailed` the command
lines print (exit status 1).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyro_vae.errors import WriteFailed

_write = os.write  # the one call that writes a metrics line (tests replace it to simulate a full disk)


def reason(e: BaseException) -> str:
    """The operating system's words for ``e`` ("No space left on device"), else its text."""
    return getattr(e, "strerror", None) or " ".join(str(e).split())[:160] or type(e).__name__


def os_error_in(e: BaseException) -> OSError | None:
    """``e`` itself, or the ``OSError`` it was raised from or while handling (torch.save wraps one in a
    RuntimeError); None when there is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_failed(path: str | os.PathLike, e: BaseException, kept: str, fix: str = "") -> WriteFailed:
    """``could not write PATH (REASON); KEPT[; FIX]`` as a `WriteFailed`."""
    return WriteFailed(f"could not write {path} ({reason(e)}); {kept}" + (f"; {fix}" if fix else ""))


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], clear_leftovers: bool = False) -> None:
    """Replace ``path`` by what ``write(f)`` writes into a binary file, whole, or leave it as it was.

    The bytes go to a temporary file in the same folder (``.NAME.<random>.tmp``, with the mode any file the
    process creates gets), flushed to disk, then renamed over ``path``. On any failure the temporary file is
    removed and the exception raised again; an ``OSError`` names ``path``, and one that ``write`` raised while
    handling a write error (``torch.save`` wraps them in a RuntimeError) is raised as that ``OSError``.
    ``clear_leftovers``: first remove the temporary files a crash mid-write left for ``path`` (only for a file
    one process writes, under its folder's lock).
    """
    path = Path(path)
    if clear_leftovers:
        for pattern in (f".{path.name}.*.tmp", f"{path.name}.*.tmp"):  # the second: older versions' name
            for stale in path.parent.glob(pattern):
                stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 less the umask, as open() gives
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = os_error_in(e) if isinstance(e, Exception) else None
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) whole, or leave it as it was (`write_atomic`)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (its newline added) to ``path``, or nothing: a partly written line is cut off again."""
    path = Path(path)
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[_write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            if e.filename is None:
                e.filename = str(path)
            raise
    finally:
        os.close(fd)
