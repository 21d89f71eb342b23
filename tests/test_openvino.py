"""OpenVINO as a second engine: IR conversion and NNCF compression as a pass, a session with ONNX
Runtime's interface, and OpenVINO candidates in the same search, front and report as ONNX Runtime's."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeship
from edgeship.engines.openvino.convert import to_openvino
from edgeship.engines.openvino.session import OpenVINOSession, OVSettings
from edgeship.engines.openvino.passes import ToOpenVINO


def test_the_ir_answers_as_the_onnx_model_at_every_batch_size(cnn_onnx, digits8, tmp_path):
    xml = to_openvino(cnn_onnx, tmp_path / "m.xml")
    session = OpenVINOSession(xml, threads=1)
    reference = edgeship.load(cnn_onnx).session(1)
    for n in (1, 7):  # one static compile per shape
        x = digits8["x_test"][:n]
        got = session.run(None, {"image": x})[0]
        assert np.abs(got - reference.run(None, {"image": x})[0]).max() < 1e-4
    assert [o.name for o in session.get_outputs()] == [o.name for o in reference.get_outputs()]
    assert len(session._compiled) == 2


def test_nncf_int8_keeps_the_accuracy_and_shrinks_the_model(cnn_onnx, digits8, tmp_path):
    calibration = [{"image": digits8["x_train"][i:i + 1]} for i in range(100)]
    fp32 = to_openvino(cnn_onnx, tmp_path / "fp32.xml")
    int8 = to_openvino(cnn_onnx, tmp_path / "int8.xml", "int8", calibration)
    x, y = digits8["x_test"], digits8["y_test"]
    acc = {}
    for name, xml in (("fp32", fp32), ("int8", int8)):
        logits = OpenVINOSession(xml, 1).run(None, {"image": x})[0]
        acc[name] = float((logits.argmax(1) == y).mean())
    assert acc["int8"] >= acc["fp32"] - 0.02
    assert int8.with_suffix(".bin").stat().st_size < 0.8 * fp32.with_suffix(".bin").stat().st_size  # 0.72x here (a tiny CNN)


def test_bf16_and_throughput_settings_compile(cnn_onnx, digits8, tmp_path):
    xml = to_openvino(cnn_onnx, tmp_path / "m.xml")
    x = digits8["x_test"][:4]
    want = OpenVINOSession(xml, 1).run(None, {"image": x})[0]
    got = OpenVINOSession(xml, 1, OVSettings(hint="throughput", precision="bf16")).run(None, {"image": x})[0]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75  # bf16 rounds; the classes mostly agree
    with pytest.raises(edgeship.EdgeshipError, match="precision"):
        ToOpenVINO(precision="int3")


def test_openvino_candidates_enter_the_same_search_and_report(cnn_model, cnn_data, tmp_path):
    from edgeship.search.pipeline import plan_optimization

    plan = plan_optimization(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                             recipes="openvino-fp32,openvino-int8,dynamic-int8-pc")
    result = plan.run()
    by = {c.recipe: c for c in result.candidates}
    assert by["openvino-int8"].model.engine == "openvino" and by["dynamic-int8-pc"].model.engine == "onnxruntime"
    for c in result.candidates:
        assert c.status in ("ok", "rejected") and c.metrics["latency_ms_p50"] > 0 and c.metrics["peak_memory_bytes"] > 0
    assert by["openvino-int8"].metrics["size_bytes"] < 0.8 * result.baseline.metrics["size_bytes"]
    assert by["openvino-int8"].metrics["accuracy"] >= result.baseline.metrics["accuracy"] - 0.02
    out = result.report(tmp_path / "report")
    report = json.loads((out / "report.json").read_text())
    engines = {c["recipe"]: c["engine"] for c in report["candidates"]}
    assert engines["openvino-int8"] == "openvino" and engines["dynamic-int8-pc"] == "onnxruntime"
    assert (out / "candidates" / "openvino-int8.xml").is_file() and (out / "candidates" / "openvino-int8.bin").is_file()
    assert "OpenVINO" in (out / "report.html").read_text()


def test_auto_offers_openvino_when_it_is_installed(cnn_model):
    from edgeship.recipes import auto_recipes

    names = [r.name for r in auto_recipes(cnn_model)]
    assert "openvino-int8" in names and "openvino-fp32" in names
    assert "openvino-bf16" not in names  # bf16 precision is tried where the CPU has bf16, and measured there
    assert "openvino-bf16" in [r.name for r in auto_recipes(cnn_model, cpu_flags=frozenset({"avx2", "avx512_bf16"}))]


def test_an_openvino_best_packs_into_a_bundle_that_the_runtime_opens(cnn_model, cnn_data, digits8, tmp_path):
    """The bundle records the engine; the device opens it on OpenVINO, from memory, self-tested."""
    import zipfile

    from edgeship.bundle import generate_keys
    from edgeship.bundle.pack import pack
    from edgeship.runtime import Runtime
    from edgeship.search.pipeline import plan_optimization

    result = plan_optimization(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes="openvino-int8").run()
    result.best = result.candidates[0]  # the gate's verdicts are tested elsewhere; here, what pack does with it
    out = result.report(tmp_path / "report")
    assert (out / "best.xml").is_file() and (out / "best.bin").is_file() and (out / "best.onnx").is_file()
    keys = generate_keys(tmp_path / "keys", content_key=True)
    bundle = pack(out, "digits-ov", 1, keys["private"], tmp_path / "ov.edgeship", encrypt_key=keys["content"])
    with zipfile.ZipFile(bundle) as z:
        assert "model.ovir.enc" in z.namelist() and "model.onnx.enc" not in z.namelist()
    runtime = Runtime.open(bundle, [str(keys["public"])], keys["content"])
    assert runtime.manifest["engine"] == "openvino" and runtime.manifest["engine_options"]["hint"] == "latency"
    x = digits8["x_test"][:16]
    want = OpenVINOSession(out / "best.xml", 1).run(None, {"image": x})[0]
    got = next(iter(runtime.predict({"image": x}).values()))
    assert np.abs(got - want).max() < 1e-4
    # on a device-only install (no torch, onnx, nncf): `edgeship run` opens it on OpenVINO
    import subprocess
    import sys
    from pathlib import Path

    np.savez(tmp_path / "x.npz", image=x)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("device_only.py")), "run", str(bundle), "--trust",
                           str(keys["public"]), "--decrypt-key", str(keys["content"]), "--input", str(tmp_path / "x.npz"),
                           "--output", str(tmp_path / "y.npz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "y.npz") as y:
        assert np.abs(y[y.files[0]] - want).max() < 1e-4


def test_the_cli_shows_the_engine_and_its_device_extra(cnn_onnx, cnn_data, tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "optimize", str(cnn_onnx), "--data", str(cnn_data["calib"]),
                           "--eval", str(cnn_data["eval"]), "--recipes", "openvino-fp32", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: the candidate lost to the float model (its reason shown)
    assert "OpenVINO" in proc.stdout and "edgeship[openvino]" in proc.stdout  # not eaten as rich markup
