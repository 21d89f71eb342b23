"""Keys in hardware: a PKCS#11 token holds the signing key or the device's content key, and the
key never leaves it. On devices that is a TPM 2.0 (tpm2-pkcs11) or a secure element; on a
build machine an HSM; in the tests SoftHSM2 from Debian. It needs the ``hsm`` extra
(python-pkcs11).

A key is named by a PKCS#11 URI (RFC 7512) wherever a key file is taken (``--sign-key``,
``--decrypt-key``)::

    pkcs11:token=edgeship;object=signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/edgeship/pin

``module-path`` defaults to ``$EDGESHIP_PKCS11_MODULE``; the PIN comes from ``pin-source``
(a file), ``pin-value``, or ``$EDGESHIP_PKCS11_PIN``. Signing keys are Ed25519 (CKM_EDDSA),
content keys AES-256 used with AES-GCM (CKM_AES_GCM), both made sensitive and not extractable.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from edgeship.core.errors import KeyFileError

__all__ = ["TokenKey", "TokenSigner", "TokenContentKey", "is_token_uri", "parse_token_uri",
           "generate_signing_key", "import_content_key"]

ED25519_OID = "1.3.101.112"
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def is_token_uri(value: object) -> bool:
    return str(value).startswith("pkcs11:")


@dataclass(frozen=True)
class TokenKey:
    """Where a key lives: the PKCS#11 module, the token's label, the key object's label, the user PIN."""

    module: str
    token: str
    label: str
    pin: str = ""

    def __repr__(self) -> str:  # never show the PIN
        return f"TokenKey(token={self.token!r}, object={self.label!r}, module={self.module!r})"


def parse_token_uri(uri: str) -> TokenKey:
    """A :class:`TokenKey` from ``pkcs11:token=...;object=...?module-path=...&pin-source=file:...``."""
    if not is_token_uri(uri):
        raise KeyFileError(f"{uri[:80]!r} is not a PKCS#11 URI (pkcs11:token=...;object=...).")
    path, _, query = uri[len("pkcs11:"):].partition("?")
    attrs = dict(urllib.parse.unquote(part).split("=", 1) for part in path.split(";") if "=" in part)
    params = {k: urllib.parse.unquote(v) for k, v in (p.split("=", 1) for p in query.split("&") if "=" in p)}
    module = params.get("module-path") or os.environ.get("EDGESHIP_PKCS11_MODULE", "")
    if not attrs.get("token") or not attrs.get("object"):
        raise KeyFileError("a PKCS#11 key URI needs token= and object= (pkcs11:token=edgeship;object=signing).")
    if not module:
        raise KeyFileError("no PKCS#11 module: add ?module-path=/path/to/module.so to the URI or set "
                           "EDGESHIP_PKCS11_MODULE (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so).")
    pin = params.get("pin-value") or os.environ.get("EDGESHIP_PKCS11_PIN", "")
    source = params.get("pin-source")
    if source:
        try:
            with open(source.removeprefix("file:"), "rb") as f:
                pin = f.read(256).decode().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read the token PIN from {source!r}: {exc}.") from None
    return TokenKey(module, attrs["token"], attrs["object"], pin)


def _library(module: str) -> Any:
    try:
        import pkcs11
    except ImportError:
        raise KeyFileError("keys in a PKCS#11 token need python-pkcs11: pip install 'edgeship[hsm]'.") from None
    with _LIBS_LOCK:
        if module not in _LIBS:
            try:
                _LIBS[module] = pkcs11.lib(module)
            except (RuntimeError, OSError, pkcs11.PKCS11Error) as exc:
                raise KeyFileError(f"cannot load the PKCS#11 module {module!r}: {exc}.") from None
        return _LIBS[module]


def _session(key: TokenKey, rw: bool = False) -> Any:
    import pkcs11

    try:
        token = _library(key.module).get_token(token_label=key.token)
        return token.open(user_pin=key.pin or None, rw=rw)
    except pkcs11.NoSuchToken:
        raise KeyFileError(f"no PKCS#11 token labelled {key.token!r} in {key.module!r}.") from None
    except pkcs11.PinIncorrect:
        raise KeyFileError(f"the PIN for token {key.token!r} is wrong (pin-source, pin-value or "
                           "EDGESHIP_PKCS11_PIN).") from None
    except pkcs11.PKCS11Error as exc:
        raise KeyFileError(f"cannot open token {key.token!r}: {type(exc).__name__}.") from None


def _find(session: Any, key: TokenKey, object_class: Any) -> Any:
    import pkcs11

    try:
        return session.get_key(object_class=object_class, label=key.label)
    except pkcs11.NoSuchKey:
        raise KeyFileError(f"token {key.token!r} has no {object_class.name.lower().replace('_', ' ')} labelled "
                           f"{key.label!r}.") from None
    except pkcs11.MultipleObjectsReturned:
        raise KeyFileError(f"token {key.token!r} has several keys labelled {key.label!r}; labels must be unique.") from None


class TokenSigner:
    """An Ed25519 private key in a token, with the ``sign(data)`` of cryptography's key objects."""

    def __init__(self, uri: str) -> None:
        from pkcs11 import ObjectClass

        self.key = parse_token_uri(uri)
        with _session(self.key) as session:  # fail now, with the reason, not at the first signature
            _find(session, self.key, ObjectClass.PRIVATE_KEY)

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism, ObjectClass

        with _session(self.key) as session:
            return bytes(_find(session, self.key, ObjectClass.PRIVATE_KEY).sign(data, mechanism=Mechanism.EDDSA))

    def public_key(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from pkcs11 import Attribute, ObjectClass

        with _session(self.key) as session:
            point = bytes(_find(session, self.key, ObjectClass.PUBLIC_KEY)[Attribute.EC_POINT])
        if len(point) == 34 and point[:2] == b"\x04\x20":  # a DER OCTET STRING around the 32 bytes
            point = point[2:]
        return Ed25519PublicKey.from_public_bytes(point)


class TokenContentKey:
    """An AES-256 content key in a token, with the ``decrypt(nonce, data, aad)`` of cryptography's AESGCM."""

    def __init__(self, uri: str) -> None:
        from pkcs11 import ObjectClass

        self.key = parse_token_uri(uri)
        with _session(self.key) as session:
            _find(session, self.key, ObjectClass.SECRET_KEY)

    def decrypt(self, nonce: bytes, data: bytes | memoryview, associated_data: bytes | None) -> bytes:
        from cryptography.exceptions import InvalidTag
        from pkcs11 import GCMParams, Mechanism, ObjectClass, PKCS11Error

        with _session(self.key) as session:
            secret = _find(session, self.key, ObjectClass.SECRET_KEY)
            try:
                return bytes(secret.decrypt(bytes(data), mechanism=Mechanism.AES_GCM,
                                            mechanism_param=GCMParams(nonce, associated_data, 128)))
            except PKCS11Error:  # the tag did not verify: wrong key or altered data, as AESGCM says it
                raise InvalidTag() from None


def generate_signing_key(uri: str) -> Any:
    """Make an Ed25519 key pair inside the token (private half sensitive, never extractable);
    returns the public key, for signing.pub."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    key = parse_token_uri(uri)
    with _session(key, rw=True) as session:
        if list(session.get_objects({Attribute.LABEL: key.label})):
            raise KeyFileError(f"token {key.token!r} already holds an object labelled {key.label!r}; refusing "
                               "to make a second one.")
        params = session.create_domain_parameters(
            KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)}, local=True)
        params.generate_keypair(store=True, label=key.label,
                                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    return TokenSigner(uri).public_key()


def import_content_key(uri: str, content_key: bytes) -> None:
    """Put a 32-byte content key into the token (a device's provisioning step): sensitive, not
    extractable, for decryption only."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    if len(content_key) != 32:
        raise KeyFileError(f"a content key is 32 bytes, got {len(content_key)}.")
    key = parse_token_uri(uri)
    with _session(key, rw=True) as session:
        if list(session.get_objects({Attribute.LABEL: key.label})):
            raise KeyFileError(f"token {key.token!r} already holds an object labelled {key.label!r}.")
        session.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                               Attribute.VALUE: content_key, Attribute.LABEL: key.label, Attribute.TOKEN: True,
                               Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                               Attribute.DECRYPT: True, Attribute.ENCRYPT: False})
