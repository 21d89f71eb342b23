"""LiteRT (TensorFlow Lite) on the device (``edgeship[litert]``: ai-edge-litert only).

:class:`LiteRTSession` opens a ``.tflite`` flatbuffer in LiteRT's interpreter (XNNPACK on the CPU)
and answers like an ONNX Runtime session (``run``, ``get_inputs``, ``get_outputs``), so every
measurement in edgeship treats it like the other engines. It speaks the ONNX model's I/O, so the
bundle's signature and the runtime's checks hold unchanged:

- inputs and outputs go by the ONNX names, which the converter gave the model's signature
  (LiteRT lists outputs by name, so each output's name starts with its position:
  :func:`output_key`; a .tflite from elsewhere has ``output_0``, ``output_1``, ...);
- integer inputs arrive as int64 and are narrowed to the model's int32, refused if a value does
  not fit;
- a full-integer model's int8 inputs are quantized with the model's own scale and zero point, and
  its int8 outputs dequantized;
- the model was converted at one shape; another batch size is tried by resizing the interpreter
  (one interpreter per shape), and where the graph has the shape baked in, rows run one at a time
  at the converted shape. So the session reports the first dim as symbolic (``batch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError, DataMismatchError, InvalidModelError
from edgeship.engines.base import SessionSpec

__all__ = ["LiteRTSession", "open_model", "SIGNATURE", "output_key", "Port"]

SIGNATURE = "serving_default"  # the signature litert-torch writes
MAX_SHAPES = 4  # interpreters kept for shapes other than the converted one

_TYPES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)",
          np.dtype(np.int64): "tensor(int64)", np.dtype(np.int32): "tensor(int32)", np.dtype(np.int8): "tensor(int8)",
          np.dtype(np.uint8): "tensor(uint8)", np.dtype(np.bool_): "tensor(bool)"}


def output_key(position: int, name: str) -> str:
    """An output's name in the .tflite signature: its position, then its ONNX name (``000_logits``)."""
    return f"{position:03d}_{name}"


def _output_order(key: str) -> tuple[int, str]:
    """(position, ONNX name) of a signature output: ``000_logits``, or ``output_0`` from elsewhere."""
    head, _, tail = key.partition("_")
    if head.isdigit() and len(head) == 3 and tail:
        return int(head), tail
    return int(key.rpartition("_")[2]) if key.rpartition("_")[2].isdigit() else 0, key


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ConfigError("this model runs on LiteRT: pip install 'edgeship[litert]'.") from None
    return Interpreter


class Port:
    """One input or output tensor of a .tflite model: its index and shape, its dtype, and a quantized
    one's scale and zero point (read once, so a run does no dictionary work). TFLite Micro's session
    uses it too (the same format, the same quantized I/O)."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.index, self.dtype = detail["index"], np.dtype(detail["dtype"])
        self.shape = tuple(int(d) for d in detail["shape"])
        scale, self.zero = detail["quantization"]
        self.quantized = bool(scale) and self.dtype.kind in "iu"
        self.scale = np.float32(scale)
        self.inverse = np.float32(1.0 / scale) if self.quantized else np.float32(1.0)
        self.limits = (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max) if self.dtype.kind in "iu" else (0, 0)

    @property
    def onnx_type(self) -> str:
        """The type the session takes or gives: float for a quantized port (it converts), else the model's."""
        return "tensor(float)" if self.quantized else _TYPES.get(self.dtype, "tensor(float)")

    def to_model(self, array: np.ndarray) -> np.ndarray:
        if array.dtype == self.dtype:
            return array
        low, high = self.limits
        if self.quantized:  # a full-integer model's input: quantized with the model's own scale and zero point
            q = np.rint(array * self.inverse)
            q += self.zero
            return np.clip(q, low, high, out=q).astype(self.dtype)
        if self.dtype.kind in "iu" and array.dtype.kind in "iu" and array.size and (
                array.min() < low or array.max() > high):
            raise DataMismatchError(f"an input holds {int(array.min())}..{int(array.max())}, beyond the {self.dtype} "
                                    "this LiteRT model takes.")
        return array.astype(self.dtype)

    def from_model(self, array: np.ndarray) -> np.ndarray:
        """``array`` is the interpreter's copy (get_tensor copies); a quantized output is dequantized."""
        if self.quantized:
            out = array.astype(np.float32)
            out -= self.zero
            out *= self.scale
            return out
        return array


class _Bound:
    """One interpreter, allocated at one shape, with its tensors found by name."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self._read_details()

    def _read_details(self) -> None:
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.details = runner.get_input_details()
        self.inputs = {name: Port(d) for name, d in self.details.items()}
        self.shapes = {name: port.shape for name, port in self.inputs.items()}
        outputs = runner.get_output_details()
        ordered = sorted(outputs, key=_output_order)
        self.output_names = [_output_order(k)[1] for k in ordered]
        self.output_details = [outputs[k] for k in ordered]
        self.outputs = [Port(outputs[k]) for k in ordered]

    def resize(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            self.interpreter.resize_tensor_input(self.inputs[name].index, list(shape))
        self.interpreter.allocate_tensors()
        self._read_details()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        interpreter = self.interpreter
        for name, array in feeds.items():
            port = self.inputs[name]
            interpreter.set_tensor(port.index, port.to_model(array))
        interpreter.invoke()
        return [port.from_model(interpreter.get_tensor(port.index)) for port in self.outputs]


class LiteRTSession:
    """A .tflite model on the CPU with ONNX Runtime's session interface (see the module docstring)."""

    def __init__(self, model: Path | str | bytes | memoryview, threads: int = 2) -> None:
        """``model`` is a .tflite path, or its bytes (a bundle's model, read from memory)."""
        self._cls, self.threads = _interpreter_class(), max(1, int(threads))
        self._content = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else None
        self._path = None if self._content is not None else str(model)
        try:
            base = self._new()
        except ValueError as exc:  # LiteRT raises ValueError for a file it cannot read
            raise InvalidModelError(f"LiteRT cannot read the model: {str(exc).splitlines()[0]}") from None
        if SIGNATURE not in base.interpreter.get_signature_list():  # (checked after _new read it)
            raise InvalidModelError(f"the LiteRT model has no {SIGNATURE!r} signature; convert it with edgeship "
                                    "(litert-torch) so its inputs carry the model's names.")
        self._base = base
        self._by_shape: dict[tuple, _Bound | None] = {}  # None: that shape runs row by row
        self._names = set(base.inputs)
        # any batch size runs (a resized interpreter, or row by row): the first dim is symbolic, as in ONNX
        self._inputs = [SessionSpec(name, ["batch", *port.shape[1:]], port.onnx_type) for name, port in base.inputs.items()]
        self._outputs = [SessionSpec(name, ["batch", *port.shape[1:]], port.onnx_type)
                         for name, port in zip(base.output_names, base.outputs)]

    def _new(self) -> _Bound:
        if self._content is not None:
            interpreter = self._cls(model_content=self._content, num_threads=self.threads)
        else:
            interpreter = self._cls(model_path=self._path, num_threads=self.threads)
        interpreter.allocate_tensors()
        return _Bound(interpreter)

    def get_inputs(self) -> list[SessionSpec]:
        return self._inputs

    def get_outputs(self) -> list[SessionSpec]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["LiteRT CPU (XNNPACK)"]

    def op_histogram(self) -> dict[str, int]:
        """How many of each LiteRT op the model holds (``inspect`` shows it)."""
        counts: dict[str, int] = {}
        for op in self._base.interpreter._get_ops_details():  # the interpreter's own op listing
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def _bound_for(self, shapes: dict[str, tuple[int, ...]]) -> _Bound | None:
        if shapes == self._base.shapes:
            return self._base
        key = tuple(sorted(shapes.items()))
        if key not in self._by_shape:
            if len(self._by_shape) >= MAX_SHAPES:
                self._by_shape.pop(next(iter(self._by_shape)))
            bound: _Bound | None = self._new()
            try:
                bound.resize(shapes)  # type: ignore[union-attr]
            except (RuntimeError, ValueError):  # the graph has its shape baked in
                bound = None
            self._by_shape[key] = bound
        return self._by_shape[key]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if feeds.keys() != self._names:
            raise DataMismatchError(f"the LiteRT model takes {sorted(self._names)}, got {sorted(feeds)}.")
        arrays = {n: np.asarray(v) for n, v in feeds.items()}
        bound = self._bound_for({n: a.shape for n, a in arrays.items()})
        if bound is not None:
            results = bound.run(arrays)
        else:
            results = self._row_by_row(arrays)
        if not output_names:
            return results
        by_name = {o.name: r for o, r in zip(self._outputs, results)}
        return [by_name[n] for n in output_names]

    def _row_by_row(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = {len(a) for a in arrays.values()}
        base = self._base.shapes
        fits = all(a.shape[1:] == base[n][1:] for n, a in arrays.items())
        if len(rows) != 1 or not fits or any(base[n][0] != 1 for n in arrays):
            want = {n: list(base[n]) for n in arrays}
            raise DataMismatchError(f"this LiteRT model was converted at shapes {want} and cannot take "
                                    f"{ {n: list(a.shape) for n, a in arrays.items()} }; give batches of that shape.")
        parts = [self._base.run({n: a[i:i + 1] for n, a in arrays.items()}) for i in range(rows.pop())]
        return [np.concatenate(outs) for outs in zip(*parts)]


def open_model(model: Path | str | bytes | memoryview, threads: int, options: dict[str, str],
               providers: list[str] | None = None) -> LiteRTSession:
    """The engine's opener (see edgeship.engines.base)."""
    return LiteRTSession(model, threads)
