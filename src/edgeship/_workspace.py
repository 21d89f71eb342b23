"""Scratch directories for exported and transformed models, removed when the process exits."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

__all__ = ["scratch_dir"]

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
