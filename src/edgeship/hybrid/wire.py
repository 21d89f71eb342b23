"""The tail graph takes the cut tensor as it travels (the encodings: :mod:`edgeship.core.wire`)."""

from __future__ import annotations

from typing import Any

from edgeship.core.wire import SCALE_SUFFIX, WIRE_SUFFIX, check_wire

__all__ = ["adapt_tail"]


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
        inputs.append(helper.make_tensor_value_info(name + WIRE_SUFFIX, wire_type, shape))
        if wire == "fp16":
            nodes.append(helper.make_node("Cast", [name + WIRE_SUFFIX], [name], to=TensorProto.FLOAT))
        else:
            inputs.append(helper.make_tensor_value_info(name + SCALE_SUFFIX, TensorProto.FLOAT, [1]))
            nodes.append(helper.make_node("Cast", [name + WIRE_SUFFIX], [name + ".float"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Mul", [name + ".float", name + SCALE_SUFFIX], [name]))
    del graph.input[:]
    graph.input.extend(inputs)
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return proto
