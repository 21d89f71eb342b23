"""``edgeship inspect``: what a model takes and returns, and what it costs."""

from __future__ import annotations

from typing import Any

from pathlib import Path

from edgeship.model import Model

__all__ = ["inspect_model", "fit_report", "mcu_fits", "edgetpu_report"]


def inspect_model(model: Any, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Inputs, outputs, opsets, op histogram, params, MACs (per sample, batch 1) and size; for a GGUF
    file, its architecture, shapes, tensor types, context length and KV-cache bytes per token."""
    import onnx

    if isinstance(model, (str, Path)) and str(model).lower().endswith(".gguf"):
        from edgeship.importers.gguf_file import read_gguf

        return read_gguf(model).summary()

    from edgeship.evaluate.graph import op_histogram, opsets
    from edgeship.importers import load

    model = load(model) if not isinstance(model, Model) else model
    shapes = shapes or {}
    stats = model.stats(shapes)
    if model.kind == "tflite":  # LiteRT's own model: its ops from the interpreter, no ONNX opset
        opset, ops = {}, model.session(1).op_histogram()
    else:
        proto = onnx.load(str(model.path), load_external_data=False)
        opset, ops = opsets(proto), op_histogram(proto)
    return {
        "source": model.source,
        "path": str(model.path),
        "inputs": [s.to_dict() for s in model.inputs],
        "outputs": [s.to_dict() for s in model.outputs],
        "opset": opset,
        "ops": ops,
        "params": stats["params"],
        "macs": stats["macs"],  # None: unknown, and macs_unknown says why
        "macs_unknown": stats["macs_unknown"],
        "shapes": {"from": "--shape" if shapes else "the model's static dims (batch 1)",
                   "inputs": {k: list(v) for k, v in shapes.items()}},
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
    }


def _example_feeds(model: Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Inputs of the model's signature (dynamic dims from ``shapes`` or 1), for a host measurement."""
    import numpy as np

    feeds = {}
    for spec in model.inputs:
        given = shapes.get(spec.name, ())
        dims = [d if isinstance(d, int) else (given[i] if i < len(given) else 1) for i, d in enumerate(spec.shape)]
        if spec.dtype.startswith("float"):
            feeds[spec.name] = np.random.default_rng(0).random(dims).astype(spec.dtype)
        else:
            feeds[spec.name] = np.ones(dims, dtype=spec.dtype)
    return feeds


def fit_report(
    model: Any,
    target: Any,
    shapes: dict[str, tuple[int, ...]] | None = None,
    threads: int = 2,
    request_rate_hz: float = 1.0,
    max_latency_ms: float | None = None,
    measure: bool = True,
) -> dict[str, Any]:
    """Estimates of ``model`` on ``target``, with latency and memory measured on this host beside them."""
    from edgeship.evaluate import measure_latency, measure_peak_memory
    from edgeship.importers import load
    from edgeship.targets import load_profile
    from edgeship.targets.estimate import estimate

    model = load(model) if not isinstance(model, Model) else model
    profile = load_profile(target)
    shapes = shapes or {}
    report = estimate(model, profile, shapes, threads, request_rate_hz, max_latency_ms)
    if measure and not profile.microcontroller:  # on an MCU the arena is the measurement (TFLM's interpreter)
        feeds = _example_feeds(model, shapes)
        report["measured_on_host"] = {
            "latency_ms_p50": measure_latency(model.session(threads), feeds, runs=50, min_seconds=0.3)["latency_ms_p50"],
            "peak_memory_bytes": measure_peak_memory(model.artifact or model.path, feeds, threads, model.engine),
            "threads": threads,
        }
    return report


def _tflite_path(model: Any, target: str) -> Path:
    from edgeship.errors import ConfigError

    path = Path(str(model))
    if path.suffix.lower() not in (".tflite", ".tflm"):
        raise ConfigError(f"--target {target} checks a .tflite/.tflm model, got {str(model)!r}: make a full-int8 one "
                          "with `edgeship optimize MODEL --recipes tflm-int8`.")
    return path


def edgetpu_report(model: Any) -> dict[str, Any]:
    """Which ops of a .tflite model a Coral Edge TPU would run, by its documented rules."""
    from edgeship.targets.edgetpu import edgetpu_check

    return edgetpu_check(_tflite_path(model, "edgetpu"))


def mcu_fits(model: Any, request_rate_hz: float = 1.0) -> list[dict[str, Any]]:
    """The fit report of a .tflite model on every built-in microcontroller profile; the arena is
    measured once, on TFLM's interpreter."""
    from edgeship.engines.tflm.session import exact_arena
    from edgeship.targets.mcu_fit import mcu_fit, mcu_profiles

    path = _tflite_path(model, "mcu")
    arena = exact_arena(path)
    return [mcu_fit(path, p, arena.exact_bytes, arena.report, request_rate_hz) for p in mcu_profiles()]
