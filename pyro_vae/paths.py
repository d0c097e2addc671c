"""Output folders: refuse one that cannot be written before any work is done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pyro_vae.errors import ConfigError


def check_writable_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """`ConfigError` unless ``path`` is, or can be created as, a folder this process can write to.

    Creates nothing that stays: a probe file goes into ``path`` or its nearest
    existing parent and is removed at once. (Permission bits alone would not
    tell: root may write anywhere except on a read-only file system.)
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written ({e.strerror or e} in {existing}); choose another {flag}") from None
