"""ONNX Runtime: the default engine. The model is the ONNX file itself; its compression passes are
the general ones in ``edgeship.passes`` (quantization, pruning, ...), and sessions open through
:func:`edgeship.core.session.open_session`, the one place edgeship configures ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.engines.base import Engine, register_engine

__all__ = ["ENGINE", "open_model"]


def open_model(model: Path | str | bytes | memoryview, threads: int, options: dict[str, str],
               providers: list[str] | None) -> Any:
    from edgeship.core.session import open_session

    return open_session(model, threads, providers=providers)


ENGINE = register_engine(Engine(
    name="onnxruntime", label="ORT", package="onnxruntime", extra="onnxruntime", suffix=".onnx", member="model.onnx",
    opener="edgeship.engines.ort:open_model", build_packages=("onnx",),
))
