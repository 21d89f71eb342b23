"""CLI conventions: --version, -v/-q, --json, one-line errors with exit 2 for every bad argument,
plain progress lines when not on a terminal, and device-only installs offering device commands only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import edgeship
from test_cli import run
from test_server import DEVICE_EDGESHIP


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgeship {edgeship.__version__}"


@pytest.mark.parametrize("args, fragment", [
    (["nope"], "No such command 'nope'"),
    (["optimize"], "Missing argument 'model'"),
    (["optimize", "m.onnx", "--data", "d.npz", "--objective", "speed"], "'speed' is not one of"),
    (["optimize", "m.onnx", "--data", "d.npz", "--threads", "0"], "--threads"),
    (["optimize", "m.onnx", "--data", "d.npz", "--executor", "cluster"], "'cluster' is not one of"),
    (["inspect", "m.onnx", "--frobnicate"], "No such option"),
    (["serve", "b.edgeship", "--trust", "k.pub", "--port", "99999"], "--port"),
    (["demo", "--model", "resnet"], "'resnet' is not one of"),
    (["publish", "b.edgeship", "--repo", "r", "--rollout", "150"], "--rollout"),
    (["run", "b.edgeship", "--trust", "k.pub"], "give exactly one of --input"),
])
def test_every_bad_argument_is_one_line_and_exit_2(args, fragment):
    proc = run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_typo_in_pack_target_is_refused(cnn_onnx, tmp_path):
    keys = edgeship.generate_keys(tmp_path / "keys")
    proc = run("pack", cnn_onnx, "--name", "d", "--version", "1", "--sign-key", keys["private"],
               "--target", "raspbery-pi-4", "-o", tmp_path / "d.edgeship")
    assert proc.returncode == 2 and "unknown target 'raspbery-pi-4'" in proc.stderr
    assert not (tmp_path / "d.edgeship").exists()


def test_json_output_of_reporting_commands(cnn_onnx, tmp_path):
    recipes = json.loads(run("recipes", "--json").stdout)
    assert "static-int8-minmax" in {r["name"] for r in recipes["recipes"]} and "fp16" in recipes["passes"]
    keys = json.loads(run("keygen", "--out", tmp_path / "keys", "--json").stdout)
    assert Path(keys["private"]).is_file()
    bundle = tmp_path / "d.edgeship"
    assert run("pack", cnn_onnx, "--name", "d", "--version", "1", "--sign-key", keys["private"],
               "-o", bundle).returncode == 0
    manifest = json.loads(run("verify", bundle, "--trust", keys["public"], "--json").stdout)
    assert manifest["name"] == "d" and manifest["version"] == 1


def test_progress_is_plain_lines_when_not_on_a_terminal(cnn_onnx, cnn_data, tmp_path):
    proc = run("-q", "optimize", cnn_onnx, "--data", cnn_data["calib"], "--eval", cnn_data["eval"],
               "--recipes", "fp16", "--objective", "size", "--out", tmp_path / "quiet")
    assert "optimizing: [" not in proc.stderr  # -q: no progress
    proc = run("-v", "optimize", cnn_onnx, "--data", cnn_data["calib"], "--eval", cnn_data["eval"],
               "--recipes", "fp16", "--objective", "size", "--out", tmp_path / "out", "--json")
    assert proc.returncode in (0, 1), proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("optimizing: [")]
    assert progress and progress[-1].startswith("optimizing: [3/3]")
    assert json.loads(proc.stdout)["candidates"][0]["recipe"] == "fp16"


def test_device_only_install_offers_only_device_commands():
    proc = subprocess.run([*DEVICE_EDGESHIP, "--help"], capture_output=True, text=True, env={"COLUMNS": "200",
                                                                                           "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert {"serve", "run", "verify", "agent", "keygen"} <= listed
    assert not listed & {"optimize", "inspect", "demo", "pack", "targets", "recipes"}
    full = run("--help").stdout
    assert "optimize" in full and "--install-completion" in full


@pytest.fixture(scope="module")
def made_keys(tmp_path_factory):
    from edgeship.bundle import generate_keys

    return generate_keys(tmp_path_factory.mktemp("zero-keys"))


@pytest.mark.parametrize("args", [
    ["verify", "/dev/zero", "--trust", "{pub}"],
    ["run", "/dev/zero", "--trust", "{pub}", "--input", "x.npz"],
    ["serve", "/dev/zero", "--trust", "{pub}", "--port", "0"],
    ["publish", "/dev/zero", "--repo", "{repo}"],
    ["verify", "{bundle}", "--trust", "/dev/zero"],
    ["pack", "{onnx}", "--name", "m", "--version", "1", "--sign-key", "/dev/zero", "--out", "{out}"],
    ["inspect", "/dev/zero"],
])
def test_a_device_file_given_as_a_file_is_refused_at_once(args, made_keys, cnn_onnx, tmp_path):
    """/dev/zero never ends: anything that reads it whole would hang (or fill memory)."""
    from edgeship.bundle.pack import pack
    from edgeship.ota.repository import init_repo

    repo = tmp_path / "repo"
    init_repo(repo)
    bundle = pack(cnn_onnx, "m", 1, made_keys["private"], tmp_path / "m.edgeship")
    values = {"pub": made_keys["public"], "repo": repo, "bundle": bundle, "onnx": cnn_onnx, "out": tmp_path / "o.edgeship"}
    proc = run(*[a.format(**values) for a in args], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.edgeship").exists()
