"""File and folder names that the build side and the device side both rely on, in one place.

A bundle (``.edgeship``) is a zip of the members below; an update agent's state directory has the
layout below, which ``edgeship serve STATE_DIR`` reads too.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeship.core.errors import ConfigError

__all__ = ["Bundle", "StateDir", "BUNDLE_SUFFIX", "NAME_RULE", "NAME_PATTERN", "check_name", "is_name"]

BUNDLE_SUFFIX = ".edgeship"

#: model names and device ids become file names, URL path segments and TUF target paths: a letter or
#: digit, then up to 127 letters, digits, '.', '_' or '-' (no separators, no '..', nothing hidden)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = "1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"


def is_name(value: object) -> bool:
    """Whether ``value`` is a safe model name or device id (see NAME_RULE)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None and ".." not in value


def check_name(value: object, what: str, error: type[Exception] = ConfigError) -> str:
    """``value`` if it is a safe name, else ``error`` saying what the rule is."""
    if not is_name(value):
        raise error(f"{what} {str(value)[:80]!r} is not a plain name: use {NAME_RULE}.")
    return value  # type: ignore[return-value]


class Bundle:
    """Member names of a bundle."""

    MANIFEST = "manifest.json"
    SIGNATURE = "manifest.sig"
    MODEL = "model.onnx"  # the model member of an ONNX Runtime bundle; other engines name theirs (Engine.member)
    ENCRYPTED_SUFFIX = ".enc"
    SELFTEST = "selftest.npz"
    TOKENIZER = "tokenizer.json"  # text models only: the tokenizer the device runs (tokenizers library)
    HEAD = "head.onnx"  # hybrid bundles only: the part of the model the device runs before the cut

    #: every member a bundle may hold besides its model; anything else is refused before it is read
    FIXED = frozenset({MANIFEST, SIGNATURE, SELFTEST, TOKENIZER, HEAD, HEAD + ENCRYPTED_SUFFIX})
    #: members that may be present or not
    OPTIONAL = frozenset({TOKENIZER, HEAD, HEAD + ENCRYPTED_SUFFIX})

    @staticmethod
    def model_member(encrypted: bool, member: str = MODEL) -> str:
        """The model's member name: the engine's ``member``, with ``.enc`` when encrypted."""
        return member + Bundle.ENCRYPTED_SUFFIX if encrypted else member

    @staticmethod
    def allowed(model_members: list[str]) -> frozenset[str]:
        """Every member a bundle may hold, given the model members of the known engines."""
        return Bundle.FIXED | {Bundle.model_member(e, m) for m in model_members for e in (False, True)}


class StateDir:
    """The layout of an update agent's state directory (A/B slots, ``current`` switched atomically)."""

    CURRENT = "current"  # symlink to slots/a or slots/b
    SLOTS = "slots"
    SLOT_NAMES = ("a", "b")
    BUNDLE = "bundle" + BUNDLE_SUFFIX  # the bundle inside a slot
    AGENT_STATE = "agent.json"
    DEVICE_ID = "device-id"
    LOCK = "agent.lock"
    DOWNLOADS = "downloads"
    TUF = "tuf"
    ACCEPTED_VERSIONS = "accepted-versions.json"  # anti-rollback: the highest version accepted per model

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def slot(self, name: str) -> Path:
        return self.root / self.SLOTS / name

    def slot_bundle(self, name: str) -> Path:
        return self.slot(name) / self.BUNDLE

    @property
    def current(self) -> Path:
        return self.root / self.CURRENT

    @property
    def current_bundle(self) -> Path:
        return self.current / self.BUNDLE

    def __truediv__(self, name: str) -> Path:
        return self.root / name
