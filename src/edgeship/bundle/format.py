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
from edgeship.core.names import NAME_RULE, Bundle, is_name
from edgeship.core.rollback import check_not_older, record_accepted

__all__ = ["BundleError", "VerifiedBundle", "verify_bundle", "read_manifest", "manifest_identity",
           "selftest_tolerance", "matches_reference",
           "check_format_version", "regular_file_size", "FORMAT", "FORMAT_VERSION", "MAX_MEMBER_BYTES", "aad"]

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


def selftest_tolerance(expected: np.ndarray) -> dict[str, float]:
    """The self-test's tolerance for a reference output: relative 1e-3, absolute 1e-3 of its largest
    finite magnitude (a model may answer NaN or infinity for the self-test input)."""
    finite = np.abs(expected[np.isfinite(expected)]) if expected.dtype.kind == "f" else np.abs(expected)
    return {"rtol": 1e-3, "atol": float(1e-3 * (finite.max() if finite.size else 0.0) + 1e-5)}


def matches_reference(got: np.ndarray, expected: np.ndarray, tolerance: dict[str, Any]) -> bool:
    """Whether an output matches the packed self-test reference (NaN where the reference has NaN,
    the same infinities)."""
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=tolerance["rtol"],
                                                            atol=tolerance["atol"], equal_nan=True))


def aad(name: str, version: int) -> bytes:
    """Associated data that binds a ciphertext to its bundle's name and version."""
    return json.dumps({"name": name, "version": int(version)}, sort_keys=True).encode()


def manifest_identity(manifest: Any, source: str = "the bundle") -> tuple[str, int]:
    """(name, version) of a parsed manifest, strictly typed: the name a plain name (it becomes paths
    on devices and in update repositories), the version a JSON integer >= 1 (not a string, a float
    or a boolean)."""
    if not isinstance(manifest, dict):
        raise BundleError(f"the manifest of {source} is not a JSON object; it is not a bundle manifest.")
    name, version = manifest.get("name"), manifest.get("version")
    if not is_name(name):
        raise BundleError(f"the manifest of {source} names the model {str(name)[:80]!r}, not a plain name "
                          f"({NAME_RULE}); refused.")
    if type(version) is not int or not 1 <= version < 2**53:
        raise BundleError(f"the manifest of {source} gives version {str(version)[:40]!r}; a version is a whole "
                          "number >= 1. Refused.")
    return name, version


def check_format_version(manifest: dict[str, Any], expected: int, what: str) -> None:
    """The manifest's ``format_version`` is exactly ``expected`` (an integer, not "1" or 1.0 or true)."""
    found = manifest.get("format_version")
    if type(found) is not int or found != expected:
        raise BundleError(f"{what} format version {str(found)[:40]!r} is not {expected}, the one this edgeship "
                          "reads; upgrade edgeship or repack the model.")


def regular_file_size(path: Path, what: str = "bundle") -> int:
    """The size of ``path``, which must be a regular file: a device, a pipe or a folder given as a
    bundle is refused at once instead of being read without end."""
    import stat

    try:
        info = path.stat()
    except FileNotFoundError:
        raise BundleError(f"{what} not found: {str(path)!r}.") from None
    except OSError as exc:
        raise BundleError(f"cannot read {what} {str(path)!r}: {exc.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{str(path)!r} is not a regular file; give the path of a {what} file.")
    return info.st_size


def _read_bounded(path: Path) -> bytes:
    size = regular_file_size(path)
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
    """The manifest of a bundle, without decrypting it, after checking its format, types, member
    list and every member's digest. With ``trusted_keys`` the signature is checked too; without,
    it must be present (for tools that pass the bundle on to a device, which checks the signer)."""
    members = _read_members(Path(path))
    if Bundle.MANIFEST not in members:
        raise BundleError(f"{str(path)!r} has no manifest.json; it is not an edgeship bundle.")
    if trusted_keys is not None:
        _check_signature(members, trusted_keys)
    elif Bundle.SIGNATURE not in members:
        raise BundleError(f"{str(path)!r} has no manifest.sig; an edgeship bundle is always signed.")
    manifest = _signed_manifest(members, repr(str(path)))
    for member, entry in manifest["members"].items():
        _check_digest(member, members[member], entry)
    return manifest


def _signed_manifest(members: dict[str, memoryview], source: str = "the bundle") -> dict[str, Any]:
    """The manifest (its signature already checked), with its format, types and member list checked."""
    try:
        manifest = json.loads(bytes(members[Bundle.MANIFEST]))
    except ValueError:
        raise BundleError("the signed manifest is not JSON; the bundle was made by a broken packer.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"not an edgeship bundle: format {manifest.get('format') if isinstance(manifest, dict) else None!r}.")
    check_format_version(manifest, FORMAT_VERSION, "bundle")
    manifest_identity(manifest, source)
    declared, present = manifest.get("members"), _payload_members(members)
    if not isinstance(declared, dict) or not all(isinstance(e, dict) for e in declared.values()):
        raise BundleError("the manifest's member table is not a table of digests; refused.")
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
        from edgeship.bundle.keys import content_cipher

        try:
            nonce = bytes.fromhex(encryption["nonce"])
            plaintext = content_cipher(decrypt_key).decrypt(nonce, members[member], aad(manifest["name"], manifest["version"]))
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
    manifest = _signed_manifest(members, repr(str(path)))
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
    from edgeship.bundle.keys import content_cipher

    try:
        return content_cipher(decrypt_key).decrypt(bytes.fromhex(hybrid["head_nonce"]), members[present[0]],
                                           aad(manifest["name"], manifest["version"]))
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise BundleError("the head does not decrypt with this key (wrong --decrypt-key, or altered data).") from None
