"""Writing files so that readers and crashes never see a part of one, with the right permissions.

Published files (bundles, update-repository metadata and targets, reports, device state) are
0644, so that a web server or another user can read them; private keys are 0600 and never
overwritten. ``tempfile.mkstemp`` alone would leave every file 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "write_private", "fsync_dir",
           "PUBLIC_MODE", "PRIVATE_MODE"]

PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path | str, mode: int = PUBLIC_MODE) -> Iterator[BinaryIO]:
    """A file object on a temporary name in ``path``'s folder; on success it is fsynced, given
    ``mode`` and renamed over ``path`` (then the folder is fsynced). On error nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes | Iterable[bytes], mode: int = PUBLIC_MODE) -> None:
    """Write ``data`` (bytes, or chunks of it) so that readers see the old content or the new,
    never a part; after a crash, the same holds."""
    with atomic_writer(path, mode) as f:
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(chunk)
            f.flush()


def atomic_write_text(path: Path | str, text: str, mode: int = PUBLIC_MODE) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def write_private(path: Path | str, data: bytes) -> None:
    """Create ``path`` with mode 0600 (refusing to overwrite an existing file) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), PRIVATE_MODE)  # whatever the umask
