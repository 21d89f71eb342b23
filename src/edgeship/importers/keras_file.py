"""Keras models in: ``.keras`` and ``.h5`` files, loaded by Keras 3 on its torch backend (no
TensorFlow needed) and exported to ONNX by Keras itself (``model.export(format="onnx")``).

A Keras file can carry code: a ``Lambda`` layer is Python bytecode (marshal) or a function
reference, and a custom class names a module to import. The model's configuration is read first,
bounded, without Keras, and a file that holds either is refused before Keras deserializes
anything; Keras then loads with ``safe_mode=True`` as a second line. The export is checked against
Keras on a second input, every output, before the model is returned.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeship._workspace import scratch_dir
from edgeship.core.errors import ConfigError, InvalidModelError
from edgeship.model import Model

__all__ = ["load_keras", "KERAS_SUFFIXES"]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
MAX_CONFIG_BYTES = 16 << 20
_SAFE_MODULES = ("keras", "keras.layers", "keras.src", "keras.models", "builtins")


def _config(path: Path) -> Any:
    """The model configuration JSON, read without Keras (bounded)."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise InvalidModelError(f"{str(path)!r} has a {info.file_size >> 20} MiB config; refused.")
                return json.loads(archive.read(info))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise InvalidModelError(f"{str(path)!r} holds weights only (no model_config); save the whole model "
                                        "with model.save('model.keras').")
            if len(raw) > MAX_CONFIG_BYTES:
                raise InvalidModelError(f"{str(path)!r} has an oversized model_config; refused.")
            return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (KeyError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidModelError(f"{str(path)!r} is not a Keras model file ({type(exc).__name__}); save it with "
                                "model.save('model.keras').") from None


def _refuse_code(node: Any, path: Path) -> None:
    """Lambda layers and classes from outside Keras: code that loading would run."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("class_name") in ("Lambda", "TFOpLambda", "function", "__lambda__"):
                raise InvalidModelError(f"{str(path)!r} has a Lambda layer: Python code that loading would run. "
                                        "edgeship loads no code from model files; replace it with built-in layers.")
            module = item.get("module")
            if isinstance(module, str) and not module.startswith(_SAFE_MODULES):
                raise InvalidModelError(f"{str(path)!r} uses {item.get('class_name')!r} from module {module!r}: custom "
                                        "code that loading would import. Export the model to ONNX where its code lives.")
            stack.extend(item.values())


def _keras() -> Any:
    if "keras" not in __import__("sys").modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")  # TensorFlow need not be installed
    try:
        import keras
    except ImportError:
        raise ConfigError("loading a Keras model needs Keras 3 and h5py: pip install 'edgeship[keras]'.") from None
    if keras.backend.backend() != "torch":
        raise ConfigError(f"Keras runs here on its {keras.backend.backend()} backend; edgeship exports Keras models "
                          "through the torch backend: set KERAS_BACKEND=torch before Keras is imported.")
    return keras


def _sample(model: Any, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = []
    for spec in model.inputs:
        dims = list(spec.shape)
        if any(d is None for d in dims[1:]):
            raise InvalidModelError(f"input {spec.name!r} has a free dimension besides the batch ({dims}); give the "
                                    "model a fixed input shape (keras.Input(shape=...)).")
        shapes.append([2, *dims[1:]])
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def load_keras(path: Path | str) -> Model:
    """A ``.keras`` or ``.h5`` file as an ONNX Model (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"model file not found: {str(path)!r}; check the path.")
    _refuse_code(_config(path), path)
    keras = _keras()
    try:
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError for files it cannot rebuild
        raise InvalidModelError(f"Keras cannot load {str(path)!r}: {str(exc).splitlines()[0][:200]}") from None
    sample = _sample(model, 0)
    model.predict(sample, verbose=0)  # builds the model: export needs it called once
    out = scratch_dir("keras") / "model.onnx"
    try:
        model.export(str(out), format="onnx", verbose=False)
    except Exception as exc:
        raise InvalidModelError(f"Keras could not export {str(path)!r} to ONNX: {str(exc).splitlines()[0][:200]}") \
            from None
    _check_parity(model, out, _sample(model, 1), path)
    from edgeship.importers.onnx_file import load_onnx

    loaded = load_onnx(out)
    return Model(path=loaded.path, source=f"keras:{path}", kind="onnx")


def _check_parity(model: Any, onnx_path: Path, sample: list[np.ndarray], path: Path) -> None:
    from edgeship.core.session import open_session

    session = open_session(onnx_path, threads=1)
    feeds = {spec.name: x for spec, x in zip(session.get_inputs(), sample)}
    got = session.run(None, feeds)
    want = model.predict(sample, verbose=0)
    want = want if isinstance(want, (list, tuple)) else [want]
    for a, b in zip(got, want):
        b = np.asarray(b)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4 * (np.abs(b).max() + 1e-6)):
            raise InvalidModelError(f"the ONNX export of {str(path)!r} does not match Keras on a second input "
                                    f"(max difference {np.abs(a - b).max() if a.shape == b.shape else 'shape'}).")
