"""Ed25519 signing keys and 256-bit content keys: as files, or in a PKCS#11 token (a URI
``pkcs11:...`` instead of a path; see :mod:`edgeship.bundle.hsm`)."""

from __future__ import annotations

import os
from pathlib import Path

from edgeship.core.files import atomic_write_bytes, write_private
from edgeship.core.errors import KeyFileError

__all__ = ["generate_keys", "load_private_key", "load_public_keys", "load_content_key", "content_cipher", "write_public_key",
           "KeyFileError"]


def generate_keys(out_dir: Path | str, content_key: bool = False) -> dict[str, Path]:
    """Write signing.key (Ed25519, PEM, mode 0600), signing.pub and, optionally, content.key
    (32 random bytes, mode 0600). Refuses to overwrite existing keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"private": out / "signing.key", "public": out / "signing.pub"}
    if content_key:
        paths["content"] = out / "content.key"
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise KeyFileError(f"key file(s) {existing} already exist; choose another --out or move them away.")
    key = Ed25519PrivateKey.generate()
    write_private(paths["private"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    write_public_key(paths["public"], key.public_key())
    if content_key:
        write_private(paths["content"], os.urandom(32))
    return paths


def write_public_key(path: Path, public_key) -> Path:  # type: ignore[no-untyped-def]
    """signing.pub (PEM), refusing to overwrite one."""
    from cryptography.hazmat.primitives import serialization

    if path.exists():
        raise KeyFileError(f"{str(path)!r} already exists; choose another --out or move it away.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, public_key.public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


MAX_KEY_FILE_BYTES = 64 << 10  # a PEM key is a few hundred bytes


def _read(path: Path | str, what: str) -> bytes:
    """The key file's bytes, bounded: /dev/zero or a large file given by mistake is refused, not read whole."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {str(path)!r}: {exc.strerror}.") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{str(path)!r} is over {MAX_KEY_FILE_BYTES} bytes; it is not a {what}.")
    return data


def load_private_key(path: Path | str):  # type: ignore[no-untyped-def]
    """The signing key: an Ed25519 PEM file, or a key in a PKCS#11 token (anything with ``sign(data)``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if _is_uri(path):
        from edgeship.bundle.hsm import TokenSigner

        return TokenSigner(str(path))
    try:
        key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    except ValueError:
        raise KeyFileError(f"{str(path)!r} is not a PEM private key; make one with `edgeship keygen`.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{str(path)!r} is not an Ed25519 key; make one with `edgeship keygen`.")
    return key


def load_public_keys(paths: list[Path | str] | Path | str):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(paths, (str, Path)):
        paths = [paths]
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(_read(path, "public key"))
        except ValueError:
            raise KeyFileError(f"{str(path)!r} is not a PEM public key (signing.pub from `edgeship keygen`).") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{str(path)!r} is not an Ed25519 public key.")
        keys.append(key)
    if not keys:
        raise KeyFileError("no trusted public key given; pass --trust signing.pub.")
    return keys


def _is_uri(path: Path | str) -> bool:
    return str(path).startswith("pkcs11:")


def load_content_key(path: Path | str):  # type: ignore[no-untyped-def]
    """The content key: 32 bytes from a file, or a key in a PKCS#11 token that decrypts in place."""
    if _is_uri(path):
        from edgeship.bundle.hsm import TokenContentKey

        return TokenContentKey(str(path))
    data = _read(path, "content key")
    if len(data) != 32:
        raise KeyFileError(f"{str(path)!r} holds {len(data)} bytes; a content key is 32 bytes (`edgeship keygen --content-key`).")
    return data


def content_cipher(key):  # type: ignore[no-untyped-def]
    """Something with AESGCM's ``decrypt(nonce, data, aad)`` for a content key: raw bytes, or a token key."""
    if hasattr(key, "decrypt"):
        return key
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)
