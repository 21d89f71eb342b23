"""Engines that run models, one folder each, behind one interface (:mod:`edgeship.engines.base`):
ONNX Runtime (``ort``), OpenVINO (``openvino``), LiteRT (``litert``). The LLM engines (ONNX Runtime
GenAI, and the block-min int4 builder for it) are modules beside them.

Importing this package registers the engines; it imports none of their libraries.
"""

from __future__ import annotations

from importlib import import_module

from edgeship.core.errors import ConfigError
from edgeship.engines.base import ENGINES, Engine, register_engine

__all__ = ["Engine", "ENGINES", "register_engine", "get_engine", "DEFAULT_ENGINE"]

DEFAULT_ENGINE = "onnxruntime"
_BUILTIN = ("ort", "openvino", "litert", "tflm")  # one registration per engine folder

for _folder in _BUILTIN:
    import_module(f"edgeship.engines.{_folder}")


def get_engine(name: str | None) -> Engine:
    """The engine called ``name`` (None: ONNX Runtime); an unknown name says which exist."""
    engine = ENGINES.get(name or DEFAULT_ENGINE)
    if engine is None:
        raise ConfigError(f"unknown engine {name!r}; this edgeship knows {sorted(ENGINES)}: upgrade edgeship "
                          "if the model was made by a newer one.")
    return engine
