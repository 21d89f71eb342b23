"""Keys in hardware: SoftHSM2 (Debian's softhsm2) as the PKCS#11 token. The signing key is made
inside it and signs bundles that verify against signing.pub; a device's content key is put into
it and decrypts bundles there; neither key can be read back out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeship.bundle import BundleError, generate_keys, load_public_keys, verify_bundle
from edgeship.bundle.keys import load_content_key
from edgeship.bundle.pack import pack
from edgeship.errors import EdgeshipError

CLI = [sys.executable, "-m", "edgeship.cli"]
MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture(scope="module")
def token(tmp_path_factory) -> dict[str, object]:
    """A fresh SoftHSM2 token (its own config and token folder) for this module, PIN in a file; each
    test uses its own key labels. One per module: SoftHSM reads its config once per process."""
    if not shutil.which("softhsm2-util") or not Path(MODULE).exists():
        pytest.skip("Debian's softhsm2 is not installed (.ci/run installs it)")
    pytest.importorskip("pkcs11")
    tmp_path = tmp_path_factory.mktemp("softhsm")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    patch = pytest.MonkeyPatch()
    patch.setenv("SOFTHSM2_CONF", str(conf))  # this process and the subprocesses below
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "edgeship", "--pin", "1234",
                    "--so-pin", "5678"], check=True, capture_output=True)
    pin = tmp_path / "pin"
    pin.write_text("1234\n")

    def uri(label: str, pin_file: Path = pin) -> str:
        return f"pkcs11:token=edgeship;object={label}?module-path={MODULE}&pin-source=file:{pin_file}"

    yield {"uri": uri, "folder": tmp_path}
    patch.undo()


def test_a_signing_key_made_in_the_token_signs_bundles_that_verify(token, cnn_onnx, tmp_path):
    uri = token["uri"]("signing")
    done = subprocess.run(CLI + ["keygen", "--out", str(tmp_path / "pub"), "--pkcs11", uri], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    public = tmp_path / "pub" / "signing.pub"
    assert not (tmp_path / "pub" / "signing.key").exists()  # the private half stays in the token
    bundle = tmp_path / "d.edgeship"
    done = subprocess.run(CLI + ["pack", str(cnn_onnx), "--name", "digits", "--version", "1", "--sign-key", uri,
                                 "--out", str(bundle)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert verify_bundle(bundle, load_public_keys(public)).version == 1
    other = generate_keys(tmp_path / "other")
    with pytest.raises(BundleError, match="does not match any trusted key"):
        verify_bundle(bundle, load_public_keys(other["public"]))
    # the key cannot be read out of the token
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    with pkcs11.lib(MODULE).get_token(token_label="edgeship").open(user_pin="1234") as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="signing")
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.AttributeSensitive):
            private[Attribute.VALUE]


def test_a_device_decrypts_with_a_content_key_kept_in_its_token(token, cnn_onnx, tmp_path):
    keys = generate_keys(tmp_path / "keys", content_key=True)
    bundle = pack(cnn_onnx, "digits", 1, keys["private"], tmp_path / "d.edgeship", encrypt_key=keys["content"])
    uri = token["uri"]("content")
    done = subprocess.run(CLI + ["provision-key", str(keys["content"]), "--pkcs11", uri], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    in_token = verify_bundle(bundle, load_public_keys(keys["public"]), load_content_key(uri))
    from_file = verify_bundle(bundle, load_public_keys(keys["public"]), keys["content"].read_bytes())
    assert in_token.model_bytes == from_file.model_bytes
    # the whole device path: `run` opens, self-tests and answers with the key in the token
    x = tmp_path / "x.npz"
    np.savez(x, image=np.zeros((1, 1, 8, 8), np.float32))
    done = subprocess.run(CLI + ["run", str(bundle), "--trust", str(keys["public"]), "--decrypt-key", uri,
                                 "--input", str(x)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # another token's key (or a tampered bundle) does not decrypt
    other = generate_keys(tmp_path / "other", content_key=True)
    wrong = token["uri"]("wrong")
    subprocess.run(CLI + ["provision-key", str(other["content"]), "--pkcs11", wrong], check=True, capture_output=True)
    with pytest.raises(BundleError, match="does not decrypt"):
        verify_bundle(bundle, load_public_keys(keys["public"]), load_content_key(wrong))


@pytest.mark.parametrize("case, message", [
    ("wrong-pin", "PIN for token 'edgeship' is wrong"),
    ("no-such-key", "has no private key labelled 'missing'"),
    ("no-such-token", "no PKCS#11 token labelled 'nope'"),
    ("no-module", "cannot load the PKCS#11 module"),
])
def test_token_mistakes_are_one_line_errors(case, message, token, cnn_onnx, tmp_path):
    bad_pin = tmp_path / "bad-pin"
    bad_pin.write_text("0000")
    subprocess.run(CLI + ["keygen", "--out", str(tmp_path / "k"), "--pkcs11", token["uri"]("mistakes")],
                   capture_output=True)  # a key to miss the PIN of (made once; later cases find it there)
    uri = {"wrong-pin": token["uri"]("mistakes", bad_pin), "no-such-key": token["uri"]("missing"),
           "no-such-token": token["uri"]("mistakes").replace("token=edgeship", "token=nope"),
           "no-module": token["uri"]("mistakes").replace(MODULE, "/nonexistent/module.so")}[case]
    done = subprocess.run(CLI + ["pack", str(cnn_onnx), "--name", "digits", "--version", "1", "--sign-key", uri,
                                 "--out", str(tmp_path / "d.edgeship")], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "1234" not in done.stderr and not (tmp_path / "d.edgeship").exists()
    with pytest.raises(EdgeshipError):
        from edgeship.bundle.keys import load_private_key

        load_private_key(uri)
