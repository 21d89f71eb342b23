"""Build side of the LiteRT engine (``edgeship[all]``: litert-torch, ai-edge-quantizer).

:func:`to_litert` converts a PyTorch module to a ``.tflite`` flatbuffer with litert-torch, then
compresses it with ai-edge-quantizer:

- ``dynamic-int8``: int8 weights, activations quantized on the fly (``dynamic_wi8_afp32``);
- ``int8-weights``: int8 weights, float compute (``weight_only_wi8_afp32``): smaller, not faster;
- ``int8``: full integer, int8 weights and activations with int8 inputs and outputs
  (``static_wi8_ai8``), calibrated by min/max over the calibration data.

Pitfalls this handles: int64 inputs (token ids) become int32, which LiteRT's kernels take; the
module is traced at a sample that has padding in it (a sample whose attention mask is all ones lets
the exporter bake the mask in, and the model then ignores padding); the float conversion is checked
against the module on samples other than the traced one before it is compressed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError, InvalidModelError
from edgeship.engines.litert.session import SIGNATURE, LiteRTSession, output_key

__all__ = ["to_litert", "QUANTIZE", "trace_sample", "PARITY_COSINE"]

QUANTIZE = ("none", "dynamic-int8", "int8-weights", "int8")
PARITY_COSINE = 0.999  # the float conversion against the PyTorch module


def trace_sample(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sample to trace at: the one with the most zeros in its integer inputs (padding, so an
    attention mask cannot be baked in as all ones); the first when there are no integer inputs."""
    def zeros(feeds: dict[str, np.ndarray]) -> int:
        return sum(int((a == 0).sum()) for a in feeds.values() if a.dtype.kind in "iub")

    return max(samples, key=zeros)


def _module_inputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int64 becomes int32 (LiteRT's integer kernels); the rest as is."""
    return {n: a.astype(np.int32) if a.dtype == np.int64 else a for n, a in feeds.items()}


def _wrap(module: Any, names: list[str], dtypes: dict[str, Any], outputs: list[str]) -> Any:
    """The module with named inputs and outputs (they become the .tflite signature's names), given
    int32 for int64 inputs and widening them back inside the graph. LiteRT lists a signature's
    outputs by name, so each output's name starts with its position (see session.output_key)."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, **feeds: Any) -> Any:
            result = self.inner(*[feeds[n].to(dtypes[n]) for n in names])
            result = result if isinstance(result, (tuple, list)) else (result,)
            return {output_key(i, name): value for i, (name, value) in enumerate(zip(outputs, result))}

    return Named().eval()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), 1.0)))


def _check_parity(module: Any, path: Path, samples: list[dict[str, np.ndarray]], names: list[str]) -> None:
    import torch

    session = LiteRTSession(path, threads=1)
    worst = 1.0
    for feeds in samples:
        with torch.no_grad():
            want = module(*[torch.from_numpy(feeds[n]) for n in names])
        want = want[0] if isinstance(want, (tuple, list)) else want
        worst = min(worst, _cosine(session.run(None, feeds)[0], want.numpy()))
    if worst < PARITY_COSINE:
        raise InvalidModelError(f"the LiteRT conversion disagrees with the PyTorch module (cosine {worst:.4f} < "
                                f"{PARITY_COSINE}); litert-torch cannot convert this model faithfully.")


def to_litert(module: Any, names: list[str], outputs: list[str], samples: list[dict[str, np.ndarray]], out: Path,
              quantize: str = "none") -> Path:
    """Convert ``module`` (called with inputs ``names`` in order, answering ``outputs`` in order) at
    the shape of ``samples`` (feed
    dicts of batch 1, also the calibration data and the parity check), compress it as ``quantize``
    says (see the module docstring), and write ``out`` (.tflite)."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"LiteRT quantize must be one of {list(QUANTIZE)}, got {quantize!r}.")
    if not samples:
        raise ConfigError("LiteRT conversion needs at least one sample input (--data).")
    import litert_torch
    import torch

    traced = trace_sample(samples)
    dtypes = {n: torch.from_numpy(traced[n]).dtype for n in names}
    kwargs = {n: torch.from_numpy(a) for n, a in _module_inputs(traced).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeship-litert-") as tmp:
        float_path = Path(tmp) / "float.tflite"
        litert_torch.convert(_wrap(module, names, dtypes, outputs), sample_kwargs=kwargs).export(str(float_path))
        _check_parity(module, float_path, [s for s in samples if s is not traced][:8] or [traced], names)
        if quantize == "none":
            os.replace(float_path, out)
            return out
        from ai_edge_quantizer import quantizer, recipe

        recipes = {"dynamic-int8": recipe.dynamic_wi8_afp32, "int8-weights": recipe.weight_only_wi8_afp32,
                   "int8": recipe.static_wi8_ai8}  # static: min/max calibration (the default algorithm)
        q = quantizer.Quantizer(str(float_path))
        q.load_quantization_recipe(recipes[quantize]())
        options = {}
        if q.need_calibration:
            options["calibration_result"] = q.calibrate({SIGNATURE: [_module_inputs(s) for s in samples]})
        q.quantize(**options).export_model(str(out), overwrite=True)
    return out
