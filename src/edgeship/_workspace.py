"""Scratch directories for exported and transformed models, removed when the process exits."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["scratch_dir", "atomic_write_bytes", "atomic_write_text"]

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
