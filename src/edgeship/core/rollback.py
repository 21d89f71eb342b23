"""Anti-rollback state: the highest version of each model this device accepted.

``verify`` and ``serve --state-dir``, the runtime and the update agent all read and write it
here, as ``accepted-versions.json`` in the state directory (fsynced, then renamed into place).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeship.core.errors import RollbackStateError
from edgeship.core.files import atomic_write_bytes
from edgeship.core.names import StateDir

__all__ = ["RollbackStateError", "accepted_versions", "record_accepted", "check_not_older"]


def _state_file(state_dir: Path | str) -> Path:
    return Path(state_dir) / StateDir.ACCEPTED_VERSIONS


def accepted_versions(state_dir: Path | str) -> dict[str, int]:
    path = _state_file(state_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):
        raise RollbackStateError(f"the anti-rollback state {str(path)!r} is corrupt; restore it from backup.") from None


def record_accepted(state_dir: Path | str, name: str, version: int) -> None:
    """Remember the highest version accepted for ``name`` (fsync, then atomic rename)."""
    versions = accepted_versions(state_dir)
    versions[name] = max(int(version), versions.get(name, 0))
    atomic_write_bytes(_state_file(state_dir), json.dumps(versions).encode())


def check_not_older(state_dir: Path | str, name: str, version: int, allow_downgrade: bool,
                    error: type[Exception] = RollbackStateError) -> None:
    """Refuse ``version`` of ``name`` when a higher one was accepted here, unless downgrades are allowed."""
    last = accepted_versions(state_dir).get(name)
    if last is not None and version < last and not allow_downgrade:
        raise error(
            f"{name} version {version} is older than version {last}, already accepted on this device "
            "(anti-rollback); pass --allow-downgrade to install it anyway."
        )
