from __future__ import annotations

import json

import numpy as np
import pytest

import edgeship
from edgeship.errors import DataMismatchError, PassNotApplicableError

FAST = edgeship.EvalSettings(runs=20, rounds=5, warmup=3)  # 5 rounds: a real speed interval, not t(1)'s


def test_optimize_picks_a_candidate_within_budget(cnn_onnx, cnn_data, tmp_path):
    result = edgeship.optimize(
        cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
        recipes="fp16,static-int8-minmax", budget=edgeship.Budget(max_accuracy_drop=0.02, min_speedup=0.01),
        settings=FAST,
    )
    base = result.baseline.metrics
    assert base["accuracy"] > 0.9 and base["macs"] > 0 and base["peak_memory_bytes"] > 0
    by_name = {c.recipe: c for c in result.candidates}
    int8 = by_name["static-int8-minmax"]
    assert int8.status == "ok", int8.reason
    assert int8.metrics["size_ratio"] > 3.0 and int8.metrics["metric_drop"] <= 0.02
    assert result.best is not None and result.best.status == "ok"
    assert any(c.pareto for c in [result.baseline, *result.candidates])

    out = result.report(tmp_path / "out")
    report = json.loads((out / "report.json").read_text())
    assert report["best"] == result.best.recipe
    cand = report["candidates"][0]
    assert {"recipe", "steps", "status", "reason", "path", "metrics", "pareto"} <= set(cand)
    for key in ("accuracy", "latency_ms_p50", "latency_ms_p95", "size_bytes", "peak_memory_bytes",
                "params", "macs", "speedup", "size_ratio"):
        assert key in report["baseline"]["metrics"] and key in cand["metrics"]
    from edgeship.passes import PASSES

    assert cand["steps"][0]["pass"] in PASSES
    assert (out / "best.onnx").is_file() and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "static-int8-minmax" in html
    assert edgeship.load(out / "best.onnx").inputs[0].name == "image"


def test_candidates_not_faster_are_rejected_with_a_reason(cnn_onnx, cnn_data, tmp_path):
    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes="fp16", budget=edgeship.Budget(min_speedup=1000.0), settings=FAST)
    (fp16,) = result.candidates
    assert fp16.status == "rejected" and "not at least 1000x faster" in fp16.reason
    assert result.best is None
    out = result.report(tmp_path / "out")
    assert not (out / "best.onnx").exists()
    keys = edgeship.generate_keys(tmp_path / "keys")
    with pytest.raises(edgeship.EdgeshipError, match="no candidate .* passed the gate.*pack the model you optimized"):
        edgeship.pack(out, "cnn", 1, keys["private"], tmp_path / "cnn.edgeship")
    assert not (tmp_path / "cnn.edgeship").exists()


def test_a_failing_recipe_is_recorded_and_others_still_run(cnn_onnx, cnn_data, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"name": "int8-then-int4", "steps": [
        {"pass": "quantize_dynamic"}, {"pass": "quantize_int4"}]}))
    good = edgeship.Recipe.from_dict({"name": "half", "steps": [{"pass": "fp16"}]})
    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               recipes=[str(broken), good], settings=FAST)
    status = {c.recipe: c for c in result.candidates}
    assert status["int8-then-int4"].status == "failed"
    assert "PassNotApplicableError" in status["int8-then-int4"].reason
    assert status["half"].status in ("ok", "rejected") and status["half"].metrics


def test_single_dataset_is_split_into_disjoint_halves(cnn_onnx, cnn_data):
    from edgeship.dataset import load_data, split

    model = edgeship.load(cnn_onnx)
    data = load_data(cnn_data["eval"], model)
    calib, evaluation = split(data)
    assert len(calib) + len(evaluation) == len(data)
    rows = {r.tobytes() for r in calib.inputs["image"]}
    assert not any(r.tobytes() in rows for r in evaluation.inputs["image"])


def test_explicit_recipe_that_does_not_apply_is_an_error(cnn_onnx, cnn_data):
    with pytest.raises(PassNotApplicableError, match="no MatMul"):
        edgeship.optimize(cnn_onnx, data=cnn_data["calib"], recipes="int4-weight-only", settings=FAST)


def test_data_mismatch_names_dtype_shape(cnn_onnx, tmp_path):
    cases = {
        "names": ({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, "no array for model input"),
        "dtype": ({"image": np.zeros((4, 1, 8, 8), np.float64)}, "dtype float64"),
        "shape": ({"image": np.zeros((4, 1, 9, 9), np.float32)}, "has shape"),
        "labels": ({"image": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)}, "disagree"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(DataMismatchError, match=message):
            edgeship.optimize(cnn_onnx, data=path, settings=FAST)


def test_pickled_npz_is_refused(cnn_onnx, tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataMismatchError, match="pickled"):
        edgeship.optimize(cnn_onnx, data=path, settings=FAST)


def test_text_data_for_a_hugging_face_model(tiny_bert, sentences_file):
    result = edgeship.optimize(tiny_bert, data=sentences_file, recipes="dynamic-int8-pc",
                               settings=edgeship.EvalSettings(runs=10, rounds=2, warmup=2, text_max_length=32))
    assert result.metric.name == "cosine" and result.baseline.metrics["cosine"] == pytest.approx(1.0)
    (cand,) = result.candidates
    assert cand.metrics["cosine"] > 0.95 and cand.metrics["size_ratio"] > 3.0


def test_custom_metric_callable(cnn_onnx, cnn_data):
    def top1_agreement(outputs, reference, labels):
        return float(np.mean(outputs.argmax(1) == reference.argmax(1)))

    result = edgeship.optimize(cnn_onnx, data=cnn_data["calib"], eval_data=cnn_data["eval"],
                               metric=top1_agreement, recipes="fp16", settings=FAST)
    assert result.metric.name == "top1_agreement"
    assert result.candidates[0].metrics["top1_agreement"] > 0.98
