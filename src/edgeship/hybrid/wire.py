"""The cut tensor on the wire: float32 as is, float16, or int8 with one symmetric scale per tensor.

An int8 tensor travels as its int8 values plus its float32 scale (``value = q * scale``); the
bytes a plan counts are the values' (the scale is 4 bytes per tensor). The tail model takes what
travels: :func:`adapt_tail` gives it a float16 or int8 input (and an int8 tensor's scale as a
second input) that it casts back to float32, so any Open Inference Protocol server runs it."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError

__all__ = ["WIRE_BYTES", "encode", "decode", "check_wire", "wire_inputs", "adapt_tail"]

#: bytes per value on the wire
WIRE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


def check_wire(wire: str) -> str:
    if wire not in WIRE_BYTES:
        raise ConfigError(f"unknown wire encoding {wire!r}; choose from {sorted(WIRE_BYTES)}.")
    return wire


def encode(tensor: np.ndarray, wire: str) -> tuple[np.ndarray, float]:
    """(the values to send, the int8 scale, or 1.0 for the float encodings)."""
    check_wire(wire)
    tensor = np.asarray(tensor, dtype=np.float32)
    if wire == "fp32":
        return tensor, 1.0
    if wire == "fp16":
        return tensor.astype(np.float16), 1.0
    peak = float(np.max(np.abs(tensor))) if tensor.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.rint(tensor / scale), -127, 127).astype(np.int8), scale


def decode(values: np.ndarray, scale: float) -> np.ndarray:
    """float32 values back from what :func:`encode` sent."""
    return np.asarray(values).astype(np.float32) * np.float32(scale)


def wire_inputs(tensors: dict[str, np.ndarray], wire: str) -> dict[str, np.ndarray]:
    """The tail's inputs for the cut tensors: ``NAME`` (fp32), or ``NAME.wire`` in fp16 or int8 plus
    ``NAME.scale`` (int8), as :func:`adapt_tail` names them."""
    out = {}
    for name, tensor in tensors.items():
        values, scale = encode(tensor, wire)
        out[name if wire == "fp32" else name + ".wire"] = values
        if wire == "int8":
            out[name + ".scale"] = np.array([scale], dtype=np.float32)
    return out


def adapt_tail(proto: Any, wire: str) -> Any:
    """The tail graph taking its inputs as they travel: each float input becomes fp16 or int8 (and,
    for int8, ``NAME.scale``), cast back to the float32 tensor the graph reads."""
    from onnx import TensorProto, helper

    check_wire(wire)
    if wire == "fp32":
        return proto
    graph = proto.graph
    nodes, inputs = [], []
    for value in graph.input:
        name = value.name
        shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        wire_type = TensorProto.FLOAT16 if wire == "fp16" else TensorProto.INT8
        inputs.append(helper.make_tensor_value_info(name + ".wire", wire_type, shape))
        if wire == "fp16":
            nodes.append(helper.make_node("Cast", [name + ".wire"], [name], to=TensorProto.FLOAT))
        else:
            inputs.append(helper.make_tensor_value_info(name + ".scale", TensorProto.FLOAT, [1]))
            nodes.append(helper.make_node("Cast", [name + ".wire"], [name + ".float"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Mul", [name + ".float", name + ".scale"], [name]))
    del graph.input[:]
    graph.input.extend(inputs)
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return proto
