"""Budgeted search on a target: estimates skip candidates, budget lines gate, nothing-fits exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import edgeship
from edgeship.errors import ConfigError

FAST = edgeship.EvalSettings(runs=20, rounds=5, warmup=3)  # 5 rounds: a real speed interval, not t(1)'s


pytestmark = pytest.mark.usefixtures("private_cache")  # host measurements cached per module, not in ~/.cache


def test_estimates_skip_candidates_that_break_the_budget(cnn_onnx, cnn_data):
    fp32_size = os.path.getsize(cnn_onnx)
    budget = edgeship.Budget(max_accuracy_drop=0.03, min_speedup=0.01, max_size_mb=0.4 * fp32_size / 2**20)
    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes="fp16,static-int8-minmax", budget=budget, settings=FAST,
                               target="raspberry-pi-4")
    by = {c.recipe: c for c in result.candidates}
    assert by["fp16"].status == "skipped" and "max-size-mb" in by["fp16"].reason
    assert not by["fp16"].metrics  # skipped before it was measured
    assert by["static-int8-minmax"].status == "ok" and result.best is by["static-int8-minmax"]
    fit = result.best.fit
    assert fit["target"] == "raspberry-pi-4" and fit["source"] == "estimate"
    assert {"latency_ms", "peak_memory_bytes", "size_bytes", "energy_mj"} <= set(fit["figures"])
    assert all(line["ok"] for line in fit["lines"])


def test_nothing_fits_names_the_closest_candidate(cnn_onnx, cnn_data):
    budget = edgeship.Budget(max_accuracy_drop=0.03, min_speedup=0.01, max_latency_ms=1e-6)
    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes="static-int8-minmax,fp16", budget=budget, settings=FAST, target="cortex-m7")
    assert result.best is None and result.closest is not None
    assert "max-latency-ms" in result.closest_reason


def test_host_budget_uses_measurements_and_energy_objective(cnn_onnx, cnn_data):
    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes="fp16,static-int8-minmax",
                               budget=edgeship.Budget(max_accuracy_drop=0.03, min_speedup=0.01, max_memory_mb=4096),
                               settings=FAST, target="host", objective="energy", request_rate_hz=1000.0)
    measured = [c for c in result.candidates if c.status in ("ok", "rejected")]
    assert measured and all(c.fit["source"].startswith("measured on host") for c in measured)
    assert all(c.fit["figures"]["latency_ms"] == c.metrics["latency_ms_p50"] for c in measured)
    ok = [c for c in result.candidates if c.status == "ok"]
    assert result.best is min(ok, key=lambda c: c.fit["figures"]["energy_mj"])
    for c in ok:
        if c is not result.best:
            assert "worse than" in c.lost_because


def test_device_budget_without_target_is_a_clear_error(cnn_onnx, cnn_data):
    with pytest.raises(ConfigError, match="need --target"):
        edgeship.optimize(cnn_onnx, data=cnn_data["calib"], budget=edgeship.Budget(max_latency_ms=5),
                          settings=FAST)


def test_cli_nothing_fits_exits_1_and_still_writes_the_report(cnn_onnx, cnn_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship.cli", "optimize", str(cnn_onnx), "--data", str(cnn_data["calib"]),
         "--eval", str(cnn_data["eval"]), "--recipes", "static-int8-minmax", "--target", "raspberry-pi-4",
         "--max-latency-ms", "0.000001", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "nothing fits the budget" in proc.stdout and "max-latency-ms" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["best"] is None and report["nothing_fits"]["closest"] == "static-int8-minmax"
    assert report["target"]["id"] == "raspberry-pi-4"
    html = (out / "report.html").read_text()
    assert "Fit on raspberry-pi-4" in html and "DVFS states" in html and "FAIL" in html


def test_report_has_energy_plot_with_a_target(cnn_onnx, cnn_data, tmp_path):
    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes="static-int8-minmax",
                               budget=edgeship.Budget(max_accuracy_drop=0.03, min_speedup=0.01), settings=FAST,
                               target="raspberry-pi-5")
    out = result.report(tmp_path / "out")
    assert (out / "pareto_energy.png").read_bytes()[:4] == b"\x89PNG"
    assert "Quality against energy on the target" in (out / "report.html").read_text()
