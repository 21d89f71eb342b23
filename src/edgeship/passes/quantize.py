"""Quantization passes on ONNX Runtime's quantization tools: fp16, dynamic/static int8, int4."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from edgeship.core.cpu import cpu_flags
from edgeship.errors import ConfigError, PassNotApplicableError
from edgeship.model import Model
from edgeship.passes.base import PassConfig, PassContext, constant_weight_ops, register_pass

__all__ = ["ConvertFp16", "QuantizeDynamic", "QuantizeStatic", "QuantizeInt4"]

_QTYPES = {"int8": "QInt8", "uint8": "QUInt8"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizers print calibration chatter and log root warnings; keep the CLI clean."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _save(proto: Any, path: Path) -> Path:
    import onnx

    onnx.save_model(proto, str(path))
    return path


def _has_float_weights(model: Model) -> bool:
    import onnx

    proto = onnx.load(str(model.path), load_external_data=False)
    return any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2 for i in proto.graph.initializer)


@register_pass
@dataclass(frozen=True)
class ConvertFp16(PassConfig):
    """Store weights and compute in float16; inputs and outputs stay float32.

    Halves the file. On CPUs without fp16 arithmetic it is usually slower (ORT inserts casts).
    """

    name = "fp16"
    keep_io_types: bool = True

    def check(self, model: Model, ctx: PassContext) -> None:
        if not _has_float_weights(model):
            raise PassNotApplicableError("fp16: the model has no float32 weights to convert.")

    def apply(self, model: Model, ctx: PassContext) -> Path:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        proto = onnx.load(str(model.path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = convert_float_to_float16(proto, keep_io_types=self.keep_io_types)
        # the converter appends its input Casts at the end; the ONNX checker wants topological order
        wrapped = OnnxModel(converted)
        wrapped.topological_sort()
        return _save(wrapped.model, ctx.output_path(self.name))


_DYNAMIC_OPS = {"MatMul", "Gemm", "Conv", "Attention", "Gather", "EmbedLayerNormalization", "LSTM"}


@register_pass
@dataclass(frozen=True)
class QuantizeDynamic(PassConfig):
    """Int8 weights, activations quantized on the fly (``onnxruntime.quantization.quantize_dynamic``).

    ``per_channel`` keeps one scale per output channel: on MiniLM it recovers most of the
    accuracy that per-tensor scales lose (cosine 0.99 against 0.97) at a small speed cost.
    ``reduce_range`` (7-bit weights) is ORT's remedy for U8S8 saturation on CPUs without VNNI.
    """

    name = "quantize_dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"
    op_types: tuple[str, ...] = ()

    def check(self, model: Model, ctx: PassContext) -> None:
        ops = set(self.op_types) or _DYNAMIC_OPS
        if constant_weight_ops(model, ops) == 0 and constant_weight_ops(model, {"Gather"}, 0) == 0:
            raise PassNotApplicableError(
                f"quantize_dynamic: the model has no {sorted(ops)} node with constant weights to quantize."
            )

    def apply(self, model: Model, ctx: PassContext) -> Path:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = ctx.output_path(self.name)
        with _quiet():
            quantize_dynamic(
              str(model.path),
              str(out),
              per_channel=self.per_channel,
              reduce_range=self.reduce_range,
              weight_type=getattr(QuantType, _QTYPES[self.weight_type]),
              op_types_to_quantize=list(self.op_types) or None,
              # fused graphs hold contrib ops that ONNX shape inference cannot type
              extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        return out


class _CalibrationReader:
    """Feeds calibration samples to ORT's calibrator one batch at a time."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - part of the reader protocol
        pass


@register_pass
@dataclass(frozen=True)
class QuantizeStatic(PassConfig):
    """Int8 weights and activations in QDQ format, activation ranges calibrated on data.

    ``method`` picks the calibrator: MinMax, Entropy (KL) or Percentile. ``reduce_range``
    (7-bit weights) left as None is decided for the target CPU: on for x86 without VNNI, where
    full-range U8S8 saturates (the digits CNN lost 5.5 points there), off elsewhere.
    """

    name = "quantize_static"
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    max_samples: int = 128
    percentile: float = 99.999

    def validate(self) -> None:
        if self.max_samples < 1:
            raise ConfigError(f"quantize_static: max_samples must be >= 1, got {self.max_samples}.")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"quantize_static: percentile must be in [90, 100], got {self.percentile}.")

    def for_cpu(self, flags: frozenset[str]) -> "QuantizeStatic":
        if self.reduce_range is not None:
            return self
        from edgeship.core.cpu import u8s8_saturates

        return replace(self, reduce_range=u8s8_saturates(flags))

    def check(self, model: Model, ctx: PassContext) -> None:
        if ctx.calibration is None or len(ctx.calibration) == 0:
            raise PassNotApplicableError(
                "quantize_static needs calibration data; pass --data (an .npz with the model inputs)."
            )
        if constant_weight_ops(model, {"Conv", "MatMul", "Gemm"}) == 0:
            raise PassNotApplicableError("quantize_static: the model has no Conv/MatMul/Gemm with constant weights.")

    def apply(self, model: Model, ctx: PassContext) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = ctx.output_path("preprocessed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(model.path), str(prepared), skip_symbolic_shape=False, auto_merge=True)
        data = ctx.calibration.take(slice(0, self.max_samples))
        batch = 16 if model.has_batch_axis else 1
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.method]
        out = ctx.output_path(self.name)
        with _quiet():
            quantize_static(
              str(prepared),
              str(out),
              _CalibrationReader(list(data.batches(batch))),
              quant_format=QuantFormat.QDQ,
              per_channel=self.per_channel,
              reduce_range=bool(self.for_cpu(cpu_flags()).reduce_range),
              activation_type=getattr(QuantType, _QTYPES[self.activation_type]),
              weight_type=getattr(QuantType, _QTYPES[self.weight_type]),
              calibrate_method=method,
              extra_options={"CalibPercentile": self.percentile, "CalibTensorRangeSymmetric": False},
            )
        prepared.unlink(missing_ok=True)
        return out


@register_pass
@dataclass(frozen=True)
class QuantizeInt4(PassConfig):
    """Int4 weight-only quantization of MatMul (MatMulNBits) and, optionally, embeddings.

    Weights are stored as 4-bit blocks of ``block_size`` with one scale per block;
    ``accuracy_level=4`` lets the CPU kernel compute in int8.
    """

    name = "quantize_int4"
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    include_gather: bool = True

    def validate(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(
                f"quantize_int4: block_size must be a power of two >= 16, got {self.block_size}."
            )
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"quantize_int4: accuracy_level must be 0..4, got {self.accuracy_level}.")

    def check(self, model: Model, ctx: PassContext) -> None:
        if constant_weight_ops(model, {"MatMul"}) == 0:
            raise PassNotApplicableError(
                "quantize_int4: the model has no MatMul with constant weights (int4 is for "
                "transformer-style MatMul layers; use quantize_static for CNNs)."
            )

    def apply(self, model: Model, ctx: PassContext) -> Path:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        ops = ("MatMul", "Gather") if self.include_gather else ("MatMul",)
        proto = onnx.load(str(model.path))
        default_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 21)
        if self.include_gather and default_opset < 21:
            # int4 Gather data needs opset 21; the quantizer only relabels the opset, so
            # convert properly first (e.g. ReduceL2's axes move from attribute to input).
            proto = onnx.version_converter.convert_version(proto, 21)
        with _quiet():
            quantizer = MatMulNBitsQuantizer(
                proto,
                block_size=self.block_size,
                is_symmetric=self.symmetric,
                accuracy_level=self.accuracy_level,
                op_types_to_quantize=ops,
            )
            quantizer.process()
        return _save(quantizer.model.model, ctx.output_path(self.name))
