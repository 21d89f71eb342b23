"""Bundles of generative models: an ONNX Runtime GenAI folder, signed and optionally encrypted, and
verified by streaming (a model of hundreds of megabytes is never held in memory whole).

A bundle is a zip archive (stored) with ``manifest.json``, ``manifest.sig`` and one member per file
of the folder, ``files/NAME`` (or ``files/NAME.enc``). The manifest carries the sha256 and size of
each file, the chat template, the context length, the metrics from ``optimize`` and a self-test:
a short prompt and the top-5 next tokens the packing machine computed.

Encryption is AES-256-GCM in chunks of 1 MiB (each chunk sealed with its own tag; the nonce is a
per-bundle prefix, the file index and the chunk index; the associated data names the bundle, its
version, the file, the chunk and whether it is the last), so chunks can neither be reordered,
moved between files or bundles, nor cut off, and decryption streams too.

Verification checks the signature before the manifest is parsed, then streams each member through
sha256 (and decryption) into a private staging folder, renamed into place only when every digest
matches.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgeship.bundle.format import MAX_MANIFEST_BYTES, check_format_version, manifest_identity, regular_file_size
from edgeship.core.errors import BundleError, InvalidModelError
from edgeship.core.files import atomic_writer
from edgeship.core.names import Bundle
from edgeship.core.rollback import check_not_older, record_accepted

__all__ = ["LLM_FORMAT", "pack_llm", "verify_llm_bundle", "read_llm_manifest", "bundle_format", "VerifiedLLM",
           "is_genai_folder", "check_selftest"]

LLM_FORMAT = "edgeship.llm-bundle"
LLM_FORMAT_VERSION = 1
CHUNK = 1 << 20
TAG = 16
MAX_FILES = 32
MAX_FILE_BYTES = 16 << 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: the files of a GenAI folder a bundle carries (other files in the folder are left out)
_CARRIED = re.compile(r"^(genai_config\.json|model\.onnx(\.data)?|tokenizer(_config)?\.json|special_tokens_map\.json|"
                      r"chat_template\.jinja|added_tokens\.json|vocab\.json|merges\.txt|tokenizer\.model)$")
SELFTEST_PROMPT = "The capital of France is"


def is_genai_folder(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "genai_config.json").is_file() or (path / "model" / "genai_config.json").is_file()


def bundle_format(path: Path | str) -> str:
    """The ``format`` a bundle's manifest declares (read without reading the rest); "" if none, or
    if ``path`` is not a regular file (zipfile would read a device such as /dev/zero without end)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(Bundle.MANIFEST)
            if info.file_size > MAX_MANIFEST_BYTES:
                return ""
            return str(json.loads(archive.read(info)).get("format", ""))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
        return ""


def _nonce(prefix: bytes, file_index: int, chunk: int) -> bytes:
    return prefix + struct.pack(">II", file_index, chunk)


def _aad(name: str, version: int, file: str, chunk: int, last: bool) -> bytes:
    return json.dumps([name, version, file, chunk, last]).encode()


def _encrypted_chunks(f: IO[bytes], size: int, key: bytes, prefix: bytes, index: int, name: str, version: int,
                      file: str):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes, chunks = AESGCM(key), max(1, -(-size // CHUNK))
    for i in range(chunks):
        yield aes.encrypt(_nonce(prefix, index, i), f.read(CHUNK), _aad(name, version, file, i, i == chunks - 1))


def _selftest(folder: Path) -> dict[str, Any]:
    import numpy as np

    from edgeship.engines.ort_genai import GenAIModel

    model = GenAIModel(folder)
    ids = model.encode(SELFTEST_PROMPT)
    logits = model.logits(ids)[-1]
    return {"prompt": SELFTEST_PROMPT, "prompt_ids": ids, "top5": [int(t) for t in np.argsort(-logits)[:5]]}


def _model_folder(source: Path) -> tuple[Path, dict[str, Any]]:
    """A GenAI folder, or an ``optimize`` output folder (its ``model``), with the metrics optimize recorded."""
    folder = source / "model" if (source / "model" / "genai_config.json").is_file() else source
    if not (folder / "genai_config.json").is_file():
        raise InvalidModelError(f"{str(source)!r} is not an ONNX Runtime GenAI folder (no genai_config.json) nor an "
                                "`edgeship optimize` output of a generative model.")
    meta = folder / "edgeship.json"
    return folder, (json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {})


def pack_llm(source: Path | str, name: str, version: int, sign_key: Path | str, out: Path | str,
             encrypt_key: Path | str | None = None, target: str | None = None) -> Path:
    """Write an LLM bundle (see the module docstring); the file appears only when complete."""
    from edgeship.bundle.keys import load_content_key, load_private_key
    from edgeship.bundle.pack import _check_name_version

    _check_name_version(name, version)
    key = load_private_key(sign_key)
    content_key = load_content_key(encrypt_key) if encrypt_key else None
    folder, metrics = _model_folder(Path(source))
    files = sorted(p for p in folder.iterdir() if p.is_file() and _CARRIED.match(p.name))
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    template = folder / "chat_template.jinja"
    tokenizer_config = folder / "tokenizer_config.json"
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
    if chat_template is None and tokenizer_config.is_file():
        chat_template = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template")
    prefix = os.urandom(4)
    entries = {}
    for index, p in enumerate(files):
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        entries[p.name] = {"sha256": digest.hexdigest(), "size": p.stat().st_size, "index": index}
    manifest = {
        "format": LLM_FORMAT, "format_version": LLM_FORMAT_VERSION, "kind": "llm", "name": name,
        "version": int(version), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "engine": "onnxruntime-genai", "target": target, "context_length": int(config["model"]["context_length"]),
        "chat_template": chat_template, "metrics": metrics, "selftest": _selftest(folder), "files": entries,
        "encryption": ({"alg": "AES-256-GCM", "chunk_bytes": CHUNK, "nonce_prefix": prefix.hex(),
                        "aad": "[name, version, file, chunk, last]"} if content_key else None),
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    with atomic_writer(Path(out)) as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED,
                                                          allowZip64=True) as archive:
        archive.writestr(Bundle.MANIFEST, manifest_bytes)
        archive.writestr(Bundle.SIGNATURE, key.sign(manifest_bytes))
        for index, p in enumerate(files):
            member = f"files/{p.name}" + (".enc" if content_key else "")
            with p.open("rb") as f, archive.open(zipfile.ZipInfo(member), "w", force_zip64=True) as dst:
                if content_key is None:
                    shutil.copyfileobj(f, dst, CHUNK)
                else:
                    for sealed in _encrypted_chunks(f, p.stat().st_size, content_key, prefix, index, name, version, p.name):
                        dst.write(sealed)
    return Path(out)


@dataclass(frozen=True)
class VerifiedLLM:
    manifest: dict[str, Any]
    folder: Path  # the verified (decrypted) GenAI folder

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])


def _signed_manifest(archive: zipfile.ZipFile, trusted_keys: list[Any] | None) -> dict[str, Any]:
    """The manifest, its signature checked against ``trusted_keys`` (None: only that there is one),
    its format, types and file list checked against the archive's members."""
    from cryptography.exceptions import InvalidSignature

    infos = archive.infolist()
    if len(infos) > MAX_FILES + 2:
        raise BundleError(f"the bundle has {len(infos)} members; an LLM bundle has at most {MAX_FILES + 2}.")
    names = {i.filename for i in infos}
    if Bundle.MANIFEST not in names or Bundle.SIGNATURE not in names:
        raise BundleError("the bundle has no manifest or no signature; it cannot be verified.")
    if archive.getinfo(Bundle.MANIFEST).file_size > MAX_MANIFEST_BYTES or archive.getinfo(Bundle.SIGNATURE).file_size > 1024:
        raise BundleError("the bundle's manifest or signature is larger than any edgeship writes; refused unread.")
    raw, signature = archive.read(Bundle.MANIFEST), archive.read(Bundle.SIGNATURE)
    for key in trusted_keys if trusted_keys is not None else ():
        try:
            key.verify(signature, raw)
            break
        except InvalidSignature:
            continue
    else:
        if trusted_keys is not None:
            raise BundleError("the manifest signature does not match any trusted key: the bundle was altered or "
                              "signed by someone else. Check --trust.")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise BundleError("the signed manifest is not JSON; the bundle was made by a broken packer.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != LLM_FORMAT:
        raise BundleError(f"not an LLM bundle of format {LLM_FORMAT}.")
    check_format_version(manifest, LLM_FORMAT_VERSION, "LLM bundle")
    manifest_identity(manifest)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES or not all(_NAME.match(f) for f in files):
        raise BundleError("the manifest's file list is empty, too long, or names a path; refused.")
    suffix = ".enc" if manifest.get("encryption") else ""
    if names != {Bundle.MANIFEST, Bundle.SIGNATURE} | {f"files/{f}{suffix}" for f in files}:
        raise BundleError("the bundle's members are not exactly the files its signed manifest lists.")
    return manifest


def _copy_member(archive: zipfile.ZipFile, manifest: dict[str, Any], file: str, dst: Path, key: bytes | None) -> None:
    entry = manifest["files"][file]
    size, index = int(entry["size"]), int(entry["index"])
    if not 0 <= size <= MAX_FILE_BYTES:
        raise BundleError(f"file {file!r} claims {size} bytes; refused.")
    enc = manifest.get("encryption")
    member = f"files/{file}" + (".enc" if enc else "")
    chunks = max(1, -(-size // CHUNK))
    stored = size + chunks * TAG if enc else size
    if archive.getinfo(member).file_size != stored:
        raise BundleError(f"member {member!r} is not the size its signed manifest gives: the bundle was altered.")
    digest, written = hashlib.sha256(), 0
    with archive.open(member) as src, dst.open("wb") as out:
        if enc:
            from cryptography.exceptions import InvalidTag
            from edgeship.bundle.keys import content_cipher

            if key is None:
                raise BundleError("the bundle is encrypted; give the content key (--decrypt-key).")
            aes, prefix = content_cipher(key), bytes.fromhex(enc["nonce_prefix"])
            name, version = str(manifest["name"]), int(manifest["version"])
            for i in range(chunks):
                sealed = src.read(min(CHUNK, size - i * CHUNK) + TAG)
                try:
                    block = aes.decrypt(_nonce(prefix, index, i), sealed, _aad(name, version, file, i, i == chunks - 1))
                except InvalidTag:
                    raise BundleError("decryption failed: wrong content key, or the ciphertext was altered.") from None
                digest.update(block)
                out.write(block)
                written += len(block)
        else:
            for block in iter(lambda: src.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
                written += len(block)
    if written != size or digest.hexdigest() != entry["sha256"]:
        raise BundleError(f"file {file!r} does not match its signed digest: the bundle was altered.")


def read_llm_manifest(path: Path | str, trusted_keys: list[Any] | None) -> dict[str, Any]:
    """The manifest, without reading (or decrypting) the files: what a publisher that holds no
    content key can check. Its format, types and file list are checked against the archive's
    members; with ``trusted_keys`` its signature too (without, that there is one: the device
    checks the signer, and each file's digest as it unpacks)."""
    regular_file_size(Path(path))
    try:
        with zipfile.ZipFile(path) as archive:
            return _signed_manifest(archive, trusted_keys)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{str(path)!r} is not a readable bundle: {exc}.") from None


def verify_llm_bundle(path: Path | str, trusted_keys: list[Any], decrypt_key: bytes | None = None,
                      dest: Path | str | None = None, state_dir: Path | str | None = None,
                      allow_downgrade: bool = False, record: bool = True) -> VerifiedLLM:
    """Verify an LLM bundle by streaming and unpack it into ``dest`` (default: a new private temporary
    folder). Nothing lands in ``dest`` unless every file verifies."""
    regular_file_size(Path(path))
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{str(path)!r} is not a readable bundle: {exc}.") from None
    with archive:
        manifest = _signed_manifest(archive, trusted_keys)
        name, version = str(manifest["name"]), int(manifest["version"])
        if state_dir is not None:
            check_not_older(state_dir, name, version, allow_downgrade, BundleError)
        final = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix=f"edgeship-{name}-"))
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))  # 0700
        try:
            for file in manifest["files"]:
                _copy_member(archive, manifest, file, staging / file, decrypt_key)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if state_dir is not None and record:
        record_accepted(state_dir, name, version)
    return VerifiedLLM(manifest, final)


def check_selftest(verified: VerifiedLLM, model: Any) -> None:
    """The device's next token for the self-test prompt is among the packing machine's top 5."""
    test = verified.manifest["selftest"]
    ids = model.encode(test["prompt"])
    if ids != test["prompt_ids"]:
        raise BundleError("the self-test failed: this device's tokenizer gives other ids for the self-test prompt.")
    got = model.generate(ids, 1)[0]
    if got not in test["top5"]:
        raise BundleError(f"the self-test failed: this device's next token {got} is not among the packing machine's "
                          f"top 5 {test['top5']}; the engine or the bundle is broken.")

