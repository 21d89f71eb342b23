"""Strict publishing: a bundle is checked before it reaches the update repository, names never
become paths outside it, and a published release is never replaced, on any channel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import rewrite_manifest
from edgeship.bundle import BundleError, generate_keys, load_public_keys, verify_bundle
from edgeship.bundle.pack import pack
from edgeship.errors import EdgeshipError
from edgeship.ota.repository import init_repo, publish, set_rollout

CLI = [sys.executable, "-m", "edgeship.cli"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("repo-keys"))


@pytest.fixture(scope="module")
def made(keys, cnn_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("repo-bundles")
    return {v: pack(cnn_onnx, "digits", v, keys["private"], root / f"d{v}.edgeship") for v in (1, 2)}


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (and its parent, where an escaping name would land) with its bytes."""
    return {str(p): p.read_bytes() for p in folder.parent.rglob("*") if p.is_file()}


def _refused(repo: Path, bundle: Path, match: str, **kwargs) -> None:
    before = _snapshot(repo)
    with pytest.raises(EdgeshipError, match=match):
        publish(repo, bundle, **kwargs)
    assert _snapshot(repo) == before, "a refused publish changed files"


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", "a\\b", "", "dé", "x" * 129, "a..b", 7, None])
@pytest.mark.parametrize("trusted", [False, True])
def test_a_name_that_is_not_a_plain_name_is_refused_with_or_without_trust(name, trusted, made, keys, tmp_path):
    """Signed by the real key (a buggy or hostile packer), so only the name check stands in the way."""
    bad = rewrite_manifest(made[1], tmp_path / "bad.edgeship", keys["private"], lambda m: m.update(name=name))
    repo = tmp_path / "box" / "repo"
    init_repo(repo)
    _refused(repo, bad, "not a plain name", trusted_keys=load_public_keys(keys["public"]) if trusted else None)
    assert not (tmp_path / "box" / "escaped").exists() and not list((tmp_path / "box").glob("*.edgeship"))


@pytest.mark.parametrize("version", ["2", 2.0, True, 0, -1, 2**60, None, [2]])
def test_a_version_that_is_not_a_whole_number_is_refused_everywhere(version, made, keys, tmp_path):
    bad = rewrite_manifest(made[1], tmp_path / "bad.edgeship", keys["private"], lambda m: m.update(version=version))
    repo = tmp_path / "repo"
    init_repo(repo)
    _refused(repo, bad, "version")
    with pytest.raises(BundleError, match="version"):
        verify_bundle(bad, load_public_keys(keys["public"]))


@pytest.mark.parametrize("format_version", ["1", 1.0, True, 2, None])
def test_the_format_version_must_be_exact(format_version, made, keys, tmp_path):
    bad = rewrite_manifest(made[1], tmp_path / "bad.edgeship", keys["private"],
                           lambda m: m.update(format_version=format_version))
    with pytest.raises(BundleError, match="format version"):
        verify_bundle(bad, load_public_keys(keys["public"]))
    repo = tmp_path / "repo"
    init_repo(repo)
    _refused(repo, bad, "format version")


def test_a_bundle_must_verify_before_it_is_published_even_without_trust(made, keys, tmp_path):
    repo = tmp_path / "repo"
    init_repo(repo)
    with zipfile.ZipFile(made[1]) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    altered = dict(members)
    model = bytearray(altered["model.onnx"])
    model[len(model) // 2] ^= 1
    altered["model.onnx"] = bytes(model)
    unsigned = {k: v for k, v in members.items() if k != "manifest.sig"}
    for label, content in (("altered", altered), ("unsigned", unsigned)):
        path = tmp_path / f"{label}.edgeship"
        with zipfile.ZipFile(path, "w") as out:
            for name, data in content.items():
                out.writestr(name, data)
        _refused(repo, path, "signed digest" if label == "altered" else "no manifest.sig")
    # the manifest edited after signing: refused when the signer is checked
    edited = rewrite_manifest(made[1], tmp_path / "edited.edgeship", None, lambda m: m.update(task="other"))
    _refused(repo, edited, "does not match any trusted key", trusted_keys=load_public_keys(keys["public"]))


def test_a_release_is_never_replaced_on_any_channel_but_may_be_promoted(made, keys, cnn_onnx, tmp_path):
    repo = tmp_path / "repo"
    init_repo(repo)
    publish(repo, made[2], channel="canary")
    other = pack(cnn_onnx, "digits", 2, keys["private"], tmp_path / "other2.edgeship",
                 labels=[f"class-{i}" for i in range(10)])
    for channel in ("canary", "stable"):
        _refused(repo, other, "already published .*different content" if channel == "stable" else "not newer",
                 channel=channel)
    index = publish(repo, made[2], channel="stable")  # the same bytes: a promotion from canary
    assert [r["version"] for r in index["releases"]] == [2]
    targets = json.loads((repo / "public" / "metadata" / "timestamp.json").read_text())
    assert targets["signed"]["_type"] == "timestamp"


@pytest.mark.parametrize("model", ["../x", "a/b", ".."])
def test_rollout_names_are_checked_too(model, tmp_path):
    repo = tmp_path / "repo"
    init_repo(repo)
    with pytest.raises(EdgeshipError, match="not a plain name"):
        set_rollout(repo, model, 1, 50)


@pytest.mark.parametrize("args, message", [
    (["--timestamp-hours", "-5"], "--timestamp-hours must be"),
    (["--root-days", "nan"], "--root-days must be"),
    (["--snapshot-days", "1e12"], "--snapshot-days must be"),
])
def test_repo_init_refuses_nonsense_periods_with_one_line(args, message, tmp_path):
    done = subprocess.run(CLI + ["repo", "init", str(tmp_path / "repo"), *args], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "repo").exists()
