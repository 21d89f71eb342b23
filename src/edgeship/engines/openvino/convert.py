"""Build side of the OpenVINO engine (``edgeship[all]``: openvino, nncf): :func:`to_openvino` converts
an ONNX model to OpenVINO IR (``.xml`` + ``.bin``) and optionally compresses it with NNCF: post-training
int8 quantization (the transformer model type, with SmoothQuant, for text models; fast bias
correction), or int8 weight compression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.core.errors import ConfigError
from edgeship.engines.openvino.session import _ov

__all__ = ["to_openvino"]


def to_openvino(onnx_path: Path, out_xml: Path, quantize: str = "none", calibration: Any = None,
                text_model: bool = False, ignored_scope: list[str] | None = None) -> Path:
    """Convert to IR and compress: ``quantize`` is ``none`` (fp32 IR), ``int8`` (NNCF post-training
    quantization on ``calibration``, a list of feed dicts) or ``int8-weights`` (weight compression)."""
    ov = _ov()
    model = ov.convert_model(str(onnx_path))
    if quantize == "int8":
        import nncf

        if not calibration:
            raise ConfigError("OpenVINO int8 needs calibration data (--data).")
        options: dict[str, Any] = {"subset_size": min(300, len(calibration)), "fast_bias_correction": True,
                                   "preset": nncf.QuantizationPreset.MIXED if text_model
                                   else nncf.QuantizationPreset.PERFORMANCE}
        if text_model:
            options["model_type"] = nncf.ModelType.TRANSFORMER  # with SmoothQuant on the MatMuls
        if ignored_scope:
            options["ignored_scope"] = nncf.IgnoredScope(names=ignored_scope)
        model = nncf.quantize(model, nncf.Dataset(calibration), **options)
    elif quantize == "int8-weights":
        import nncf

        model = nncf.compress_weights(model)
    elif quantize != "none":
        raise ConfigError(f"OpenVINO quantize must be none, int8 or int8-weights, got {quantize!r}.")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return out_xml
