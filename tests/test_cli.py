"""The CLI as a user runs it: a real `edgeship` process, its exit code and its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EDGESHIP = [sys.executable, "-m", "edgeship.cli"]


def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*EDGESHIP, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert fragment in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error:")


def test_inspect_json(cnn_onnx):
    proc = run("inspect", cnn_onnx, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["inputs"][0]["name"] == "image" and info["ops"]["Conv"] == 3
    assert info["params"] > 10_000 and info["macs"] > 100_000


def test_inspect_table(cnn_onnx):
    proc = run("inspect", cnn_onnx)
    assert proc.returncode == 0 and "MACs" in proc.stdout and "image" in proc.stdout


def test_recipes_lists_presets():
    proc = run("recipes")
    assert proc.returncode == 0 and "static-int8-entropy" in proc.stdout and "quantize_int4" in proc.stdout


def test_optimize_writes_report(cnn_onnx, cnn_data, tmp_path):
    out = tmp_path / "out"
    proc = run("optimize", cnn_onnx, "--data", cnn_data["calib"], "--eval", cnn_data["eval"],
               "--recipes", "static-int8-minmax,fp16", "--max-accuracy-drop", "0.02", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "static-int8-minmax" in proc.stdout and "report.html" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert [c["recipe"] for c in report["candidates"]] == ["static-int8-minmax", "fp16"]
    assert report["budget"]["max_accuracy_drop"] == 0.02
    assert all((out / c["path"]).is_file() for c in report["candidates"] if c["status"] != "failed")


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing-model", "model file not found"),
        ("not-a-model", "not an ONNX model"),
        ("bad-names", "no array for model input"),
        ("bad-dtype", "dtype float64"),
        ("bad-shape", "has shape"),
        ("unknown-recipe", "unknown recipe 'int3'"),
        ("not-applicable", "quantize_int4"),
        ("missing-data", "data file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, fragment, cnn_onnx, cnn_data, tmp_path):
    model, data, extra = str(cnn_onnx), str(cnn_data["calib"]), []
    if case == "missing-model":
        model = str(tmp_path / "nope.onnx")
    elif case == "not-a-model":
        model = str(tmp_path / "junk.onnx")
        Path(model).write_text("hello")
    elif case.startswith("bad-"):
        data = str(tmp_path / "bad.npz")
        arrays = {
            "bad-names": {"pixels": np.zeros((4, 1, 8, 8), np.float32)},
            "bad-dtype": {"image": np.zeros((4, 1, 8, 8), np.float64)},
            "bad-shape": {"image": np.zeros((4, 3, 8, 8), np.float32)},
        }[case]
        np.savez(data, **arrays)
    elif case == "unknown-recipe":
        extra = ["--recipes", "int3"]
    elif case == "not-applicable":
        extra = ["--recipes", "int4-weight-only"]
    elif case == "missing-data":
        data = str(tmp_path / "missing.npz")
    out = tmp_path / "out"
    proc = run("optimize", model, "--data", data, "--out", out, *extra)
    assert_one_line_error(proc, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_out_folder_with_other_files_is_not_replaced(cnn_onnx, cnn_data, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    proc = run("optimize", cnn_onnx, "--data", cnn_data["calib"], "--out", out)
    assert_one_line_error(proc, "not an edgeship report folder")
    assert (out / "thesis.txt").read_text() == "do not delete"


def test_demo_smoke(tmp_path):
    """The built-in default: trains the digits CNN, optimizes it, writes the report."""
    out = tmp_path / "demo"
    proc = run("demo", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["metrics"]["accuracy"] > 0.95
    assert report["best"] is not None and (out / "best.onnx").is_file()
    best = next(c for c in report["candidates"] if c["recipe"] == report["best"])
    assert best["metrics"]["metric_drop"] <= 0.01 and best["metrics"]["size_ratio"] > 3.0


def test_demo_minilm_smoke(tmp_path):
    """The bundled all-MiniLM-L6-v2: exported with pooling, quantized, cosine kept."""
    out = tmp_path / "minilm"
    proc = run("demo", "--model", "minilm", "--out", out, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["metric"]["name"] == "cosine"
    best = next(c for c in report["candidates"] if c["recipe"] == report["best"])
    assert best["metrics"]["cosine"] >= 0.99 and best["metrics"]["size_ratio"] > 3.5
