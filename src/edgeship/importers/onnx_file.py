"""Import an ONNX file: check it with the ONNX checker, refuse unsafe external-data paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeship.errors import InvalidModelError
from edgeship.model import Model

__all__ = ["load_onnx", "check_external_data"]


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph stores: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(proto: Any, model_dir: Path) -> None:
    """Refuse external-data locations that are absolute or escape the model's folder."""
    root = model_dir.resolve()
    for tensor in _tensors(proto.graph):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(root):
            raise InvalidModelError(
                f"tensor {tensor.name!r} points its external data at {location!r}, outside the "
                f"model's folder {str(root)!r}; move the data file next to the model and use a relative path."
            )
        if not target.is_file():
            raise InvalidModelError(
                f"tensor {tensor.name!r} needs external data file {location!r}, which is missing "
                f"from {str(root)!r}; copy it next to the model."
            )


def load_onnx(path: Path | str) -> Model:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"model file not found: {str(path)!r}; check the path.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidModelError(
            f"{str(path)!r} is not an ONNX model ({type(exc).__name__}); give a .onnx file "
            "exported with torch.onnx.export or a converter."
        ) from None
    if not proto.graph.node:
        raise InvalidModelError(f"{str(path)!r} has no graph nodes; it is not a usable ONNX model.")
    check_external_data(proto, path.parent)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{str(path)!r} fails the ONNX checker: {first}") from None
    model = Model(path=path.resolve(), source=str(path), kind="onnx")
    try:
        model.inputs  # noqa: B018 - opening a session proves ONNX Runtime can load it
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise InvalidModelError(f"ONNX Runtime cannot load {str(path)!r}: {first}") from None
    return model
