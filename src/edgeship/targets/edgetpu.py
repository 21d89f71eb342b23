"""Will a .tflite model run on a Coral Edge TPU? The documented rules, checked op by op.

The Edge TPU compiler (``edgetpu_compiler``) cannot be installed here: Coral ships it only as a
Debian package from its own apt repository, for x86-64, and it is on neither PyPI nor Debian's
archive. So this check applies the rules Coral documents for it (``SOURCE``), and the compiler's
own log is the final word:

- the model is fully 8-bit quantized (int8 or uint8 tensors; int32 biases and shape operands);
- every tensor's size is fixed at compile time (no dynamic dims);
- a tensor has at most 3 dims larger than 1, the innermost three;
- each op is one the Edge TPU supports, within its documented limits (``SUPPORTED``);
- the compiler partitions the graph once: from the first op it cannot map, that op *and every op
  after it* run on the CPU, even ops the Edge TPU supports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["edgetpu_check", "SUPPORTED", "SOURCE", "COMPILER_NOTE"]

SOURCE = "https://coral.ai/docs/edgetpu/models-intro/ (Model requirements; Supported operations)"
COMPILER_NOTE = ("the Edge TPU compiler is not installed (it ships only from Coral's apt repository, for x86-64, "
                 "not PyPI or Debian): this is the documented rule set; the compiler's log is the final word")

#: TFLite builtin op -> the limit Coral documents for it ("" where none)
SUPPORTED = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation function", "CONCATENATION": "no fused activation function",
    "CONV_2D": "", "DEPTHWISE_CONV_2D": "", "EXPAND_DIMS": "", "FULLY_CONNECTED": "default weights format only",
    "L2_NORMALIZATION": "", "LOGISTIC": "", "UNIDIRECTIONAL_SEQUENCE_LSTM": "", "LSTM": "unidirectional only",
    "MAXIMUM": "", "MAX_POOL_2D": "no fused activation function", "MEAN": "reduces along x and/or y only",
    "MINIMUM": "", "MUL": "", "PACK": "not along the batch dimension", "PAD": "pads along x and/or y only",
    "PRELU": "alpha is a constant", "QUANTIZE": "", "REDUCE_MAX": "", "REDUCE_MIN": "", "RELU": "", "RELU6": "",
    "RELU_N1_TO_1": "", "RESHAPE": "", "RESIZE_BILINEAR": "input/output is 3-D", "RESIZE_NEAREST_NEIGHBOR":
    "input/output is 3-D", "RSQRT": "", "SLICE": "", "SOFTMAX": "1-D input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "", "SPLIT": "not along the batch dimension", "SQUEEZE": "", "STRIDED_SLICE": "", "SUB": "",
    "SUM": "", "SQUARED_DIFFERENCE": "", "TANH": "", "TRANSPOSE": "", "TRANSPOSE_CONV": "",
}
_INT8 = {"INT8", "UINT8"}
_NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_SOFTMAX_MAX = 16_000


def _op_problem(graph: Any, op: Any) -> str:
    """Why the Edge TPU cannot run ``op`` ("" if it can)."""
    if op.op not in SUPPORTED:
        return f"{op.op} is not an Edge TPU op"
    tensors = [graph.tensors[t] for t in [*op.inputs, *op.outputs] if t >= 0]
    for t in tensors:
        if t.dtype not in _INT8 and not (t.dtype == "INT32" and (t.constant or op.op in ("RESHAPE", "QUANTIZE"))):
            return f"tensor #{t.index} {list(t.shape)} is {t.dtype.lower()}, not 8-bit"
        if t.dynamic:
            return f"tensor #{t.index} {list(t.shape)} has a dynamic shape"
        if not t.constant and sum(d > 1 for d in t.shape[:-3]) > 0:
            return f"tensor #{t.index} {list(t.shape)} has dims larger than 1 outside the innermost 3"
    if op.op in _NO_FUSED_ACTIVATION and op.fused_activation != "NONE":
        return f"{op.op} has a fused {op.fused_activation}"
    if op.op == "SOFTMAX":
        shape = graph.tensors[op.inputs[0]].shape
        if sum(d > 1 for d in shape) > 1 or (shape and int(max(shape)) > _SOFTMAX_MAX):
            return f"SOFTMAX input {list(shape)} is not 1-D within {_SOFTMAX_MAX:,} elements"
    return ""


def edgetpu_check(model: Path | str | Any) -> dict[str, Any]:
    """Which ops would the Edge TPU run, which would fall back to the CPU, and why. ``model``: a
    .tflite file, or a graph already read (:class:`edgeship.engines.tflm.graph.Graph`)."""
    from edgeship.engines.tflm.graph import Graph, read_graph

    graph = model if isinstance(model, Graph) else read_graph(Path(model).read_bytes())
    rows, first_cpu = [], None
    for op in graph.ops:
        problem = _op_problem(graph, op)
        if first_cpu is None and problem:
            first_cpu = op.index
        on_tpu = first_cpu is None
        why = problem or ("" if on_tpu else f"after op {first_cpu}: the compiler partitions once, so everything "
                                             "from the first unmapped op runs on the CPU")
        rows.append({"index": op.index, "op": op.op, "device": "edgetpu" if on_tpu else "cpu", "why": why,
                     "documented_limit": SUPPORTED.get(op.op, "")})
    on_tpu = sum(r["device"] == "edgetpu" for r in rows)
    macs_tpu = sum(op.macs for op, r in zip(graph.ops, rows) if r["device"] == "edgetpu")
    return {
        "target": "edgetpu",
        "ops": rows,
        "on_edgetpu": on_tpu,
        "on_cpu": len(rows) - on_tpu,
        "macs_on_edgetpu_share": (macs_tpu / graph.macs) if graph.macs else None,
        "fully_mapped": on_tpu == len(rows),
        "first_cpu_op": first_cpu,
        "source": SOURCE,
        "compiler": COMPILER_NOTE,
    }
