"""File and folder names that the build side and the device side both rely on, in one place.

A bundle (``.edgeship``) is a zip of the members below; an update agent's state directory has the
layout below, which ``edgeship serve STATE_DIR`` reads too.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Bundle", "StateDir", "BUNDLE_SUFFIX"]

BUNDLE_SUFFIX = ".edgeship"


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
