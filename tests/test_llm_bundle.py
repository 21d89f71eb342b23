"""LLM bundles: signed, encrypted in sealed chunks, verified by streaming; every alteration refused."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


from edgeship.bundle.keys import load_content_key, load_private_key, load_public_keys  # noqa: E402
from edgeship.bundle.llm import LLM_FORMAT, bundle_format, pack_llm, verify_llm_bundle  # noqa: E402
from edgeship.core.errors import BundleError  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify(bundle: Path, keys: dict[str, Path], dest: Path, **kwargs):
    return verify_llm_bundle(bundle, load_public_keys(keys["public"]), load_content_key(keys["content"]), dest, **kwargs)


def test_an_encrypted_bundle_unpacks_to_the_exact_files(tiny_llm_bundle, tiny_genai, llm_keys, tmp_path):
    assert bundle_format(tiny_llm_bundle) == LLM_FORMAT
    with zipfile.ZipFile(tiny_llm_bundle) as z:
        data = z.read("files/model.onnx.data.enc")
    assert (tiny_genai / "model.onnx.data").read_bytes()[:4096] not in data  # encrypted, not stored
    verified = _verify(tiny_llm_bundle, llm_keys, tmp_path / "model")
    assert verified.name == "tiny" and verified.version == 1 and verified.manifest["chat_template"]
    for name in verified.manifest["files"]:
        assert _sha(tmp_path / "model" / name) == _sha(tiny_genai / name)
    assert verified.manifest["selftest"]["top5"] and verified.manifest["context_length"] == 256


def _rewrite(src: Path, dst: Path, change) -> Path:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        members = {i.filename: zin.read(i) for i in zin.infolist()}
        for name, data in change(members).items():
            zout.writestr(name, data)
    return dst


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


@pytest.mark.parametrize("alteration, message", [
    (lambda m: {**m, "files/model.onnx.data.enc": _flip(m["files/model.onnx.data.enc"], 100)}, "decryption failed"),
    (lambda m: {**m, "manifest.json": m["manifest.json"].replace(b'"tiny"', b'"tinx"')}, "signature"),
    (lambda m: {k: v for k, v in m.items() if k != "files/tokenizer.json.enc"}, "not exactly the files"),
    (lambda m: {**m, "files/extra.bin.enc": b"x"}, "not exactly the files"),
    (lambda m: {**m, "files/model.onnx.data.enc": m["files/model.onnx.data.enc"][:-17]}, "not the size"),
])
def test_altered_bundles_are_refused_and_nothing_lands(tiny_llm_bundle, llm_keys, tmp_path, alteration, message):
    bad = _rewrite(tiny_llm_bundle, tmp_path / "bad.edgeship", alteration)
    with pytest.raises(BundleError, match=message):
        _verify(bad, llm_keys, tmp_path / "model")
    assert not (tmp_path / "model").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.edgeship"]


def test_chunks_cannot_be_swapped_or_moved_between_bundles(tiny_genai, llm_keys, tmp_path):
    one = pack_llm(tiny_genai, "tiny", 1, llm_keys["private"], tmp_path / "one.edgeship", llm_keys["content"])
    two = pack_llm(tiny_genai, "tiny", 2, llm_keys["private"], tmp_path / "two.edgeship", llm_keys["content"])
    member = "files/model.onnx.data.enc"
    with zipfile.ZipFile(one) as z:
        sealed = z.read(member)
    chunk = (1 << 20) + 16
    if len(sealed) > 2 * chunk:  # reorder two chunks
        swapped = sealed[chunk:2 * chunk] + sealed[:chunk] + sealed[2 * chunk:]
        bad = _rewrite(one, tmp_path / "swapped.edgeship", lambda m: {**m, member: swapped})
        with pytest.raises(BundleError, match="decryption failed"):
            _verify(bad, llm_keys, tmp_path / "m1")
    moved = _rewrite(two, tmp_path / "moved.edgeship", lambda m: {**m, member: sealed})  # v1's data in v2
    with pytest.raises(BundleError, match="decryption failed"):
        _verify(moved, llm_keys, tmp_path / "m2")


def test_a_signed_manifest_naming_a_path_is_still_refused(tiny_llm_bundle, llm_keys, tmp_path):
    key = load_private_key(llm_keys["private"])

    def hostile(m):  # type: ignore[no-untyped-def]
        manifest = json.loads(m["manifest.json"])
        manifest["files"]["../escape.json"] = manifest["files"].pop("genai_config.json")
        raw = json.dumps(manifest).encode()
        out = {k: v for k, v in m.items() if k != "files/genai_config.json.enc"}
        return {**out, "manifest.json": raw, "manifest.sig": key.sign(raw), "files/../escape.json.enc": b"x"}

    bad = _rewrite(tiny_llm_bundle, tmp_path / "hostile.edgeship", hostile)
    with pytest.raises(BundleError, match="names a path"):
        _verify(bad, llm_keys, tmp_path / "model")
    assert not (tmp_path.parent / "escape.json").exists()


def test_rollback_is_refused(tiny_genai, llm_keys, tmp_path):
    state = tmp_path / "state"
    two = pack_llm(tiny_genai, "tiny", 2, llm_keys["private"], tmp_path / "two.edgeship")
    one = pack_llm(tiny_genai, "tiny", 1, llm_keys["private"], tmp_path / "one.edgeship")
    _verify(two, llm_keys, tmp_path / "m2", state_dir=state)
    with pytest.raises(BundleError, match="older"):
        _verify(one, llm_keys, tmp_path / "m1", state_dir=state)


def test_verification_streams_a_large_file_in_bounded_memory(llm_keys, tmp_path, monkeypatch):
    """A 96 MiB weights file is verified and decrypted with well under its size in extra memory."""
    import edgeship.bundle.llm as llm

    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": 8}}))
    with (folder / "model.onnx.data").open("wb") as f:
        for i in range(96):
            f.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))  # 1 MiB per block
    monkeypatch.setattr(llm, "_selftest", lambda folder: {"prompt": "", "prompt_ids": [], "top5": []})
    bundle = pack_llm(folder, "big", 1, llm_keys["private"], tmp_path / "big.edgeship", llm_keys["content"])
    code = f"""
import sys
from edgeship.bundle.keys import load_content_key, load_public_keys
from edgeship.bundle.llm import verify_llm_bundle
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024
keys, key = load_public_keys({str(llm_keys['public'])!r}), load_content_key({str(llm_keys['content'])!r})
before = rss()
verify_llm_bundle({str(bundle)!r}, keys, key, {str(tmp_path / 'out')!r})
print(hwm() - before)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) < 24 << 20  # against 96 MiB of weights
    assert _sha(tmp_path / "out" / "model.onnx.data") == _sha(folder / "model.onnx.data")


def test_run_on_an_llm_bundle_says_what_it_is(tiny_llm_bundle, llm_keys, tmp_path):
    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros(1))
    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "run", str(tiny_llm_bundle), "--trust",
                           str(llm_keys["public"]), "--input", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "is an LLM bundle" in proc.stderr
    assert "edgeship chat" in proc.stderr and "Traceback" not in proc.stderr
