"""TensorFlow Lite for Microcontrollers, run on the host through its Python interpreter
(``tflite-micro``): the interpreter a microcontroller runs, so accuracy and memory measured here are
the device's, not LiteRT's.

:class:`TFLMSession` answers like an ONNX Runtime session. TFLM runs one sample at a time, so a
batch runs row by row; a full-integer model's int8 inputs are quantized and its outputs dequantized
with the model's own scale and zero point. :func:`exact_arena` finds the smallest tensor arena with
which the interpreter allocates and runs the model, by running it (each size in a child process:
TFLM crashes, not fails, at some sizes that are too small).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeship.core.errors import ConfigError, DataMismatchError, InvalidModelError
from edgeship.engines.base import SessionSpec
from edgeship.engines.litert.session import Port

__all__ = ["TFLMSession", "open_model", "exact_arena", "ArenaReport", "MAX_ARENA_BYTES"]

MAX_ARENA_BYTES = 64 << 20  # no microcontroller has more SRAM than this; the search stops here
_ALIGNMENT = 16  # TFLM aligns arena buffers to 16 bytes (MicroArenaBufferAlignment)


def _runtime() -> Any:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise ConfigError("running a model on TFLite Micro needs its interpreter: pip install 'edgeship[tflm]'.") from None
    return runtime


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """TFLM reports allocation failures on file descriptor 2 (C++); the arena search expects them."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _port(detail: dict[str, Any], index: int) -> Port:
    """TFLM's tensor details in LiteRT's form (the same flatbuffer format), as a Port."""
    q = detail.get("quantization_parameters") or {}
    scales, zeros = list(q.get("scales", [])), list(q.get("zero_points", []))
    return Port({"index": index, "dtype": detail["dtype"], "shape": detail["shape"],
                 "quantization": (float(scales[0]) if scales else 0.0, int(zeros[0]) if zeros else 0)})


def _model_bytes(model: Path | str | bytes | memoryview) -> bytes:
    return bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else Path(model).read_bytes()


class TFLMSession:
    """A full-integer .tflite on TFLM's host interpreter, with ONNX Runtime's session interface.

    Inputs and outputs keep the LiteRT signature's names when the model has them (edgeship's
    conversions do), else ``input_0``, ``output_0``, ...
    """

    def __init__(self, model: Path | str | bytes | memoryview, arena_size: int | None = None) -> None:
        """``arena_size``: the tensor arena in bytes (default: 64 MiB, more than any microcontroller
        has; TFLM may crash rather than fail with an arena that is too small, so smaller sizes are
        tried in a child process: :func:`arena_fits`)."""
        self._data = _model_bytes(model)
        arena_size = arena_size or MAX_ARENA_BYTES
        self._runtime = _runtime()
        self._arena = arena_size
        _io_counts(self._data)  # a damaged file is refused before TFLM's C++ reads it
        try:
            with _quiet_stderr():
                self._interpreter = self._runtime.Interpreter.from_bytes(self._data, arena_size=arena_size)
        except (RuntimeError, ValueError) as exc:
            raise InvalidModelError(f"TFLite Micro cannot load the model: {str(exc).splitlines()[0]}") from None
        n_in, n_out = _io_counts(self._data)  # TFLM does not bound-check an input index: read the counts first
        self._in = [_port(self._interpreter.get_input_details(i), i) for i in range(n_in)]
        self._out = [_port(self._interpreter.get_output_details(i), i) for i in range(n_out)]
        in_names, out_names = _signature_names(self._data, len(self._in), len(self._out))
        self._inputs = [SessionSpec(n, ["batch", *p.shape[1:]], p.onnx_type) for n, p in zip(in_names, self._in)]
        self._outputs = [SessionSpec(n, ["batch", *p.shape[1:]], p.onnx_type) for n, p in zip(out_names, self._out)]

    def get_inputs(self) -> list[SessionSpec]:
        return self._inputs

    def get_outputs(self) -> list[SessionSpec]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["TFLite Micro (host interpreter)"]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = [s.name for s in self._inputs]
        if set(feeds) != set(names):
            raise DataMismatchError(f"the model takes {names}, got {sorted(feeds)}.")
        arrays = [np.asarray(feeds[n]) for n in names]
        rows = {len(a) for a in arrays}
        if len(rows) != 1 or any(a.shape[1:] != p.shape[1:] for a, p in zip(arrays, self._in)):
            raise DataMismatchError(f"the model takes shapes {[list(p.shape) for p in self._in]} (any batch), got "
                                    f"{[list(a.shape) for a in arrays]}.")
        results: list[list[np.ndarray]] = [[] for _ in self._out]
        for i in range(rows.pop()):
            for index, (array, port) in enumerate(zip(arrays, self._in)):
                self._interpreter.set_input(port.to_model(array[i:i + 1]), index)
            self._interpreter.invoke()
            for index, port in enumerate(self._out):
                results[index].append(port.from_model(np.array(self._interpreter.get_output(index))))
        outputs = [np.concatenate(r) for r in results]
        if not output_names:
            return outputs
        by_name = {s.name: o for s, o in zip(self._outputs, outputs)}
        return [by_name[n] for n in output_names]

    def allocation_report(self) -> str:
        """TFLM's RecordingMicroAllocator report (what it printed for the last allocation)."""
        read, write = os.pipe()
        saved = os.dup(2)
        try:
            os.dup2(write, 2)
            self._interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(write)
        with os.fdopen(read, "r", errors="replace") as f:
            return f.read()


def _io_counts(data: bytes) -> tuple[int, int]:
    """(inputs, outputs) of the first subgraph, from the flatbuffer (pure Python: a bad file raises)."""
    from edgeship.engines.tflm.graph import read_graph

    graph = read_graph(data)
    return len(graph.inputs), len(graph.outputs)


def _signature_names(data: bytes, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    """Input and output names from the LiteRT signature (ordered as the TFLM interpreter's), where
    ai-edge-litert is here to read it; else positional names."""
    fallback = [f"input_{i}" for i in range(n_in)], [f"output_{i}" for i in range(n_out)]
    try:
        from edgeship.engines.litert.session import LiteRTSession
    except ImportError:
        return fallback
    try:
        lite = LiteRTSession(data, threads=1)
    except Exception:  # no signature, or LiteRT is not installed: positional names
        return fallback
    order = sorted(lite._base.inputs.items(), key=lambda kv: kv[1].index)  # the subgraph's input order
    names_in = [name for name, _ in order]
    return (names_in if len(names_in) == n_in else fallback[0],
            [s.name for s in lite.get_outputs()] if len(lite.get_outputs()) == n_out else fallback[1])


@dataclass(frozen=True)
class ArenaReport:
    """The smallest tensor arena that works, and what TFLM's allocator recorded at it."""

    exact_bytes: int  # the smallest arena with which the model allocates and runs
    reported_bytes: int | None  # TFLM's own allocation total at that arena (None if not reported)
    report: str


def _zeros(session: "TFLMSession") -> dict[str, np.ndarray]:
    return {s.name: np.zeros([1, *s.shape[1:]], np.float32 if s.type == "tensor(float)" else np.int8)
            for s in session.get_inputs()}


def _probe_main(model_path: str, size: int) -> None:
    """In a child process: allocate and run at ``size``; exit 0 if it runs (and print TFLM's report on
    stderr), 1 if TFLM refuses. A crash (TFLM dereferences a failed allocation at some small sizes)
    kills only the child."""
    try:
        session = TFLMSession(Path(model_path), arena_size=size)
        with _quiet_stderr():
            session.run(None, _zeros(session))
    except (InvalidModelError, RuntimeError, ValueError):
        raise SystemExit(1) from None
    session._interpreter.print_allocations()
    raise SystemExit(0)


def arena_fits(model: Path | str, size: int) -> tuple[bool, str]:
    """(whether the model allocates and runs in a ``size``-byte arena, TFLM's allocation report),
    tried in a child process, because TFLM crashes rather than fails at some too-small sizes."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeship.engines.tflm.session", str(model), str(int(size))],
                          capture_output=True, text=True, timeout=120)
    return done.returncode == 0, done.stderr


def exact_arena(model: Path | str) -> ArenaReport:
    """The smallest tensor arena with which TFLM's interpreter allocates the model and runs it once,
    found by bisection over sizes, each tried by running (in a child process); not an estimate."""
    path = Path(model)
    if not path.is_file():
        raise InvalidModelError(f"model not found: {str(path)!r}.")
    high = max(_ALIGNMENT, len(path.read_bytes()) // 4 // _ALIGNMENT * _ALIGNMENT)
    while not arena_fits(path, high)[0]:
        if high >= MAX_ARENA_BYTES:
            raise InvalidModelError(f"the model does not run on TFLite Micro even with a {MAX_ARENA_BYTES >> 20} MiB "
                                    "arena; it is not a microcontroller model.")
        high = min(high * 2, MAX_ARENA_BYTES)
    low = 0  # sizes at or below ``low`` fail; ``high`` runs
    while high - low > 1:
        mid = (low + high) // 2
        if arena_fits(path, mid)[0]:
            high = mid
        else:
            low = mid
    _, report = arena_fits(path, high)
    reported = None
    for line in report.splitlines():
        if "Arena allocation total" in line:
            reported = int(line.split("total")[1].split()[0])
    return ArenaReport(high, reported, report)


def open_model(model: Path | str | bytes | memoryview, threads: int, options: dict[str, str],
               providers: list[str] | None = None) -> TFLMSession:
    """The engine's opener (see edgeship.engines.base): threads do not apply to a microcontroller."""
    arena = options.get("arena_bytes")
    return TFLMSession(model, int(arena) if arena else None)


if __name__ == "__main__":  # the arena probe's child process (see arena_fits)
    import sys

    _probe_main(sys.argv[1], int(sys.argv[2]))
