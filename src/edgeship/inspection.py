"""``edgeship inspect``: what a model takes and returns, and what it costs."""

from __future__ import annotations

from typing import Any

from edgeship.model import Model

__all__ = ["inspect_model"]


def inspect_model(model: Any, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Inputs, outputs, opsets, op histogram, params, MACs (per sample, batch 1) and size."""
    import onnx

    from edgeship._graph import op_histogram, opsets
    from edgeship.importers import load

    model = load(model) if not isinstance(model, Model) else model
    proto = onnx.load(str(model.path), load_external_data=False)
    stats = model.stats(shapes or {})
    return {
        "source": model.source,
        "path": str(model.path),
        "inputs": [s.to_dict() for s in model.inputs],
        "outputs": [s.to_dict() for s in model.outputs],
        "opset": opsets(proto),
        "ops": op_histogram(proto),
        "params": stats["params"],
        "macs": stats["macs"],
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
    }
