"""LiteRT (TensorFlow Lite) as an engine: conversion from PyTorch (litert-torch), compression
(ai-edge-quantizer), a session with ONNX Runtime's interface, candidates in the same search, and
bundles that a device opens with ai-edge-litert alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edgeship
from conftest import cosine
from edgeship.engines.litert.convert import to_litert, trace_sample
from edgeship.engines.litert.session import LiteRTSession


def _samples(digits8, n=64):
    return [{"image": digits8["x_train"][i:i + 1]} for i in range(n)]


@pytest.fixture(scope="module")
def cnn_tflite(trained_cnn, digits8, tmp_path_factory):
    root = tmp_path_factory.mktemp("litert")
    return {q: to_litert(trained_cnn, ["image"], ["logits"], _samples(digits8), root / f"{q}.tflite", q)
            for q in ("none", "dynamic-int8", "int8")}


def _torch_logits(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_the_float_conversion_matches_pytorch_at_every_batch_size(cnn_tflite, trained_cnn, digits8):
    session = LiteRTSession(cnn_tflite["none"], threads=1)
    assert [o.name for o in session.get_outputs()] == ["logits"]  # the ONNX names, not output_0
    for n in (1, 5):  # batch 5: the interpreter is resized (the CNN has no shape baked in)
        x = digits8["x_test"][:n]
        assert np.abs(session.run(None, {"image": x})[0] - _torch_logits(trained_cnn, x)).max() < 1e-4


def test_full_int8_has_int8_io_and_keeps_the_accuracy(cnn_tflite, trained_cnn, digits8):
    """Calibrated min/max: int8 in and out on the model; the session quantizes and dequantizes."""
    session = LiteRTSession(cnn_tflite["int8"], threads=1)
    detail = session._base.details["image"]
    assert np.dtype(detail["dtype"]) == np.int8 and detail["quantization"][0] > 0
    x, y = digits8["x_test"], digits8["y_test"]
    want = float((_torch_logits(trained_cnn, x).argmax(1) == y).mean())
    got = session.run(None, {"image": x})[0]
    assert got.dtype == np.float32
    assert float((got.argmax(1) == y).mean()) >= want - 0.02


def test_int8_variants_are_smaller_than_the_float_model(cnn_tflite):
    size = {q: p.stat().st_size for q, p in cnn_tflite.items()}
    assert size["dynamic-int8"] < 0.6 * size["none"] and size["int8"] < 0.6 * size["none"]  # ~0.35x here


def test_a_padded_trace_sample_is_chosen_and_the_text_model_respects_the_mask(tiny_bert, tmp_path):
    """Tracing with an all-ones mask would let the exporter bake the mask in; edgeship traces at the
    most padded sample, and the parity check runs on samples with other padding."""
    ids = np.array([[101, 2023, 2003, 102, 0, 0, 0, 0], [101, 2023, 2003, 1037, 2460, 6251, 2182, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    samples = [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1], "token_type_ids": np.zeros_like(ids[i:i + 1])}
               for i in (1, 0)]
    assert trace_sample(samples) is samples[1]  # the padded one
    names = [s.name for s in tiny_bert.inputs]
    path = to_litert(tiny_bert.torch_module, names, [s.name for s in tiny_bert.outputs], samples, tmp_path / "b.tflite")
    session = LiteRTSession(path, threads=1)
    onnx = tiny_bert.session(1)
    both = {k: np.concatenate([s[k] for s in samples]) for k in names}
    got, want = session.run(None, both)[0], onnx.run(None, both)[0]  # batch 2 at a batch-1 model: row by row
    assert cosine(got, want) > 0.9999
    unmasked = dict(samples[1], attention_mask=np.ones_like(samples[1]["attention_mask"]))
    assert cosine(session.run(None, unmasked)[0], session.run(None, samples[1])[0]) < 0.9999  # the mask matters


def test_the_session_refuses_what_the_model_cannot_take(cnn_tflite, tiny_bert, tmp_path):
    session = LiteRTSession(cnn_tflite["none"], threads=1)
    with pytest.raises(edgeship.EdgeshipError, match="takes"):
        session.run(None, {"pixels": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(edgeship.EdgeshipError, match="cannot read"):
        LiteRTSession(b"not a flatbuffer", threads=1)


def test_token_ids_beyond_int32_are_refused_not_wrapped(tiny_bert, tmp_path):
    ids = np.array([[101, 2023, 102, 0]], dtype=np.int64)
    sample = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    names = [s.name for s in tiny_bert.inputs]
    path = to_litert(tiny_bert.torch_module, names, [s.name for s in tiny_bert.outputs], [sample], tmp_path / "t.tflite")
    session = LiteRTSession(path, threads=1)
    with pytest.raises(edgeship.EdgeshipError, match="beyond the int32"):
        session.run(None, dict(sample, input_ids=np.array([[101, 2**40, 102, 0]], dtype=np.int64)))


def test_litert_candidates_enter_the_search_and_an_onnx_file_is_not_applicable(cnn_model, cnn_onnx, cnn_data, tmp_path):
    from edgeship.search.pipeline import plan_optimization

    result = plan_optimization(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes="litert-fp32,litert-int8,static-int8-minmax").run()
    by = {c.recipe: c for c in result.candidates}
    assert by["litert-int8"].model.engine == "litert" and by["static-int8-minmax"].model.engine == "onnxruntime"
    for c in result.candidates:
        assert c.status in ("ok", "rejected") and c.metrics["latency_ms_p50"] > 0 and c.metrics["peak_memory_bytes"] > 0
    assert by["litert-int8"].metrics["accuracy"] >= result.baseline.metrics["accuracy"] - 0.02
    assert by["litert-int8"].metrics["size_bytes"] < 0.6 * result.baseline.metrics["size_bytes"]
    out = result.report(tmp_path / "report")
    report = json.loads((out / "report.json").read_text())
    assert {c["recipe"]: c["engine"] for c in report["candidates"]}["litert-int8"] == "litert"
    assert (out / "candidates" / "litert-int8.tflite").is_file() and "LiteRT" in (out / "report.html").read_text()
    # a plain ONNX file has no PyTorch module to convert from: asked for by name, it says so; auto leaves it out
    with pytest.raises(edgeship.EdgeshipError, match="converted from PyTorch"):
        plan_optimization(edgeship.load(cnn_onnx), data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes="litert-int8")
    auto = plan_optimization(edgeship.load(cnn_onnx), data=cnn_data["calib"], eval_data=cnn_data["eval"])
    assert not [r for r in auto.recipes if r.name.startswith("litert")] and [r for r in auto.recipes if r.name.startswith("openvino")]


def test_auto_offers_litert_when_it_is_installed(cnn_model, tiny_bert):
    from edgeship.recipes import auto_recipes

    assert "litert-int8" in [r.name for r in auto_recipes(cnn_model)]
    text = [r.name for r in auto_recipes(tiny_bert)]
    assert "litert-dynamic-int8" in text and "litert-int8" not in text  # full int8 breaks attention (cosine ~0.66)


def test_a_litert_best_packs_and_runs_on_a_device_with_only_ai_edge_litert(cnn_model, cnn_data, digits8, tmp_path):
    from edgeship.bundle import generate_keys
    from edgeship.bundle.pack import pack
    from edgeship.runtime import Runtime
    from edgeship.search.pipeline import plan_optimization

    result = plan_optimization(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes="litert-int8").run()
    result.best = result.candidates[0]  # the gate's verdicts are tested elsewhere; here, what pack does with it
    out = result.report(tmp_path / "report")
    assert (out / "best.tflite").is_file() and (out / "best.onnx").is_file()
    keys = generate_keys(tmp_path / "keys", content_key=True)
    bundle = pack(out, "digits-lite", 1, keys["private"], tmp_path / "lite.edgeship", encrypt_key=keys["content"])
    with zipfile.ZipFile(bundle) as z:
        assert "model.tflite.enc" in z.namelist() and "model.onnx.enc" not in z.namelist()
    runtime = Runtime.open(bundle, [str(keys["public"])], keys["content"])
    assert runtime.manifest["engine"] == "litert" and "ai_edge_litert" in runtime.manifest["runtime"]
    x = digits8["x_test"][:16]
    want = LiteRTSession(out / "best.tflite", 1).run(None, {"image": x})[0]
    assert np.abs(next(iter(runtime.predict({"image": x}).values())) - want).max() < 1e-5
    np.savez(tmp_path / "x.npz", image=x)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("device_only.py")), "--block", "openvino,onnxruntime",
                           "run", str(bundle), "--trust", str(keys["public"]), "--decrypt-key", str(keys["content"]),
                           "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "y.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "y.npz") as y:
        assert np.abs(y[y.files[0]] - want).max() < 1e-5


def test_a_tflite_file_comes_in_packs_and_runs_but_is_not_optimized_again(cnn_tflite, cnn_data, digits8, tmp_path):
    """A .tflite from anywhere (here edgeship's own full-int8 one) is a Model on LiteRT: its signature
    is the I/O (floats in and out: the session quantizes), it packs and runs; optimize refuses it."""
    from edgeship.bundle import generate_keys
    from edgeship.bundle.pack import pack
    from edgeship.runtime import Runtime
    from edgeship.search.pipeline import plan_optimization

    model = edgeship.load(cnn_tflite["int8"])
    assert model.engine == "litert" and model.kind == "tflite"
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("image", "float32", ("batch", 1, 8, 8))]
    keys = generate_keys(tmp_path / "keys")
    bundle = pack(cnn_tflite["int8"], "tfl", 1, keys["private"], tmp_path / "t.edgeship")
    x = digits8["x_test"][:3]
    got = next(iter(Runtime.open(bundle, [str(keys["public"])]).predict({"image": x}).values()))
    assert np.abs(got - LiteRTSession(cnn_tflite["int8"], 1).run(None, {"image": x})[0]).max() < 1e-6
    with pytest.raises(edgeship.EdgeshipError, match="already a LiteRT model"):
        plan_optimization(cnn_tflite["int8"], data=cnn_data["calib"], eval_data=cnn_data["eval"])


def test_bad_tflite_and_savedmodel_inputs_get_one_line_that_says_what_to_do(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(edgeship.EdgeshipError, match="LiteRT cannot read"):
        edgeship.load(tmp_path / "junk.tflite")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    with pytest.raises(edgeship.EdgeshipError, match="TFLiteConverter.from_saved_model"):
        edgeship.load(saved)


def test_inspect_lists_a_tflite_models_ops_and_says_what_it_cannot_count(cnn_tflite):
    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(cnn_tflite["none"])],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CONV_2D" in proc.stdout and "unknown (a .tflite model)" in proc.stdout and "logits" in proc.stdout
