"""Metrics read the right output: a skl2onnx classifier (label, then probabilities) scores as
scikit-learn does; ambiguous outputs are refused with the list; --output picks one."""

from __future__ import annotations

import numpy as np
import pytest

import edgeship
from edgeship.evaluate.metrics import METRICS, get_metric

FAST = edgeship.EvalSettings(runs=20, rounds=2, warmup=3, measure_memory=False)


@pytest.fixture(scope="module")
def sklearn_classifier(tmp_path_factory):
    """A small MLP on the digits, converted by skl2onnx without zipmap: outputs label, probabilities."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier((32,), max_iter=300, random_state=0).fit(x[:1000], y[:1000])
    root = tmp_path_factory.mktemp("skl")
    path = root / "mlp.onnx"
    path.write_bytes(to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString())
    calib, evald = root / "calib.npz", root / "eval.npz"
    np.savez(calib, X=x[:400], labels=y[:400].astype(np.int64))
    np.savez(evald, X=x[1000:], labels=y[1000:].astype(np.int64))
    return {"path": path, "calib": calib, "eval": evald, "sklearn_accuracy": float(clf.score(x[1000:], y[1000:]))}


def test_skl2onnx_classifier_accuracy_matches_scikit_learn(sklearn_classifier):
    model = edgeship.load(sklearn_classifier["path"])
    assert [o.name for o in model.outputs] == ["label", "probabilities"]
    result = edgeship.optimize(model, data=sklearn_classifier["calib"], eval_data=sklearn_classifier["eval"],
                               recipes="fp16", settings=FAST)
    assert result.metric.output == "label"
    assert abs(result.baseline.metrics["accuracy"] - sklearn_classifier["sklearn_accuracy"]) <= 0.005


def test_accuracy_on_the_probabilities_output_matches_too(sklearn_classifier):
    result = edgeship.optimize(sklearn_classifier["path"], data=sklearn_classifier["calib"],
                               eval_data=sklearn_classifier["eval"], recipes="fp16", settings=FAST,
                               output="probabilities")
    assert abs(result.baseline.metrics["accuracy"] - sklearn_classifier["sklearn_accuracy"]) <= 0.005


def test_an_unknown_output_is_refused_with_the_list(sklearn_classifier):
    with pytest.raises(edgeship.EdgeshipError, match=r"--output 'logits' .* label \(int64, shape \[32\]\), "
                                                     r"probabilities \(float32, shape \[32, 10\]\)"):
        edgeship.optimize(sklearn_classifier["path"], data=sklearn_classifier["calib"],
                          eval_data=sklearn_classifier["eval"], recipes="fp16", settings=FAST, output="logits")


def test_two_float_outputs_are_ambiguous_for_accuracy():
    metric = get_metric("accuracy", True)
    outputs = {"a": np.zeros((4, 10), np.float32), "b": np.zeros((4, 10), np.float32)}
    with pytest.raises(edgeship.EdgeshipError, match="cannot tell which output.*a \\(float32.*b \\(float32.*--output"):
        metric.resolve(outputs, np.arange(4) % 10)
    assert metric.resolve(outputs | {"b": np.zeros((4, 3), np.float32)}, np.arange(10)).output == "a"


def test_cosine_compares_every_float_output_or_the_named_one():
    ref = {"label": np.array([1, 2]), "emb": np.array([[1.0, 0.0], [0.0, 1.0]]), "aux": np.array([[1.0], [1.0]])}
    changed = {**ref, "aux": np.array([[-1.0], [-1.0]])}
    every = METRICS["cosine"].resolve(ref, None)
    assert every.score(changed, ref, None) == pytest.approx(0.0)  # the aux output counts
    named = get_metric("cosine", False, output="emb").resolve(ref, None)
    assert named.score(changed, ref, None) == pytest.approx(1.0)


def test_cli_output_option_and_a_wrong_name_exits_2(sklearn_classifier, tmp_path):
    from typer.testing import CliRunner

    from edgeship.cli import app

    result = CliRunner().invoke(app, ["optimize", str(sklearn_classifier["path"]), "--data",
                                      str(sklearn_classifier["calib"]), "--eval", str(sklearn_classifier["eval"]),
                                      "--recipes", "fp16", "--output", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "--output 'nope' is not a tensor output" in result.output
    assert not (tmp_path / "o").exists()
