"""Signed, optionally encrypted model bundles: keys, pack, verify (numpy + cryptography only)."""

from edgeship.bundle.format import BundleError, VerifiedBundle, verify_bundle
from edgeship.bundle.keys import generate_keys, load_private_key, load_public_keys, load_content_key

__all__ = ["BundleError", "VerifiedBundle", "verify_bundle", "generate_keys", "load_private_key",
           "load_public_keys", "load_content_key"]
