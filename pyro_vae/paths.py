"""Output folders: refuse one that cannot be written before any work is done."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pyro_vae.errors import ConfigError


def check_writable_dir(path: str | os.PathLike, flag: str = "--out", files: Iterable[str] = (),
                       folders: Iterable[str] = ()) -> None:
    """`ConfigError` unless ``path`` is, or can be created as, a folder this process can write to.

    ``files`` and ``folders`` name what the job will write inside it: any that
    already exists as the other kind (a folder where a file goes) is refused
    too. Creates nothing that stays: a probe file goes into ``path`` or its
    nearest existing parent and is removed at once. (Permission bits alone
    would not tell: root may write anywhere except on a read-only file system.)
    """
    path = Path(path).absolute()
    try:
        too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
        if too_long:
            raise ConfigError(f"{flag} {path} has a name longer than 255 bytes ({too_long[0][:40]}...)")
        existing = path
        while not existing.exists():
            if existing.is_symlink():
                raise ConfigError(f"{flag} {path} cannot be created: {existing} is a link to nothing")
            existing = existing.parent
        if not existing.is_dir():
            where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
            raise ConfigError(f"{flag} {path} {where}, not a folder; choose another {flag}")
        for name in files:
            if (path / name).is_dir():
                raise ConfigError(f"{flag} {path} holds a folder {name}, where a file of that name will be written")
        for name in folders:
            if (path / name).exists() and not (path / name).is_dir():
                raise ConfigError(f"{flag} {path} holds a file {name}, where a folder of that name will be written")
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written ({e.strerror or e}); choose another {flag}") from None
