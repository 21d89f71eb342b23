"""The .edgeship bundle format, and verification before load (like secure boot).

A bundle is a zip archive with exactly these members (stored, not compressed; names in
:class:`edgeship.core.names.Bundle`):

- ``manifest.json``: format, name, integer version, creation time, I/O signature, task and
  labels, text settings, target, lineage, metrics, the self-test tolerance, encryption
  parameters, and the sha256 and size of every other member;
- ``manifest.sig``: an Ed25519 signature over the exact bytes of ``manifest.json``;
- ``model.onnx``, or ``model.onnx.enc`` (AES-256-GCM, associated data ``name`` and
  ``version``, so a ciphertext cannot be moved into another bundle); for a model that runs on
  another engine (manifest ``engine``), that engine's member instead (``Engine.member``):
  ``model.ovir`` for OpenVINO (the IR's .xml and .bin in one container,
  :func:`edgeship.engines.openvino.session.ir_container`), ``model.tflite`` for LiteRT;
- ``selftest.npz``: a reference input and its expected output;
- ``tokenizer.json`` (text models only): the tokenizer the device runs with the ``tokenizers``
  library, so that text goes in and labels come out without transformers or torch;
- ``head.onnx`` (or ``head.onnx.enc``; hybrid bundles only): the part of the model before the cut,
  which the device runs before it sends the cut tensor upstream; the manifest's ``hybrid`` table
  is the plan (cut tensors, wire encoding, the upstream's tail model). The model member is then the
  whole model, the device's fallback.

This follows the OpenSSF model-signing idea (per-file digests in one signed manifest) with
a plain Ed25519 signature instead of a Sigstore bundle: devices verify offline, against keys
they ship with, with no transparency log to reach. Verification reads nothing it has not
bounded: member names are an exact set, sizes are capped, the signature is checked before
the manifest is parsed, and every digest before any member is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import BundleError
from edgeship.core.names import Bundle
from edgeship.core.rollback import check_not_older, record_accepted

__all__ = ["BundleError", "VerifiedBundle", "verify_bundle", "read_manifest", "FORMAT", "FORMAT_VERSION",
           "MAX_MEMBER_BYTES", "aad"]

FORMAT = "edgeship.bundle"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 4 << 30  # 4 GiB: larger members are refused before they are read
MAX_MANIFEST_BYTES = 4 << 20
MAX_TOKENIZER_BYTES = 64 << 20
MAX_BUNDLE_BYTES = (4 << 30) + (128 << 20)  # one model, a tokenizer, a self-test and the manifest
NONCE_BYTES = 12


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, digests and version were checked; model bytes in memory only."""

    manifest: dict[str, Any]
    model_bytes: bytes
    selftest: dict[str, np.ndarray]
    tokenizer_json: bytes | None = None
    head_bytes: bytes | None = None  # hybrid bundles: the model up to the cut

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])


def aad(name: str, version: int) -> bytes:
    """Associated data that binds a ciphertext to its bundle's name and version."""
    return json.dumps({"name": name, "version": int(version)}, sort_keys=True).encode()


def _read_bounded(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {str(path)!r}.") from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {str(path)!r}: {exc.strerror}.") from None
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{str(path)!r} is {size} bytes, over the {MAX_BUNDLE_BYTES}-byte limit for a bundle.")
    return path.read_bytes()


def _member_limit(name: str) -> int:
    if name.startswith("manifest"):
        return MAX_MANIFEST_BYTES
    return MAX_TOKENIZER_BYTES if name == Bundle.TOKENIZER else MAX_MEMBER_BYTES


def _member_view(data: bytes, view: memoryview, info: zipfile.ZipInfo, path: Path) -> memoryview:
    """The stored bytes of one member, checked against its local header and the file's end."""
    limit = _member_limit(info.filename)
    if info.file_size > limit:
        raise BundleError(f"member {info.filename!r} claims {info.file_size} bytes, over the {limit}-byte limit.")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise BundleError(f"member {info.filename!r} is compressed; edgeship bundles store members as they are.")
    start = info.header_offset
    local = data[start:start + 30]
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise BundleError(f"member {info.filename!r} of {str(path)!r} has no local header; the file is damaged.")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    if data[start + 30:start + 30 + name_len] != info.filename.encode():
        raise BundleError(f"member {info.filename!r} of {str(path)!r} disagrees with its local header; damaged file.")
    begin = start + 30 + name_len + extra_len
    if begin + info.file_size > len(data):
        raise BundleError(f"member {info.filename!r} runs past the end of {str(path)!r}; the file is truncated.")
    return view[begin:begin + info.file_size]


def _read_members(path: Path) -> dict[str, memoryview]:
    """Read the bundle once into private memory and return each member as a view into it.

    The checks later (signature, digests) and the use (decryption, loading) then see the same
    bytes, even if the file changes meanwhile. Members are stored, not compressed, so no
    decompressor touches unverified data; zip's CRC is not checked (the sha256 digests are).
    """
    data = _read_bounded(path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{str(path)!r} is not a readable bundle (truncated or not an .edgeship file: {exc}).") from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise BundleError(f"{str(path)!r} has duplicate members; refusing it.")
    from edgeship.engines import ENGINES

    unexpected = sorted(set(names) - Bundle.allowed([e.member for e in ENGINES.values()]))
    if unexpected:
        raise BundleError(f"{str(path)!r} has unexpected members {unexpected}: it is damaged (truncated?) "
                          "or not an .edgeship bundle; refusing it.")
    view = memoryview(data)
    return {info.filename: _member_view(data, view, info, path) for info in infos}


def _check_signature(members: dict[str, memoryview], trusted_keys: list[Any]) -> None:
    from cryptography.exceptions import InvalidSignature

    if Bundle.MANIFEST not in members or Bundle.SIGNATURE not in members:
        raise BundleError("the bundle has no manifest or no signature; it cannot be verified.")
    signature, manifest = bytes(members[Bundle.SIGNATURE]), bytes(members[Bundle.MANIFEST])
    for key in trusted_keys:
        try:
            key.verify(signature, manifest)
            return
        except InvalidSignature:
            continue
    raise BundleError("the manifest signature does not match any trusted key: the bundle was altered or signed "
                      "by someone else. Check --trust.")


def _check_digest(name: str, data: memoryview, entry: dict[str, Any]) -> None:
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise BundleError(f"member {name!r} does not match its signed digest: the bundle was altered.")


def _payload_members(members: dict[str, memoryview]) -> set[str]:
    return {k for k in members if k not in (Bundle.MANIFEST, Bundle.SIGNATURE)}


def read_manifest(path: Path | str, trusted_keys: list[Any] | None = None) -> dict[str, Any]:
    """The manifest of a bundle, without decrypting it. With ``trusted_keys``, the signature
    and every member's digest are checked first; without, the manifest is only parsed (for
    tools that pass the bundle on to a device, which verifies it)."""
    members = _read_members(Path(path))
    if Bundle.MANIFEST not in members:
        raise BundleError(f"{str(path)!r} has no manifest.json; it is not an edgeship bundle.")
    if trusted_keys is not None:
        _check_signature(members, trusted_keys)
    try:
        manifest = json.loads(bytes(members[Bundle.MANIFEST]))
        str(manifest["name"]), int(manifest["version"])
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"the manifest of {str(path)!r} is not a bundle manifest.") from None
    if trusted_keys is not None:
        declared = manifest.get("members", {})
        if set(declared) != _payload_members(members):
            raise BundleError("the manifest's member list does not match the bundle's members.")
        for member, entry in declared.items():
            _check_digest(member, members[member], entry)
    return manifest


def _signed_manifest(members: dict[str, memoryview]) -> dict[str, Any]:
    """The manifest (its signature already checked), with its format and member list checked."""
    try:
        manifest = json.loads(bytes(members[Bundle.MANIFEST]))
    except ValueError:
        raise BundleError("the signed manifest is not JSON; the bundle was made by a broken packer.") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"not an edgeship bundle: format {manifest.get('format')!r}.")
    if int(manifest.get("format_version", -1)) != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {manifest.get('format_version')} is not {FORMAT_VERSION}, the one this "
            "edgeship reads; upgrade edgeship or repack the model."
        )
    declared, present = manifest.get("members", {}), _payload_members(members)
    if set(declared) != present:
        raise BundleError(f"the manifest lists members {sorted(declared)} but the bundle holds {sorted(present)}.")
    encrypted = bool(manifest.get("encryption"))
    required = {_model_member(manifest), Bundle.SELFTEST}
    if not required <= present or present - required - Bundle.OPTIONAL:
        raise BundleError(f"the bundle holds {sorted(present)}; an {'encrypted' if encrypted else 'plain'} "
                          f"bundle holds {sorted(required)} (and optionally {sorted(Bundle.OPTIONAL)}).")
    return manifest


def _model_member(manifest: dict[str, Any]) -> str:
    """The model's member, by the manifest's engine; an engine this edgeship does not know is refused."""
    from edgeship.engines import ENGINES

    engine = manifest.get("engine", "onnxruntime")
    if engine not in ENGINES:
        raise BundleError(f"the bundle's model runs on {engine!r}, which this edgeship does not know (it knows "
                          f"{sorted(ENGINES)}); upgrade edgeship.")
    return Bundle.model_member(bool(manifest.get("encryption")), ENGINES[engine].member)


def _model_bytes(members: dict[str, memoryview], manifest: dict[str, Any], decrypt_key: bytes | None) -> bytes:
    """The model, decrypted if need be; its digest is checked in a thread while it is decrypted
    (hashlib lets go of the GIL), and the plaintext is used only after the digest matched."""
    encryption = manifest.get("encryption")
    member = _model_member(manifest)
    if encryption and decrypt_key is None:
        raise BundleError("the model is encrypted; pass --decrypt-key content.key.")
    digest_error: list[BundleError] = []

    def check_model() -> None:
        try:
            _check_digest(member, members[member], manifest["members"][member])
        except BundleError as exc:
            digest_error.append(exc)

    hasher = threading.Thread(target=check_model, name="edgeship-digest")
    hasher.start()
    time.sleep(0)  # let the hasher start (and release the GIL) before decryption holds it
    decrypt_error, plaintext = None, b""
    if encryption:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            nonce = bytes.fromhex(encryption["nonce"])
            plaintext = AESGCM(decrypt_key).decrypt(nonce, members[member], aad(manifest["name"], manifest["version"]))
        except (InvalidTag, ValueError):
            decrypt_error = BundleError("the model does not decrypt with this key (wrong --decrypt-key, or altered data).")
    hasher.join()
    if digest_error:
        raise digest_error[0]
    if decrypt_error is not None:
        raise decrypt_error
    return plaintext if encryption else bytes(members[member])


def verify_bundle(
    path: Path | str,
    trusted_keys: list[Any],
    decrypt_key: bytes | None = None,
    state_dir: Path | str | None = None,
    allow_downgrade: bool = False,
    record: bool = True,
) -> VerifiedBundle:
    """Check signature, format, digests, version and decryption; the model stays in memory."""
    from edgeship.bundle.llm import LLM_FORMAT, bundle_format

    if bundle_format(path) == LLM_FORMAT:  # a different kind of bundle, not a damaged one
        raise BundleError(f"{str(path)!r} is an LLM bundle (a generative model): chat with it (`edgeship chat`) or "
                          "serve it (`edgeship serve`); `edgeship run` and the tensor runtime take tensor models.")
    members = _read_members(Path(path))
    _check_signature(members, trusted_keys)
    manifest = _signed_manifest(members)
    model_member = _model_member(manifest)
    for member in _payload_members(members) - {model_member}:
        _check_digest(member, members[member], manifest["members"][member])
    name, version = str(manifest["name"]), int(manifest["version"])
    if state_dir is not None:
        check_not_older(state_dir, name, version, allow_downgrade, BundleError)
    model_bytes = _model_bytes(members, manifest, decrypt_key)
    with np.load(io.BytesIO(members[Bundle.SELFTEST]), allow_pickle=False) as archive:
        selftest = {k: archive[k] for k in archive.files}
    tokenizer = bytes(members[Bundle.TOKENIZER]) if Bundle.TOKENIZER in members else None
    head = _head_bytes(members, manifest, decrypt_key)
    if state_dir is not None and record:
        record_accepted(state_dir, name, version)
    return VerifiedBundle(manifest, model_bytes, selftest, tokenizer, head)


def _head_bytes(members: dict[str, memoryview], manifest: dict[str, Any], decrypt_key: bytes | None) -> bytes | None:
    """A hybrid bundle's head (its digest already checked), decrypted like the model; a head without
    a plan, or stored plain in an encrypted bundle, is refused."""
    present = [m for m in (Bundle.HEAD, Bundle.HEAD + Bundle.ENCRYPTED_SUFFIX) if m in members]
    hybrid, encryption = manifest.get("hybrid"), manifest.get("encryption")
    if not present:
        if isinstance(hybrid, dict) and hybrid.get("position", 0) > 0:
            raise BundleError("the manifest plans a split but the bundle has no head.onnx; repack it.")
        return None
    if not isinstance(hybrid, dict):
        raise BundleError("the bundle holds a head.onnx but its manifest has no hybrid plan; refusing it.")
    if present != [Bundle.model_member(bool(encryption), Bundle.HEAD)]:
        raise BundleError(f"the bundle holds {present[0]!r}, which does not match its {'encrypted' if encryption else 'plain'} "
                          "model; refusing it.")
    if not encryption:
        return bytes(members[present[0]])
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(decrypt_key).decrypt(bytes.fromhex(hybrid["head_nonce"]), members[present[0]],
                                           aad(manifest["name"], manifest["version"]))
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise BundleError("the head does not decrypt with this key (wrong --decrypt-key, or altered data).") from None
