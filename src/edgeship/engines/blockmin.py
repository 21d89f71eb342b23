"""Int4 weights that keep a GGUF Q4_1 model's own blocks: "block-min" quantization for ONNX Runtime.

Q4_1 stores each block of 32 weights as ``w = d * q + m`` (q in 0..15, m the block's minimum). A
model imported from such a file has exactly these values as its float weights, so re-quantizing
them to a different 4-bit grid (ONNX Runtime GenAI's default, symmetric) compounds two rounding
errors: +26% perplexity on SmolLM2-135M. This pass quantizes each block the Q4_1 way instead
(scale ``(max - min) / 15``, offset the block minimum) and so reproduces those weights.

ONNX Runtime's ``MatMulNBits`` takes the offset as a zero point ``-m / d``. As a float it is exact
but runs on a slow path (6 tok/s against 126 measured here); as a 4-bit integer it is fast but
rounds the offset (perplexity +28%). So the zero point is stored rounded, and the remainder
``E = d * (round(zp) - zp)`` (one float per block) is added back exactly through the block sums of
the input: ``x @ W = x @ W_int + blocksum(x) @ E``. The extra MatMul is 1/32 of the main one.

The embedding and a tied output layer become 8-bit symmetric blocks of 32 (the grid of GGUF's Q8_0,
in which llama.cpp keeps them), shared between ``MatMulNBits`` and ``GatherBlockQuantized``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeship.core.errors import InvalidModelError

__all__ = ["blockmin_int4", "BLOCK"]

BLOCK = 32
_MS = "com.microsoft"
#: MatMulNBits' int8 activations: 99 tok/s decode against 11 with fp32 activations (level 1, which
#: reproduces the float model's perplexity exactly: 27.664 against 27.880) on SmolLM2 here. llama.cpp
#: quantizes activations too (Q8_1), and its greedy answers match this level's.
ACCURACY = 4


def _blocks(w: np.ndarray) -> np.ndarray:
    """[K, N] weight -> [N, K/32, 32] blocks along the input axis (MatMulNBits' layout)."""
    k, n = w.shape
    return np.ascontiguousarray(w.T.reshape(n, k // BLOCK, BLOCK), dtype=np.float32)


def quantize_blockmin(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Packed 4-bit codes [N, K/32, 16], scales [N*K/32], packed zero points, and the offsets
    E [K/32, N] that the rounded zero points leave out."""
    blocks = _blocks(w)
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    scale = (hi - lo) / 15
    scale[scale == 0] = 1.0  # a constant block: every code 0, offset = the constant
    q = np.clip(np.rint((blocks - lo) / scale), 0, 15).astype(np.uint8)
    zp = (-lo / scale)[..., 0]
    zp_int = np.clip(np.rint(zp), 0, 15).astype(np.uint8)
    offsets = (scale[..., 0] * (zp_int - zp)).T  # exact: d * (q - round(zp)) + E == d * q + m
    n, nb = zp_int.shape
    if nb % 2:
        zp_int = np.concatenate([zp_int, np.zeros((n, 1), np.uint8)], axis=1)
    packed_zp = (zp_int[:, 0::2] | (zp_int[:, 1::2] << 4)).reshape(-1)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return packed, scale.reshape(-1), packed_zp, np.ascontiguousarray(offsets, dtype=np.float32)


def quantize_sym8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-bit symmetric blocks (codes stored +128, as MatMulNBits' uint8 with zero point 128)."""
    blocks = _blocks(w)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127
    scale[scale == 0] = 1.0
    q = (np.clip(np.rint(blocks / scale), -127, 127) + 128).astype(np.uint8)
    return q, scale[..., 0]


class _Rewriter:
    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        from onnx import numpy_helper

        self.model = model
        self.weights = {i.name: i for i in model.graph.initializer}
        self.to_array = numpy_helper.to_array
        self.from_array = numpy_helper.from_array
        self.added: list = []
        self.dropped: set[str] = set()
        self.sums: dict[str, str] = {}

    def const(self, array: np.ndarray, name: str) -> str:
        self.added.append(self.from_array(array, name))
        return name

    def weight(self, node) -> np.ndarray | None:  # type: ignore[no-untyped-def]
        init = self.weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is None or len(init.dims) != 2 or init.dims[0] % BLOCK:
            return None
        return self.to_array(init)

    def int4(self, node, w: np.ndarray) -> list:  # type: ignore[no-untyped-def]
        from onnx import helper

        k, n = w.shape
        packed, scale, zp, offsets = quantize_blockmin(w)
        base, x, y = node.input[1], node.input[0], node.output[0]
        nodes = []
        if x not in self.sums:  # one block sum per input, shared by every MatMul that reads it
            self.sums[x] = f"{x}/blocksum"
            shape = self.const(np.array([0, 0, k // BLOCK, BLOCK], np.int64), f"{x}/blocks_shape")
            axes = self.const(np.array([-1], np.int64), f"{x}/blocks_axes")
            nodes += [helper.make_node("Reshape", [x, shape], [f"{x}/blocks"], name=f"{x}/blocks"),
                      helper.make_node("ReduceSum", [f"{x}/blocks", axes], [self.sums[x]], name=self.sums[x],
                                       keepdims=0)]
        ins = [x, self.const(packed, f"{base}_Q4"), self.const(scale, f"{base}_scales"), self.const(zp, f"{base}_zp")]
        nodes += [
            helper.make_node("MatMulNBits", ins, [f"{y}/int4"], name=f"{node.name}_Q4", domain=_MS, K=k, N=n,
                             bits=4, block_size=BLOCK, accuracy_level=ACCURACY),
            helper.make_node("MatMul", [self.sums[x], self.const(offsets, f"{base}_offsets")], [f"{y}/offset"],
                             name=f"{node.name}_offset"),
            helper.make_node("Add", [f"{y}/int4", f"{y}/offset"], [y], name=f"{node.name}_add"),
        ]
        return nodes

    def gather8(self, node, table: np.ndarray):  # type: ignore[no-untyped-def]
        from onnx import helper

        v, h = table.shape
        q, scale = quantize_sym8(table.T)
        base = node.input[0]
        return helper.make_node(
            "GatherBlockQuantized", [self.const(q.reshape(v, h), f"{base}_Q8"), node.input[1],
                                     self.const(scale, f"{base}_scales"),
                                     self.const(np.full((v, h // BLOCK), 128, np.uint8), f"{base}_zp")],
            list(node.output), name=f"{node.name}_Q8", domain=_MS, gather_axis=0, quantize_axis=1, block_size=BLOCK,
            bits=8)

    def int8(self, node, w: np.ndarray) -> tuple[list, str, str]:  # type: ignore[no-untyped-def]
        from onnx import helper

        k, n = w.shape
        q, scale = quantize_sym8(w)
        base = node.input[1]
        codes, scales = self.const(q, f"{base}_Q8"), self.const(scale.reshape(-1), f"{base}_scales")
        mm = helper.make_node("MatMulNBits", [node.input[0], codes, scales], list(node.output), name=f"{node.name}_Q8",
                              domain=_MS, K=k, N=n, bits=8, block_size=BLOCK, accuracy_level=ACCURACY)
        return [mm], codes, scales


def blockmin_int4(fp32_folder: Path | str, out: Path | str) -> Path:
    """Rewrite an fp32 ONNX Runtime GenAI folder (``build_genai(..., "fp32")``) into block-min int4.

    Every MatMul with a constant [K, N] weight (K a multiple of 32) becomes int4 block-min; an output
    layer tied to the embedding (Gather of its Transpose, as the builder writes it) becomes 8-bit."""
    import onnx
    from onnx import helper

    src, out = Path(fp32_folder), Path(out)
    model = onnx.load(str(src / "model.onnx"))
    rw = _Rewriter(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    tied = {}  # weight name -> the Gather that reads its transpose
    for node in model.graph.node:
        feeder = producers.get(node.input[0]) if node.op_type == "Gather" else None
        if feeder is not None and feeder.op_type == "Transpose" and feeder.input[0] in rw.weights:
            tied[feeder.input[0]] = (node, feeder)
    nodes, skip, converted = [], {id(f) for _, f in tied.values()}, 0
    for node in model.graph.node:
        if id(node) in skip or (node.op_type == "Gather" and any(g is node for g, _ in tied.values())):
            continue
        table = rw.weights.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and len(table.dims) == 2 and table.dims[1] % BLOCK == 0:  # an untied embedding
            rw.dropped.add(node.input[0])
            nodes.append(rw.gather8(node, rw.to_array(table)))
            continue
        w = rw.weight(node)
        if w is None:
            nodes.append(node)
            continue
        rw.dropped.add(node.input[1])
        converted += 1
        if node.input[1] not in tied:
            nodes += rw.int4(node, w)
            continue
        mm, codes, scales = rw.int8(node, w)
        gather, _ = tied[node.input[1]]
        k, n = w.shape
        table, table_scales = f"{codes}/table", f"{scales}/table"
        nodes += mm + [
            helper.make_node("Reshape", [codes, rw.const(np.array([n, k], np.int64), f"{codes}/table_shape")], [table],
                             name=f"{gather.name}/table"),
            helper.make_node("Reshape", [scales, rw.const(np.array([n, k // BLOCK], np.int64), f"{scales}/shape")],
                             [table_scales], name=f"{gather.name}/scales"),
            helper.make_node("GatherBlockQuantized", [table, gather.input[1], table_scales,
                                                      rw.const(np.full((n, k // BLOCK), 128, np.uint8), f"{codes}/zp")],
                             list(gather.output), name=f"{gather.name}_Q8", domain=_MS, gather_axis=0, quantize_axis=1,
                             block_size=BLOCK, bits=8),
        ]
    if not converted:
        raise InvalidModelError(f"{str(src)!r} has no MatMul with a constant weight to quantize; give an fp32 build.")
    kept = [i for i in model.graph.initializer if i.name not in rw.dropped]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + rw.added)
    if not any(o.domain == _MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS, 1))
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, staging / f.name)
    onnx.save(model, str(staging / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=1024)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
