"""The one way edgeship opens ONNX Runtime: threads, provider, graph optimization, memory, logging.

Every measurement, the runtime on the device, packing and the estimators open sessions here, so
that a model timed during the search runs under the same settings as on the device.

A model held in memory (a decrypted bundle) is opened through an anonymous in-memory file
(``memfd``, Linux) by path, so neither ONNX Runtime's Python wrapper nor edgeship keeps a second
copy of the model bytes once the session exists; the bytes are never written to disk. Where
``memfd`` is missing, ONNX Runtime is given the bytes (and keeps them while the session lives).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["Optimization", "session_options", "open_session", "choose_providers", "CPU"]

CPU = ["CPUExecutionProvider"]
log = logging.getLogger("edgeship")


def choose_providers(wanted: Sequence[str] | None, available: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the providers to ask for, in ``wanted``'s order, always ending with the CPU; the wanted ones
    this ONNX Runtime build lacks). ``wanted`` comes from a device profile (e.g. TensorRT, then CUDA
    on a Jetson) or the command line; None is the CPU alone."""
    if not wanted:
        return list(CPU), []
    chosen = [p for p in wanted if p in available and p not in CPU]
    missing = [p for p in wanted if p not in available]
    return chosen + CPU, missing


class Optimization(str, Enum):
    """ONNX Runtime's graph optimization levels, by the names edgeship uses."""

    NONE = "none"  # the graph as it is: facts about the file, shape probes
    BASIC = "basic"  # portable rewrites
    EXTENDED = "extended"  # portable fusions (what a bundle stores pre-applied)
    ALL = "all"  # plus layout optimizations for this very CPU (serving and timing)

    def level(self) -> Any:
        import onnxruntime as ort

        return {
            Optimization.NONE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            Optimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            Optimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            Optimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self]


def session_options(threads: int = 2, optimization: Optimization = Optimization.ALL,
                    optimized_model_path: Path | str | None = None, profile_prefix: str | None = None) -> Any:
    """SessionOptions with a fixed intra-op thread count, sequential execution and quiet logs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = Optimization(optimization).level()
    so.log_severity_level = 3
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def open_session(model: Path | str | bytes, threads: int = 2, optimization: Optimization = Optimization.ALL,
                 providers: Sequence[str] | None = None, **options: Any) -> Any:
    """An ONNX Runtime session on a model file or on model bytes (see the module docstring): on the
    CPU, or on ``providers`` in that order where this build has them, falling back to the CPU with a
    log line for each one missing (or failing to start)."""
    import onnxruntime as ort

    so = session_options(threads, optimization, **options)
    chosen, missing = choose_providers(providers, ort.get_available_providers())
    for name in missing:
        log.warning("%s is not in this ONNX Runtime build (it has %s); falling back to %s", name,
                    ", ".join(ort.get_available_providers()), chosen[0])
    session = _session(ort, model, so, chosen)
    if chosen[0] not in session.get_providers():
        log.warning("%s did not start; the model runs on %s", chosen[0], session.get_providers()[0])
    return session


def _session(ort: Any, model: Path | str | bytes, so: Any, providers: list[str]) -> Any:
    if not isinstance(model, (bytes, bytearray, memoryview)):
        return ort.InferenceSession(str(model), so, providers=providers)
    if not hasattr(os, "memfd_create"):
        return ort.InferenceSession(bytes(model), so, providers=providers)
    fd = os.memfd_create("edgeship-model", os.MFD_CLOEXEC)
    try:
        view = memoryview(model)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:written + (64 << 20)])
        return ort.InferenceSession(f"/proc/self/fd/{fd}", so, providers=providers)
    finally:
        os.close(fd)  # the session has read the model; the in-memory file goes with the last reference
