"""A .tflite graph read straight from its flatbuffer (TFLM's own Python schema, no interpreter):
each op with its tensors, the MACs of the ops that multiply, and the activations live at each op.

The live set is what the fit report needs to say *which layer holds the memory peak*: a
non-constant tensor lives from the op that writes it (or the start, for an input) to the last op
that reads it (or the end, for an output), each rounded up to TFLM's 16-byte alignment. The
largest live set is a lower bound on the arena's non-persistent part; the exact arena is measured
(:func:`edgeship.engines.tflm.session.exact_arena`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.core.errors import InvalidModelError

__all__ = ["TensorInfo", "OpInfo", "Graph", "read_graph"]

_ALIGNMENT = 16
#: bytes per element of TFLite's TensorType values (tensorflow/lite/schema/schema.fbs)
_TYPE_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
               "INT8": 1, "FLOAT64": 8, "UINT64": 8, "UINT32": 4, "UINT16": 2, "COMPLEX64": 8, "BFLOAT16": 2}
MAX_OPS = 100_000  # more than any microcontroller model has; a larger count is a damaged file


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str  # TFLite's TensorType name: INT8, FLOAT32, ...
    shape: tuple[int, ...]
    constant: bool  # its data is in the flatbuffer (weights, biases): flash, not the arena
    dynamic: bool = False  # a dim is -1 in its shape signature (sized at run time)

    @property
    def nbytes(self) -> int:
        count = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return count * _TYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class OpInfo:
    index: int
    op: str  # builtin name: CONV_2D, FULLY_CONNECTED, ...
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    macs: int  # multiply-accumulates of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ...; 0 for the rest
    fused_activation: str = "NONE"  # of pools and concatenations (RELU, RELU6, ...), from their options


@dataclass(frozen=True)
class Graph:
    tensors: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def constant_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.constant)

    def live_bytes(self) -> list[tuple[int, list[int]]]:
        """For each op: (bytes of activations alive while it runs, 16-byte aligned; their tensor indexes)."""
        n = len(self.ops)
        first: dict[int, int] = {i: 0 for i in self.inputs}
        last: dict[int, int] = {i: n - 1 for i in self.outputs}
        for op in self.ops:
            for t in op.outputs:
                first.setdefault(t, op.index)
            for t in op.inputs:
                if t >= 0 and not self.tensors[t].constant:
                    last[t] = max(last.get(t, op.index), op.index)
        live = []
        for op in self.ops:
            alive = [t for t in first if first[t] <= op.index <= last.get(t, first[t])]
            live.append((sum(_aligned(self.tensors[t].nbytes) for t in alive), sorted(alive)))
        return live

    def peak(self) -> dict[str, Any]:
        """The op at which the most activation bytes are alive, and what they are."""
        live = self.live_bytes()
        if not live:
            return {"op_index": None, "op": None, "live_bytes": 0, "tensors": []}
        index = max(range(len(live)), key=lambda i: live[i][0])
        size, alive = live[index]
        return {"op_index": index, "op": self.ops[index].op, "live_bytes": size,
                "tensors": [{"name": self.tensors[t].name, "shape": list(self.tensors[t].shape),
                             "dtype": self.tensors[t].dtype, "bytes": self.tensors[t].nbytes} for t in alive]}


def _aligned(size: int) -> int:
    return -(-size // _ALIGNMENT) * _ALIGNMENT


def _macs(op: str, tensors: list[TensorInfo], inputs: list[int], outputs: list[int]) -> int:
    """Multiply-accumulates of one op, from its weight and output shapes (TFLite's NHWC layouts)."""
    if not outputs or len(inputs) < 2 or inputs[1] < 0:
        return 0
    out = int(np.prod(tensors[outputs[0]].shape, dtype=np.int64))
    weight = tensors[inputs[1]].shape
    if op == "CONV_2D" and len(weight) == 4:  # filter [out_ch, kh, kw, in_ch]
        return out * weight[1] * weight[2] * weight[3]
    if op == "DEPTHWISE_CONV_2D" and len(weight) == 4:  # filter [1, kh, kw, out_ch]
        return out * weight[1] * weight[2]
    if op == "FULLY_CONNECTED" and len(weight) == 2:  # weights [out, in]
        return out * weight[1]
    if op == "TRANSPOSE_CONV" and len(inputs) > 2 and len(weight) >= 3:  # inputs: shape, filter, input
        filt, source = tensors[inputs[1]].shape, tensors[inputs[2]].shape
        return int(np.prod(source, dtype=np.int64)) * filt[0] * filt[1] * filt[2] if len(filt) == 4 else 0
    if op == "BATCH_MATMUL":
        a = tensors[inputs[0]].shape
        return out * a[-1] if a else 0
    return 0


_OPTIONS = {"AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions", "L2_POOL_2D": "Pool2DOptions",
            "CONCATENATION": "ConcatenationOptions"}


def _fused_activation(schema: Any, operator: Any, op: str, names: dict[int, str]) -> str:
    """The activation fused into a pool or concatenation (the Edge TPU maps them only without one)."""
    kind = _OPTIONS.get(op)
    table = operator.BuiltinOptions() if kind else None
    if table is None:
        return "NONE"
    options = getattr(schema, kind)()
    options.Init(table.Bytes, table.Pos)
    return names.get(options.FusedActivationFunction(), "UNKNOWN")


def read_graph(data: bytes) -> Graph:
    """The first subgraph of a .tflite flatbuffer; a damaged file raises InvalidModelError."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    except ImportError:
        from edgeship.core.errors import ConfigError

        raise ConfigError("reading a .tflite graph needs TFLite Micro's schema: pip install 'edgeship[tflm]'.") from None
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    activations = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
        graph = model.Subgraphs(0)
        if graph.OperatorsLength() > MAX_OPS or graph.TensorsLength() > 10 * MAX_OPS:
            raise ValueError("too many ops")
        buffers = model.BuffersLength()
        tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            b = t.Buffer()
            buffer = model.Buffers(b) if 0 <= b < buffers else None
            constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            dynamic = bool(t.ShapeSignatureLength()) and bool((t.ShapeSignatureAsNumpy() < 0).any())
            tensors.append(TensorInfo(i, (t.Name() or b"").decode("utf-8", "replace"), types.get(t.Type(), "UNKNOWN"),
                                      shape, constant, dynamic))
        ops = []
        for i in range(graph.OperatorsLength()):
            o = graph.Operators(i)
            code = model.OperatorCodes(o.OpcodeIndex())
            op = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), f"CUSTOM({code.CustomCode()})")
            ins = [int(x) for x in o.InputsAsNumpy()] if o.InputsLength() else []
            outs = [int(x) for x in o.OutputsAsNumpy()] if o.OutputsLength() else []
            if any(x >= len(tensors) for x in [*ins, *outs]):
                raise ValueError("tensor index out of range")
            ops.append(OpInfo(i, op, tuple(ins), tuple(outs), _macs(op, tensors, ins, outs),
                              _fused_activation(schema, o, op, activations)))
        inputs = tuple(int(x) for x in graph.InputsAsNumpy()) if graph.InputsLength() else ()
        outputs = tuple(int(x) for x in graph.OutputsAsNumpy()) if graph.OutputsLength() else ()
        if any(not 0 <= x < len(tensors) for x in [*inputs, *outputs]):
            raise ValueError("graph input or output out of range")
    except InvalidModelError:
        raise
    except Exception as exc:  # flatbuffers raises struct/index errors on a damaged file
        raise InvalidModelError(f"not a readable .tflite flatbuffer ({type(exc).__name__}).") from None
    return Graph(tuple(tensors), tuple(ops), inputs, outputs)
