"""Writing files so that a failed write (no space, quota, I/O error, read-only file system) loses nothing.

`write_text_atomic` replaces a file whole (temporary file, then a rename) or
leaves it as it was; `append_line` adds one line or none (a partial line is cut
off again). Both raise the operating system's ``OSError`` with the file's name;
`write_failed` turns one into the one-line `WriteFailed` the command lines print
(exit status 1).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` whole, or leave it as it was (the temporary file removed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise


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
