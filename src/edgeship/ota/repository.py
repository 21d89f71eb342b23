"""A static update repository secured with TUF (python-tuf's Metadata API).

Layout of ``DIR`` (``edgeship repo init DIR``)::

    DIR/root.json                 the trust anchor that devices ship with
    DIR/public/metadata/          N.root.json, N.targets.json, N.snapshot.json, timestamp.json
    DIR/public/targets/           bundles and channel indexes, named <sha256>.<name> (consistent snapshots)
    DIR/keys/                     root, targets, snapshot and timestamp private keys (0600): never serve this
    DIR/repo.json                 expiry periods and the current metadata versions

Serve ``DIR/public`` with any static file server or CDN. Each model has one channel index
per channel, the target ``<model>/<channel>.json``, listing its releases (version, bundle
target, rollout percentage). Devices read it through TUF, so it is as trusted as the bundles.

Every write goes to a temporary name, is fsynced and renamed; targets files and versioned
metadata are written before ``timestamp.json``, the file clients read first, so a client
never sees a half-published release.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.core.errors import RepoError
from edgeship.bundle.format import manifest_identity
from edgeship.core.files import atomic_write_bytes, atomic_writer, write_private
from edgeship.ota.channel import CHANNELS, bundle_target, channel_target, check_index
from edgeship.errors import ConfigError

__all__ = ["RepoError", "RepoSettings", "init_repo", "publish", "set_rollout", "refresh_timestamp", "CHANNELS"]

ROLES = ("root", "targets", "snapshot", "timestamp")


@dataclass(frozen=True)
class RepoSettings:
    """How long each role's metadata stays valid. Timestamp must be re-signed before it expires
    (``edgeship repo timestamp DIR``, e.g. from cron): a device refuses expired metadata."""

    root_days: float = 365.0
    targets_days: float = 90.0
    snapshot_days: float = 30.0
    timestamp_hours: float = 24.0

    def __post_init__(self) -> None:
        limits = {"root_days": 3650, "targets_days": 3650, "snapshot_days": 3650, "timestamp_hours": 24 * 3650}
        for name, most in limits.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= most:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number of {name.rsplit('_', 1)[1]} in "
                                  f"(0, {most}], got {value!r}; metadata must expire, and not in the past.")

    def expiry(self, role: str) -> _dt.datetime:
        delta = {"root": _dt.timedelta(days=self.root_days), "targets": _dt.timedelta(days=self.targets_days),
                 "snapshot": _dt.timedelta(days=self.snapshot_days),
                 "timestamp": _dt.timedelta(hours=self.timestamp_hours)}[role]
        return (_dt.datetime.now(_dt.timezone.utc) + delta).replace(microsecond=0)


def _signer(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner

    try:
        return CryptoSigner(serialization.load_pem_private_key(path.read_bytes(), password=None))
    except FileNotFoundError:
        raise RepoError(f"repository key {str(path)!r} is missing; is this an `edgeship repo init` folder?") from None


def _serialize(md: Any) -> bytes:
    from tuf.api.serialization.json import JSONSerializer

    return md.to_bytes(JSONSerializer(compact=False))


class _Repo:
    """An opened repository folder."""

    def __init__(self, root_dir: Path) -> None:
        self.dir = Path(root_dir)
        config = self.dir / "repo.json"
        if not config.is_file():
            raise RepoError(f"{str(self.dir)!r} is not an update repository (no repo.json); run `edgeship repo init`.")
        data = json.loads(config.read_text())
        self.settings = RepoSettings(**data["settings"])
        self.versions: dict[str, int] = data["versions"]
        self.metadata = self.dir / "public" / "metadata"
        self.targets_dir = self.dir / "public" / "targets"

    def save_config(self) -> None:
        payload = {"settings": self.settings.__dict__, "versions": self.versions}
        atomic_write_bytes(self.dir / "repo.json", json.dumps(payload, indent=2).encode())

    def signer(self, role: str) -> Any:
        return _signer(self.dir / "keys" / f"{role}.key")

    def load(self, role: str) -> Any:
        from tuf.api.metadata import Metadata

        name = "timestamp.json" if role == "timestamp" else f"{self.versions[role]}.{role}.json"
        return Metadata.from_file(str(self.metadata / name))

    def write(self, role: str, md: Any) -> None:
        md.signatures.clear()
        md.sign(self.signer(role))
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        atomic_write_bytes(self.metadata / name, _serialize(md))
        self.versions[role] = md.signed.version

    def bump(self, role: str, md: Any) -> Any:
        md.signed.version += 1
        md.signed.expires = self.settings.expiry(role)
        return md

    def add_target_stream(self, target_path: str, source: Path, custom: dict[str, Any] | None = None) -> Any:
        """Store the file ``source`` as a target, copied and hashed in chunks (bundles may be large)."""
        from tuf.api.metadata import TargetFile

        directory, _, base = target_path.rpartition("/")
        digest, length = hashlib.sha256(), 0
        staging = self.targets_dir / directory / f".{base}.incoming"
        with atomic_writer(staging) as out, Path(source).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
                length += len(block)
        os.replace(staging, self.targets_dir / directory / f"{digest.hexdigest()}.{base}")
        info = TargetFile(length=length, hashes={"sha256": digest.hexdigest()}, path=target_path)
        if custom is not None:
            info.unrecognized_fields["custom"] = custom
        return info

    def add_target_file(self, target_path: str, data: bytes, custom: dict[str, Any] | None = None) -> Any:
        """Store ``data`` as a consistent-snapshot target file; returns its TargetFile."""
        from tuf.api.metadata import TargetFile

        digest = hashlib.sha256(data).hexdigest()
        directory, _, base = target_path.rpartition("/")
        atomic_write_bytes(self.targets_dir / directory / f"{digest}.{base}", data)
        info = TargetFile(length=len(data), hashes={"sha256": digest}, path=target_path)
        if custom is not None:
            info.unrecognized_fields["custom"] = custom
        return info

    def release(self, targets_md: Any) -> None:
        """Sign targets, then snapshot, then timestamp (the order clients depend on)."""
        from tuf.api.metadata import MetaFile

        self.write("targets", self.bump("targets", targets_md))
        snapshot = self.bump("snapshot", self.load("snapshot"))
        snapshot.signed.meta["targets.json"] = MetaFile(version=self.versions["targets"])
        self.write("snapshot", snapshot)
        timestamp = self.bump("timestamp", self.load("timestamp"))
        timestamp.signed.snapshot_meta = MetaFile(version=self.versions["snapshot"])
        self.write("timestamp", timestamp)
        self.save_config()


def init_repo(directory: Path | str, settings: RepoSettings | None = None) -> Path:
    """Create keys and the first signed metadata; returns the path of root.json for devices."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

    directory = Path(directory)
    if (directory / "repo.json").exists() or (directory / "keys").exists():
        raise RepoError(f"{str(directory)!r} already holds a repository; refusing to overwrite its keys.")
    settings = settings or RepoSettings()
    keys_dir = directory / "keys"
    keys_dir.mkdir(parents=True)
    os.chmod(keys_dir, 0o700)
    signers = {}
    for role in ROLES:
        signer = CryptoSigner(Ed25519PrivateKey.generate())
        write_private(keys_dir / f"{role}.key", signer.private_bytes)
        signers[role] = signer
    root = Root(expires=settings.expiry("root"), consistent_snapshot=True)
    for role in ROLES:
        root.add_key(signers[role].public_key, role)
        root.roles[role].threshold = 1
    targets = Targets(expires=settings.expiry("targets"))
    snapshot = Snapshot(expires=settings.expiry("snapshot"))
    snapshot.meta["targets.json"] = MetaFile(version=1)
    timestamp = Timestamp(expires=settings.expiry("timestamp"))
    timestamp.snapshot_meta = MetaFile(version=1)
    metadata_dir = directory / "public" / "metadata"
    (directory / "public" / "targets").mkdir(parents=True, exist_ok=True)
    for role, signed in (("root", root), ("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
        md = Metadata(signed)
        md.sign(signers[role])
        name = "timestamp.json" if role == "timestamp" else f"1.{role}.json"
        atomic_write_bytes(metadata_dir / name, _serialize(md))
        if role == "root":
            atomic_write_bytes(directory / "root.json", _serialize(md))
    payload = {"settings": settings.__dict__, "versions": {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}}
    atomic_write_bytes(directory / "repo.json", json.dumps(payload, indent=2).encode())
    return directory / "root.json"


def _channel_target(model: str, channel: str) -> str:
    return channel_target(model, channel, RepoError)


def _read_index(repo: _Repo, targets: Any, model: str, channel: str) -> dict[str, Any]:
    info = targets.signed.targets.get(_channel_target(model, channel))
    if info is None:
        return {"model": model, "channel": channel, "releases": []}
    stored = repo.targets_dir / model / f"{info.hashes['sha256']}.{channel}.json"
    try:
        index = json.loads(stored.read_bytes())
        check_index(index, model)
    except (OSError, ValueError) as exc:
        raise RepoError(f"the published index {model}/{channel}.json is damaged ({exc}); restore the repository "
                        "folder from a backup.") from None
    return index


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def publish(
    directory: Path | str,
    bundle: Path | str,
    channel: str = "stable",
    rollout: float = 100.0,
    trusted_keys: list[Any] | None = None,
) -> dict[str, Any]:
    """Add a bundle to the repository and make it the newest release of its model on ``channel``.

    The bundle is checked first: format, types, member list and digests always; with
    ``trusted_keys`` its signature too (the device checks everything again). A name and version
    already published with other content, on any channel, is refused: the same release may be
    promoted from one channel to another, never replaced. Returns the channel index as published.
    """
    from edgeship.bundle.format import read_manifest, regular_file_size
    from edgeship.bundle.llm import LLM_FORMAT, bundle_format, read_llm_manifest

    if channel not in CHANNELS:
        raise ConfigError(f"--channel must be one of {list(CHANNELS)}, got {channel!r}.")
    if not 0 < rollout <= 100:
        raise ConfigError(f"--rollout is a percentage of devices, in (0, 100], got {rollout}.")
    repo = _Repo(Path(directory))
    bundle = Path(bundle)
    regular_file_size(bundle)
    if bundle_format(bundle) == LLM_FORMAT:  # large: the signed manifest, without reading the weights
        manifest = read_llm_manifest(bundle, trusted_keys)
    else:
        manifest = read_manifest(bundle, trusted_keys)
    name, version = manifest_identity(manifest)
    targets = repo.load("targets")
    index = _read_index(repo, targets, name, channel)
    newest = max((r["version"] for r in index["releases"]), default=0)
    if version <= newest:
        raise RepoError(f"{name} v{version} is not newer than v{newest}, already on {channel}; versions only "
                        "increase (pack the model again with a higher --version).")
    target = bundle_target(name, version)
    existing = targets.signed.targets.get(target)
    if existing is None:
        targets.signed.targets[target] = repo.add_target_stream(
            target, bundle, {"edgeship": {"name": name, "version": version}})
    elif existing.hashes.get("sha256") != _file_sha256(bundle):
        on = [c for c in CHANNELS if any(r["version"] == version for r in _read_index(repo, targets, name, c)["releases"])]
        raise RepoError(f"{name} v{version} is already published (on {', '.join(on) or 'another channel'}) with "
                        "different content; a release is never replaced. Pack it again with a higher --version.")
    index["releases"].append({"version": version, "target": target, "rollout": float(rollout),
                              "published": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    index_target = _channel_target(name, channel)
    targets.signed.targets[index_target] = repo.add_target_file(index_target, json.dumps(index, indent=2).encode())
    repo.release(targets)
    return index


def set_rollout(directory: Path | str, model: str, version: int, percent: float, channel: str = "stable") -> dict:
    """Change the rollout percentage of a published release (e.g. 10 -> 50 -> 100)."""
    if not 0 <= percent <= 100:  # also refuses nan
        raise ConfigError(f"--percent must be within [0, 100], got {percent}.")
    repo = _Repo(Path(directory))
    targets = repo.load("targets")
    index = _read_index(repo, targets, model, channel)
    release = next((r for r in index["releases"] if r["version"] == int(version)), None)
    if release is None:
        raise RepoError(f"{model} v{version} is not published on {channel}; published: "
                        f"{[r['version'] for r in index['releases']]}.")
    release["rollout"] = float(percent)
    index_target = _channel_target(model, channel)
    targets.signed.targets[index_target] = repo.add_target_file(index_target, json.dumps(index, indent=2).encode())
    repo.release(targets)
    return index


def refresh_timestamp(directory: Path | str) -> int:
    """Re-sign timestamp.json with a fresh expiry (run it more often than the expiry period)."""
    repo = _Repo(Path(directory))
    timestamp = repo.bump("timestamp", repo.load("timestamp"))
    repo.write("timestamp", timestamp)
    repo.save_config()
    return repo.versions["timestamp"]


def copy_trust_anchor(directory: Path | str, out: Path | str) -> Path:
    """Copy the repository's root.json to ``out`` (what devices ship with)."""
    out = Path(out)
    shutil.copyfile(Path(directory) / "root.json", out)
    return out
