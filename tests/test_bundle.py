"""Signed, encrypted bundles and the runtime: round trips, and every tampering refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeship.bundle import BundleError, generate_keys, load_public_keys, verify_bundle
from edgeship.bundle.keys import KeyFileError, load_content_key, load_private_key
from edgeship.bundle.pack import pack
from edgeship.runtime import Runtime, RuntimeInputError


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    paths = generate_keys(root / "ours", content_key=True)
    paths["other_public"] = generate_keys(root / "theirs")["public"]
    paths["other_private"] = root / "theirs" / "signing.key"
    return paths


@pytest.fixture(scope="module")
def bundles(keys, cnn_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {
        "plain": pack(cnn_onnx, "digits", 3, keys["private"], root / "plain.edgeship", target="raspberry-pi-4",
                      labels=[str(i) for i in range(10)]),
        "encrypted": pack(cnn_onnx, "digits", 3, keys["private"], root / "enc.edgeship", encrypt_key=keys["content"]),
        "old": pack(cnn_onnx, "digits", 2, keys["private"], root / "old.edgeship"),
    }


def test_keygen_writes_private_keys_0600_and_refuses_to_overwrite(keys):
    for kind in ("private", "content"):
        assert stat.S_IMODE(os.stat(keys[kind]).st_mode) == 0o600
    assert len(load_content_key(keys["content"])) == 32
    load_private_key(keys["private"])
    with pytest.raises(KeyFileError, match="already exist"):
        generate_keys(keys["private"].parent)


def test_bundles_and_public_keys_are_readable_by_others(bundles, keys):
    """A web server or another user serves bundles: 0644, like the public key; never 0600."""
    for path in (bundles["plain"], bundles["encrypted"], keys["public"]):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_round_trip_and_manifest(bundles, keys, cnn_onnx):
    trusted = load_public_keys(keys["public"])
    plain = verify_bundle(bundles["plain"], trusted)
    m = plain.manifest
    # packed pre-optimized by default: the manifest names both the packed graph and the source
    assert m["model_sha256"] == hashlib.sha256(plain.model_bytes).hexdigest()
    assert m["source_model_sha256"] == hashlib.sha256(Path(cnn_onnx).read_bytes()).hexdigest()
    assert m["runtime"]["graph_optimization"] == "extended" and m["runtime"]["onnxruntime"]
    assert m["format_version"] == 1 and m["name"] == "digits" and m["version"] == 3 and m["created"]
    assert m["inputs"][0]["name"] == "image" and m["labels"][3] == "3" and m["target"] == "raspberry-pi-4"
    assert m["encryption"] is None and set(m["members"]) == {"model.onnx", "selftest.npz"}
    enc = verify_bundle(bundles["encrypted"], trusted, load_content_key(keys["content"]))
    assert enc.model_bytes == plain.model_bytes and enc.manifest["encryption"]["alg"] == "AES-256-GCM"
    middle = plain.model_bytes[len(plain.model_bytes) // 2:][:64]
    assert middle not in Path(bundles["encrypted"]).read_bytes()  # no plaintext model on disk


def test_no_preoptimize_packs_the_model_as_given(keys, cnn_onnx, tmp_path):
    bundle = pack(cnn_onnx, "digits", 1, keys["private"], tmp_path / "asis.edgeship", preoptimize=False)
    verified = verify_bundle(bundle, load_public_keys(keys["public"]))
    assert verified.model_bytes == Path(cnn_onnx).read_bytes()
    assert verified.manifest["runtime"]["graph_optimization"].startswith("none")


def test_two_encrypted_bundles_use_fresh_nonces(bundles, keys, cnn_onnx, tmp_path):
    again = pack(cnn_onnx, "digits", 3, keys["private"], tmp_path / "again.edgeship", encrypt_key=keys["content"])
    nonce = lambda p: json.loads(zipfile.ZipFile(p).read("manifest.json"))["encryption"]["nonce"]  # noqa: E731
    assert nonce(again) != nonce(bundles["encrypted"])


def _rewrite(src: Path, dst: Path, member: str, mutate) -> Path:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            out.writestr(info.filename, mutate(data) if info.filename == member else data)
    return dst


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("member", ["manifest.json", "manifest.sig", "model.onnx.enc", "selftest.npz"])
def test_a_flipped_byte_in_any_member_is_refused(member, bundles, keys, tmp_path):
    bad = _rewrite(bundles["encrypted"], tmp_path / "bad.edgeship", member, _flip)
    with pytest.raises(BundleError, match="signature|signed digest"):
        verify_bundle(bad, load_public_keys(keys["public"]), load_content_key(keys["content"]))


def test_a_compressed_member_is_refused(bundles, keys, tmp_path):
    with zipfile.ZipFile(bundles["plain"]) as archive, \
            zipfile.ZipFile(tmp_path / "deflated.edgeship", "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            out.writestr(info.filename, archive.read(info))
    with pytest.raises(BundleError, match="is compressed"):
        verify_bundle(tmp_path / "deflated.edgeship", load_public_keys(keys["public"]))


def test_a_flipped_byte_in_the_file_is_refused(bundles, keys, tmp_path):
    data = bytearray(Path(bundles["plain"]).read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "raw.edgeship"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        verify_bundle(bad, load_public_keys(keys["public"]))


def test_untrusted_signer_truncation_and_wrong_key_are_refused(bundles, keys, tmp_path, cnn_onnx):
    with pytest.raises(BundleError, match="does not match any trusted key"):
        verify_bundle(bundles["plain"], load_public_keys(keys["other_public"]))
    theirs = pack(cnn_onnx, "digits", 9, keys["other_private"], tmp_path / "theirs.edgeship")
    with pytest.raises(BundleError, match="does not match any trusted key"):
        verify_bundle(theirs, load_public_keys(keys["public"]))
    data = Path(bundles["plain"]).read_bytes()
    (tmp_path / "cut.edgeship").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated|damaged|cannot be read"):
        verify_bundle(tmp_path / "cut.edgeship", load_public_keys(keys["public"]))
    with pytest.raises(BundleError, match="does not decrypt"):
        verify_bundle(bundles["encrypted"], load_public_keys(keys["public"]), os.urandom(32))
    with pytest.raises(BundleError, match="encrypted; pass --decrypt-key"):
        verify_bundle(bundles["encrypted"], load_public_keys(keys["public"]))


def test_anti_rollback(bundles, keys, tmp_path):
    trusted, state = load_public_keys(keys["public"]), tmp_path / "state"
    verify_bundle(bundles["plain"], trusted, state_dir=state)
    with pytest.raises(BundleError, match="older than version 3"):
        verify_bundle(bundles["old"], trusted, state_dir=state)
    verify_bundle(bundles["old"], trusted, state_dir=state, allow_downgrade=True)
    assert json.loads((state / "accepted-versions.json").read_text()) == {"digits": 3}


def test_runtime_predicts_and_checks_inputs(bundles, keys, digits8):
    runtime = Runtime.open(bundles["encrypted"], [keys["public"]], keys["content"], threads=1)
    # the decrypted model is not kept beside the session (it was opened through an in-memory file)
    assert runtime.bundle.model_bytes == b""
    x = digits8["x_test"][:4]
    out = runtime.predict({"image": x})["output"]
    assert out.shape == (4, 10) and float(np.mean(out.argmax(1) == digits8["y_test"][:4])) >= 0.5
    with pytest.raises(RuntimeInputError, match="missing"):
        runtime.predict({"pixels": x})
    with pytest.raises(RuntimeInputError, match="dtype float64"):
        runtime.predict({"image": x.astype(np.float64)})
    with pytest.raises(RuntimeInputError, match="has shape"):
        runtime.predict({"image": x[:, :, :4]})


def test_a_bundle_whose_self_test_fails_is_not_loaded(bundles, keys, tmp_path, break_selftest):
    """Signed by a trusted key, digests right, but the reference output is wrong."""
    bad = break_selftest(bundles["plain"], tmp_path / "selftest.edgeship", keys["private"])
    with pytest.raises(BundleError, match="failed its self-test"):
        Runtime.open(bad, [keys["public"]], state_dir=tmp_path / "state")
    assert not (tmp_path / "state" / "accepted-versions.json").exists()  # not accepted


def test_runtime_path_never_imports_heavy_frameworks(bundles, keys, digits8, tmp_path):
    np.savez(tmp_path / "x.npz", image=digits8["x_test"][:2])
    script = (
        "import sys, json, numpy as np\n"
        "from edgeship.runtime import Runtime\n"
        f"rt = Runtime.open({str(bundles['encrypted'])!r}, [{str(keys['public'])!r}], {str(keys['content'])!r})\n"
        f"rt.predict({{'image': np.load({str(tmp_path / 'x.npz')!r})['image']}})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert not {"torch", "transformers", "matplotlib", "sklearn", "onnx"} & loaded


def test_cli_keygen_pack_verify_run(tmp_path, cnn_onnx, digits8):
    edgeship = [sys.executable, "-m", "edgeship.cli"]
    run = lambda *a: subprocess.run([*edgeship, *map(str, a)], capture_output=True, text=True, timeout=300)  # noqa: E731
    assert run("keygen", "--out", tmp_path / "k", "--content-key").returncode == 0
    k = tmp_path / "k"
    p = run("pack", cnn_onnx, "--name", "cnn", "--version", "1", "--sign-key", k / "signing.key",
            "--encrypt-key", k / "content.key", "-o", tmp_path / "m.edgeship")
    assert p.returncode == 0, p.stderr
    v = run("verify", tmp_path / "m.edgeship", "--trust", k / "signing.pub", "--decrypt-key", k / "content.key")
    assert v.returncode == 0 and "verified cnn v1" in v.stdout
    np.savez(tmp_path / "x.npz", image=digits8["x_test"][:3])
    r = run("run", tmp_path / "m.edgeship", "--input", tmp_path / "x.npz", "--trust", k / "signing.pub",
            "--decrypt-key", k / "content.key", "--output", tmp_path / "y.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npz")["output"].shape == (3, 10)
    bad = run("verify", tmp_path / "m.edgeship", "--trust", k / "signing.pub")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    zero = run("pack", cnn_onnx, "--name", "cnn", "--version", "0", "--sign-key", k / "signing.key",
               "-o", tmp_path / "z.edgeship")
    assert zero.returncode == 2 and "--version must be" in zero.stderr and not (tmp_path / "z.edgeship").exists()
