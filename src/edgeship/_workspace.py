"""Scratch directories for exported and transformed models, removed when the process exits."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["scratch_dir", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]

_ROOT: Path | None = None


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="edgeship-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def scratch_dir(prefix: str) -> Path:
    """A new empty directory under this process's scratch root."""
    return Path(tempfile.mkdtemp(prefix=prefix + "-", dir=_root()))


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, or chunks of it) to a temporary name in the same folder, fsync,
    rename over ``path``, fsync the folder.

    Readers see the old content or the new, never a part; after a crash, the same holds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(chunk)
                f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
