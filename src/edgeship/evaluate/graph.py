"""Static facts about an ONNX graph: op histogram, params and MACs per sample.

MACs are counted at batch 1 from inferred shapes. Dynamic dims other than the batch take
the sizes given in ``shapes`` (the data's, or ``--shape``); a dim left unsized, or an op whose
cost cannot be counted, makes the count unknown (None), never 0.
Quantized graphs are understood: QDQ weights (DequantizeLinear on an initializer),
ConvInteger/QLinearConv, MatMulInteger/QLinearMatMul/DynamicQuantizeMatMul and
MatMulNBits count the same MACs as the float op they replace.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["graph_stats", "op_histogram", "opsets", "weight_sparsity", "infer_shapes_and_types", "node_macs",
           "SizedGraph", "sized_graph"]

# Positional inputs that carry quantization parameters rather than weights.
_QPARAM_INPUTS = {
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7},
    "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "MatMulInteger": {2, 3},
    "ConvInteger": {2, 3},
    "DynamicQuantizeMatMul": {2, 3},
    "MatMulNBits": {2, 3, 4},
}
_MATMULS = {"MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul"}
_CONVS = {"Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose"}


def _load(path: Path | str) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=True)


def op_histogram(proto: Any) -> dict[str, int]:
    return dict(Counter(n.op_type for n in proto.graph.node).most_common())


def opsets(proto: Any) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}


def unset_dims(proto: Any, shapes: dict[str, tuple[int, ...]] | None) -> list[str]:
    """Dynamic input dims other than the batch axis that ``shapes`` does not size, as ``name[axis]``."""
    initializers = {i.name for i in proto.graph.initializer}
    unset = []
    for inp in proto.graph.input:
        if inp.name in initializers:
            continue
        given = (shapes or {}).get(inp.name)
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if axis and not (dim.HasField("dim_value") and dim.dim_value > 0) and (given is None or axis >= len(given)):
                unset.append(f"{inp.name}[{axis}]")
    return unset


@dataclass(frozen=True)
class SizedGraph:
    """A model with every input dim concrete, and the shape and type of every value in it."""

    proto: Any
    shapes: dict[str, tuple[int, ...]]
    types: dict[str, int]


def sized_graph(proto: Any, shapes: dict[str, tuple[int, ...]] | None, purpose: str) -> SizedGraph:
    """``proto`` at ``shapes``, shapes inferred once; a dynamic dim left unsized is refused with the
    way to size it (``purpose`` says what the sizes are for, e.g. "an estimate")."""
    unset = unset_dims(proto, shapes)
    if unset:
        raise ConfigError(f"the model's dynamic dim(s) {', '.join(unset)} need a size for {purpose}: give "
                          "--shape NAME=D1xD2x... (e.g. input_ids=1x64).")
    fixed = _fix_input_dims(proto, shapes)
    value_shapes, types = infer_shapes_and_types(fixed)
    return SizedGraph(fixed, value_shapes, types)


def _fix_input_dims(proto: Any, shapes: dict[str, tuple[int, ...]] | None) -> Any:
    """Copy of ``proto`` with every input dim concrete: from ``shapes`` where given, else 1 (the batch
    axis per sample; :func:`unset_dims` names the other axes that fell back to 1)."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    initializers = {i.name for i in fixed.graph.initializer}
    for inp in fixed.graph.input:
        if inp.name in initializers:
            continue
        given = (shapes or {}).get(inp.name)
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            value = int(given[axis]) if given is not None and axis < len(given) else 1
            dim.Clear()
            dim.dim_value = value
    return fixed


def _infer_shapes(proto: Any) -> dict[str, tuple[int, ...]]:
    """Value name -> concrete shape, using ORT's symbolic inference (knows contrib ops)."""
    return infer_shapes_and_types(proto)[0]


_PROFILE_TYPES = {"float": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "double": 11}


def runtime_shapes(proto: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Shapes and types of every node output, read from an ONNX Runtime profile of one run.

    The fallback for graphs static inference cannot type (newer contrib ops, opset changes):
    optimizations are off, so the profiled nodes are the graph's own.
    """
    import json
    import os
    import tempfile

    import onnx

    from edgeship.core.session import Optimization, open_session

    named = onnx.ModelProto()
    named.CopyFrom(proto)
    for i, node in enumerate(named.graph.node):
        node.name = f"edgeship_n{i}"
    feeds = {}
    inits = {i.name for i in named.graph.initializer}
    for inp in named.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = np.ones(dims, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        session = open_session(named.SerializeToString(), threads=1, optimization=Optimization.NONE,
                               profile_prefix=os.path.join(tmp, "shapes"))
        session.run(None, feeds)
        events = json.load(open(session.end_profiling()))
    outputs = {n.name: list(n.output) for n in named.graph.node}
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    for event in events:
        name = event.get("name", "").removesuffix("_kernel_time")
        if event.get("cat") != "Node" or name not in outputs:
            continue
        for tensor, entry in zip(outputs[name], event.get("args", {}).get("output_type_shape", [])):
            (type_name, dims), = entry.items()
            shapes[tensor] = tuple(int(d) for d in dims)
            types[tensor] = _PROFILE_TYPES.get(type_name, 1)
    return shapes, types


def infer_shapes_and_types(proto: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """(value name -> concrete shape, value name -> ONNX element type).

    Static inference first; where it leaves the output of any node unknown, the shapes of
    one real run (see :func:`runtime_shapes`) fill the gaps.
    """
    shapes, types = _static_shapes_and_types(proto)
    produced = [o for n in proto.graph.node for o in n.output if o]
    if any(o not in shapes for o in produced):
        try:
            run_shapes, run_types = runtime_shapes(proto)
            shapes = {**run_shapes, **shapes}
            types = {**run_types, **types}
        except Exception as exc:  # the model cannot run here: keep what static inference found
            log.info("shapes of one run unavailable (%s: %s); static inference only", type(exc).__name__, exc)
    return shapes, types


def _static_shapes_and_types(proto: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    import onnx

    inferred = None
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
    except Exception as exc:  # fall back to ONNX's own inference for graphs ORT's tool rejects
        log.debug("ONNX Runtime's symbolic shape inference failed (%s); using ONNX's", exc)
        inferred = None
    if inferred is None:
        inferred = onnx.shape_inference.infer_shapes(proto)
    out: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
        types[init.name] = init.data_type
    return out, types


def _weight_shape(name: str, shapes: dict[str, tuple[int, ...]], producers: dict[str, Any]) -> tuple[int, ...] | None:
    """Shape of a weight, seeing through DequantizeLinear/Transpose/Cast of an initializer."""
    if name in shapes:
        return shapes[name]
    node = producers.get(name)
    if node is not None and node.op_type in {"DequantizeLinear", "Cast", "Identity"}:
        return _weight_shape(node.input[0], shapes, producers)
    return None


#: ops whose cost edgeship cannot count (control flow with subgraphs, ops not modelled): unknown, never 0
_UNCOUNTED = {"Loop", "Scan", "If", "Einsum", "TreeEnsemble", "SVMRegressor"}
_RNNS = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gates per cell
_TREES = {"TreeEnsembleClassifier", "TreeEnsembleRegressor"}


def _tree_depth_sum(attrs: dict[str, Any]) -> int:
    """Sum over trees of the deepest root-to-leaf path: the comparisons one sample can take."""
    ids = zip(attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints, attrs["nodes_truenodeids"].ints,
              attrs["nodes_falsenodeids"].ints, attrs["nodes_modes"].strings)
    children: dict[tuple[int, int], tuple[int, int]] = {}
    roots: dict[int, int] = {}
    for tree, node, true_id, false_id, mode in ids:
        roots.setdefault(tree, node)
        if mode != b"LEAF":
            children[(tree, node)] = (true_id, false_id)
    total = 0
    for tree, root in roots.items():
        depth, frontier = 0, [root]
        while frontier and depth <= len(children):  # bounded: a malformed cycle cannot loop for ever
            frontier = [c for n in frontier if (tree, n) in children for c in children[(tree, n)]]
            depth += bool(frontier)
        total += depth
    return total


def node_macs(node: Any, shapes: dict[str, tuple[int, ...]], producers: dict[str, Any]) -> int | None:
    """Multiply-accumulates of one node at the given shapes; None when it costs something that
    cannot be counted here (shapes unknown, control flow, an op not modelled). Elementwise ops are 0.

    Recurrent cells count their gate GEMMs per time step; tree ensembles count one comparison per
    level of each tree's deepest path; linear and SVM classifiers their coefficients."""
    op = node.op_type
    out_shape = shapes.get(node.output[0]) if node.output else None
    attrs = {a.name: a for a in node.attribute}
    if op in _UNCOUNTED:
        return None
    if op in _CONVS:
        w_index = 3 if op == "QLinearConv" else 1
        w = _weight_shape(node.input[w_index], shapes, producers)
        if w is None or out_shape is None:
            return None
        # weight [Cout, Cin/group, *k]: every output element costs Cin/group * prod(k) MACs.
        per_output = int(np.prod(w[1:]))
        return int(np.prod(out_shape)) * per_output
    if op in _MATMULS or op == "Gemm":
        a = shapes.get(node.input[0])
        if a is None or out_shape is None:
            return None
        k = a[-1] if not (op == "Gemm" and attrs.get("transA") and attrs["transA"].i) else a[0]
        return int(np.prod(out_shape)) * int(k)
    if op == "MatMulNBits":
        return int(np.prod(out_shape)) * int(attrs["K"].i) if out_shape else None
    if op in ("Attention", "QAttention"):  # com.microsoft fused attention: QKV projection + scores + context
        x = shapes.get(node.input[0])
        w = _weight_shape(node.input[1], shapes, producers)
        if x is None or w is None:
            return None
        batch, seq, hidden = x
        proj = batch * seq * w[0] * w[1]
        return int(proj + 2 * batch * seq * seq * hidden)
    if op in _RNNS:
        x = shapes.get(node.input[0])
        w = _weight_shape(node.input[1], shapes, producers)
        r = _weight_shape(node.input[2], shapes, producers)
        if x is None or w is None or r is None:
            return None
        steps, batch = (x[1], x[0]) if attrs.get("layout") and attrs["layout"].i else (x[0], x[1])
        directions, gate_rows, inputs = w
        return int(steps * batch * directions * gate_rows * (inputs + r[2]))
    if op in _TREES:
        x = shapes.get(node.input[0])
        return None if x is None else int(x[0]) * _tree_depth_sum(attrs)
    if op in ("LinearClassifier", "LinearRegressor", "SVMClassifier"):
        x = shapes.get(node.input[0])
        if x is None:
            return None
        coefficients = len(attrs["coefficients"].floats) if "coefficients" in attrs else 0
        vectors = len(attrs["support_vectors"].floats) if "support_vectors" in attrs else 0
        return int(x[0]) * (coefficients + vectors)
    return 0


def _param_count(proto: Any) -> int:
    qparams: set[str] = set()
    nbits = 0
    consumers_of_nbits: set[str] = set()
    for node in proto.graph.node:
        for idx in _QPARAM_INPUTS.get(node.op_type, ()):
            if idx < len(node.input):
                qparams.add(node.input[idx])
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            nbits += attrs["K"] * attrs["N"]
            consumers_of_nbits.add(node.input[1])
    total = nbits
    for init in proto.graph.initializer:
        if init.name in qparams or init.name in consumers_of_nbits:
            continue
        if len(init.dims) == 0:  # scalars are constants, not parameters
            continue
        total += int(np.prod(init.dims))
    return total


def graph_stats(path: Path | str, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Params and MACs of the model at ``path``, per sample at batch 1, at ``shapes``.

    Returns ``{"params", "macs", "macs_unknown"}``: ``macs`` is None when any part cannot be
    counted (a dynamic dim that ``shapes`` does not size, an op whose cost is unknown), and
    ``macs_unknown`` says why; a count is never a silent 0.
    """
    key = tuple(sorted((k, tuple(int(d) for d in v)) for k, v in (shapes or {}).items()))
    stats = _graph_stats_cached(str(Path(path).resolve()), key)
    return {**stats, "macs_unknown": list(stats["macs_unknown"])}


@lru_cache(maxsize=64)
def _graph_stats_cached(path: str, shape_key: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, Any]:
    shapes = dict(shape_key)
    proto = _load(path)
    unknown = [f"dynamic dim {d} has no size (give --shape, or data)" for d in unset_dims(proto, shapes)]
    fixed = _fix_input_dims(proto, shapes)
    value_shapes = _infer_shapes(fixed)
    producers = {o: n for n in fixed.graph.node for o in n.output}
    total = 0
    uncounted: Counter[str] = Counter()
    for node in fixed.graph.node:
        macs = node_macs(node, value_shapes, producers)
        if macs is None:
            uncounted[node.op_type] += 1
        else:
            total += macs
    unknown += [f"{count} {op} node(s) whose cost cannot be counted" for op, count in uncounted.items()]
    return {"params": _param_count(proto), "macs": None if unknown else int(total), "macs_unknown": tuple(unknown)}


def weight_sparsity(path: Path | str) -> float:
    """Fraction of exact zeros over weight tensors (initializers with >= 2 dims, not
    quantization parameters); int8 weights count their stored zeros."""
    from onnx import numpy_helper

    proto = _load(path)
    qparams = {
        node.input[i]
        for node in proto.graph.node
        for i in _QPARAM_INPUTS.get(node.op_type, ())
        if i < len(node.input)
    }
    zeros = total = 0
    for init in proto.graph.initializer:
        if len(init.dims) < 2 or init.name in qparams:
            continue
        array = numpy_helper.to_array(init)
        if array.dtype.kind not in "fiu":
            continue
        zeros += int(np.count_nonzero(array == 0))
        total += array.size
    return zeros / total if total else 0.0
