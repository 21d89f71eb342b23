"""Keras models in: .keras and .h5 files through Keras 3 on its torch backend (no TensorFlow), exported
to ONNX and checked against Keras; files that carry code are refused before Keras reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported, as edgeship does

import keras  # noqa: E402 - edgeship[keras], part of [all]

import edgeship  # noqa: E402


@pytest.fixture(scope="module")
def keras_cnn(digits8, tmp_path_factory):
    """A small CNN trained on the 8x8 digits in Keras, saved both ways."""
    keras.utils.set_random_seed(0)
    x = np.transpose(digits8["x_train"], (0, 2, 3, 1))  # Keras is channels-last
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, digits8["y_train"], epochs=30, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("keras")
    model.save(root / "digits.keras")
    model.save(root / "digits.h5")
    return model, root


@pytest.mark.parametrize("name", ["digits.keras", "digits.h5"])
def test_keras_files_load_as_onnx_with_keras_answers(keras_cnn, digits8, name):
    model, root = keras_cnn
    loaded = edgeship.load(root / name)
    assert loaded.source == f"keras:{root / name}" and [s.name for s in loaded.inputs] == ["image"]
    x = np.ascontiguousarray(np.transpose(digits8["x_test"], (0, 2, 3, 1)))
    got = loaded.session(1).run(None, {"image": x})[0]
    want = model.predict(x, verbose=0)
    assert np.abs(got - want).max() < 1e-4
    accuracy = float((got.argmax(1) == digits8["y_test"]).mean())
    assert accuracy > 0.85  # a trained model, not a random one


def test_the_cli_inspects_a_keras_file(keras_cnn):
    _, root = keras_cnn
    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(root / "digits.h5"), "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert info["inputs"][0]["name"] == "image" and info["macs"] > 0


def _lambda_model(path: Path, marker: Path) -> None:
    """A model whose Lambda layer writes ``marker`` when it runs (it must never run)."""
    code = f"""
import os, sys
os.environ['KERAS_BACKEND'] = 'torch'
import keras
model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: (open({str(marker)!r}, 'w').close(), t)[1]),
                          keras.layers.Dense(2)])
model.save({str(path)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    marker.unlink(missing_ok=True)  # saving traced the lambda once; from here it must not run


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_layer_is_refused_before_keras_reads_it(tmp_path, suffix):
    path, marker = tmp_path / f"lambda{suffix}", tmp_path / "ran"
    _lambda_model(path, marker)
    proc = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Lambda layer" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_a_missing_keras_names_the_extra(keras_cnn):
    _, root = keras_cnn
    code = (f"import sys; sys.modules['keras'] = None\nimport edgeship\n"
            f"try:\n    edgeship.load({str(root / 'digits.keras')!r})\n"
            "except edgeship.EdgeshipError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "pip install 'edgeship[keras]'" in proc.stdout, proc.stdout + proc.stderr


def test_a_weights_only_file_is_refused_with_the_fix(keras_cnn, tmp_path):
    model, _ = keras_cnn
    model.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(edgeship.EdgeshipError, match="weights only"):
        edgeship.load(tmp_path / "only.weights.h5")
