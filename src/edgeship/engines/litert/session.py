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
  at the converted shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError, DataMismatchError, InvalidModelError

__all__ = ["LiteRTSession", "open_model", "SIGNATURE", "output_key"]

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


@dataclass(frozen=True)
class _Spec:
    """What ONNX Runtime's NodeArg offers: name, shape, type."""

    name: str
    shape: list[Any]
    type: str


class _Bound:
    """One interpreter, allocated at one shape, with its tensors found by name."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self._read_details()

    def _read_details(self) -> None:
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.inputs = runner.get_input_details()
        outputs = runner.get_output_details()
        ordered = sorted(outputs, key=_output_order)
        self.output_names = [_output_order(k)[1] for k in ordered]
        self.outputs = [outputs[k] for k in ordered]

    def resize(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            self.interpreter.resize_tensor_input(self.inputs[name]["index"], list(shape))
        self.interpreter.allocate_tensors()
        self._read_details()

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.inputs[name]["shape"])

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, array in feeds.items():
            detail = self.inputs[name]
            self.interpreter.set_tensor(detail["index"], _to_model(array, detail))
        self.interpreter.invoke()
        return [_from_model(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]


def _to_model(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    want = np.dtype(detail["dtype"])
    if array.dtype == want:
        return array
    scale, zero = detail["quantization"]
    if scale and want.kind in "iu":  # a full-integer model's quantized input
        info = np.iinfo(want)
        return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(want)
    if want.kind in "iu" and array.dtype.kind in "iu":
        info = np.iinfo(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise DataMismatchError(f"an input holds {int(array.min())}..{int(array.max())}, beyond the {want} this "
                                    "LiteRT model takes.")
    return array.astype(want)


def _from_model(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if scale and array.dtype.kind in "iu":
        return (array.astype(np.float32) - zero) * np.float32(scale)
    return array.copy()  # the interpreter reuses its buffer on the next run


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
        if SIGNATURE not in base.interpreter.get_signature_list():
            raise InvalidModelError(f"the LiteRT model has no {SIGNATURE!r} signature; convert it with edgeship "
                                    "(litert-torch) so its inputs carry the model's names.")
        self._base = base
        self._by_shape: dict[tuple, _Bound | None] = {}  # None: that shape runs row by row
        self._inputs = [_Spec(name, list(base.shape_of(name)), _TYPES.get(np.dtype(d["dtype"]), "tensor(float)"))
                        for name, d in base.inputs.items()]
        self._outputs = [_Spec(name, [int(x) for x in d["shape"]], _TYPES.get(np.dtype(d["dtype"]), "tensor(float)"))
                         for name, d in zip(base.output_names, base.outputs)]

    def _new(self) -> _Bound:
        if self._content is not None:
            interpreter = self._cls(model_content=self._content, num_threads=self.threads)
        else:
            interpreter = self._cls(model_path=self._path, num_threads=self.threads)
        interpreter.allocate_tensors()
        return _Bound(interpreter)

    def get_inputs(self) -> list[_Spec]:
        return self._inputs

    def get_outputs(self) -> list[_Spec]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["LiteRT CPU (XNNPACK)"]

    def _bound_for(self, shapes: dict[str, tuple[int, ...]]) -> _Bound | None:
        key = tuple(sorted(shapes.items()))
        if all(self._base.shape_of(n) == s for n, s in shapes.items()):
            return self._base
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
        unknown = sorted(set(feeds) - set(self._base.inputs))
        if unknown or len(feeds) != len(self._base.inputs):
            raise DataMismatchError(f"the LiteRT model takes {sorted(self._base.inputs)}, got {sorted(feeds)}.")
        arrays = {n: np.asarray(v) for n, v in feeds.items()}
        bound = self._bound_for({n: a.shape for n, a in arrays.items()})
        if bound is not None:
            results = bound.run(arrays)
        else:
            results = self._row_by_row(arrays)
        wanted = output_names or [o.name for o in self._outputs]
        by_name = {o.name: r for o, r in zip(self._outputs, results)}
        return [by_name[n] for n in wanted]

    def _row_by_row(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = {len(a) for a in arrays.values()}
        fits = all(a.shape[1:] == self._base.shape_of(n)[1:] for n, a in arrays.items())
        if len(rows) != 1 or not fits or any(self._base.shape_of(n)[0] != 1 for n in arrays):
            want = {n: list(self._base.shape_of(n)) for n in arrays}
            raise DataMismatchError(f"this LiteRT model was converted at shapes {want} and cannot take "
                                    f"{ {n: list(a.shape) for n, a in arrays.items()} }; give batches of that shape.")
        parts = [self._base.run({n: a[i:i + 1] for n, a in arrays.items()}) for i in range(rows.pop())]
        return [np.concatenate(outs) for outs in zip(*parts)]


def open_model(model: Path | str | bytes | memoryview, threads: int, options: dict[str, str],
               providers: list[str] | None = None) -> LiteRTSession:
    """The engine's opener (see edgeship.engines.base)."""
    return LiteRTSession(model, threads)
