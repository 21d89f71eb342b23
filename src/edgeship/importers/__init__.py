"""Turn what the user has (ONNX file, PyTorch module, Hugging Face directory) into a Model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.errors import InvalidModelError
from edgeship.importers.onnx_file import load_onnx
from edgeship.importers.torch_module import from_torch, load_module_function

__all__ = ["load", "from_torch"]


def load(source: Any) -> Any:
    """Load a model from an ONNX file, a Keras ``.keras``/``.h5`` file, a LiteRT ``.tflite`` file, a
    Hugging Face directory, or ``module:function``.

    ``source`` may also be an existing :class:`~edgeship.model.Model` (returned as is).
    """
    from edgeship.model import Model

    if isinstance(source, Model):
        return source
    text = str(source)
    path = Path(text)
    if path.is_dir():
        from edgeship.importers.huggingface import load_hf_dir
        from edgeship.importers.tflite_file import is_saved_model, refuse_saved_model

        if is_saved_model(path):
            refuse_saved_model(path)

        return load_hf_dir(path)
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        from edgeship.importers.keras_file import load_keras

        return load_keras(path)
    if path.suffix.lower() in (".tflite", ".tflm"):  # .tflm: a TFLite Micro candidate, the same flatbuffer
        from edgeship.importers.tflite_file import load_tflite

        return load_tflite(path)
    if path.suffix.lower() == ".onnx" or path.exists():
        return load_onnx(path)
    if ":" in text and not path.exists():
        return load_module_function(text)
    raise InvalidModelError(
        f"model not found: {text!r}. Give an .onnx, .keras, .h5 or .tflite file, a Hugging Face model directory, "
        "or MODULE:FUNCTION returning (torch module, example inputs)."
    )
