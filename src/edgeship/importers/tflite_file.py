"""LiteRT (TensorFlow Lite) ``.tflite`` files in, where ai-edge-litert is installed.

A .tflite file is already an engine's model, so it comes in as a Model on the LiteRT engine: it can
be inspected, evaluated and packed into a bundle that a device runs with ``edgeship[device,litert]``.
It is not optimized further (edgeship's passes work on ONNX graphs or PyTorch modules: give
``optimize`` the model it was made from). Its I/O is the file's own ``serving_default`` signature.

A TensorFlow SavedModel is recognized and refused with the way in: TensorFlow's own converter
makes the .tflite that this importer takes.
"""

from __future__ import annotations

from pathlib import Path

from edgeship.errors import ConfigError, InvalidModelError
from edgeship.model import Model

__all__ = ["load_tflite", "is_saved_model", "refuse_saved_model", "MAX_TFLITE_BYTES"]

MAX_TFLITE_BYTES = 2 << 30  # flatbuffers address at most 2 GiB


def load_tflite(path: Path | str) -> Model:
    from edgeship.engines import get_engine

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"model not found: {str(path)!r}.")
    if path.stat().st_size > MAX_TFLITE_BYTES:
        raise InvalidModelError(f"{str(path)!r} is {path.stat().st_size} bytes; a .tflite file holds at most 2 GiB.")
    engine = get_engine("litert")
    if not engine.installed():
        raise ConfigError(f"{str(path)!r} is a LiteRT model: pip install 'edgeship[litert]' to read it.")
    engine.open(path, threads=1)  # refuses an unreadable file, or one with no serving_default signature
    return Model(path=path, source=str(path), kind="tflite", engine=engine.name, artifact=path)


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def refuse_saved_model(path: Path) -> None:
    raise ConfigError(
        f"{str(path)!r} is a TensorFlow SavedModel, which edgeship does not convert (it would need TensorFlow): "
        "convert it with tf.lite.TFLiteConverter.from_saved_model(...) and give edgeship the .tflite file.")
