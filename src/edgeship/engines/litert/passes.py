"""The LiteRT engine as a pass: the model's PyTorch module becomes a .tflite flatbuffer (litert-torch),
optionally compressed by ai-edge-quantizer, and from there on runs (is timed, scored, measured) on
LiteRT. So LiteRT candidates enter the same search and the same Pareto front as every other
engine's. See edgeship.engines.litert.convert."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from edgeship.engines.base import Engine
from edgeship.engines.litert import ENGINE
from edgeship.errors import PassNotApplicableError
from edgeship.model import Model
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["ToLiteRT", "check_from_torch"]

MAX_CALIBRATION = 200


def check_from_torch(engine: Engine, model: Model, ctx: PassContext) -> None:
    """What a conversion through litert-torch needs (LiteRT's passes and TFLite Micro's): the engine's
    build side, a model still on ONNX Runtime, its PyTorch module, and sample data."""
    engine.check_convertible(model)
    if model.torch_module is None:
        raise PassNotApplicableError(f"{engine.label} models are converted from PyTorch, and this model has no "
                                     "PyTorch module (an ONNX file, or after an ONNX pass); import it from PyTorch "
                                     "or Hugging Face.")
    if ctx.calibration is None:
        raise PassNotApplicableError(f"{engine.label} conversion needs sample data (--data).")


@register_pass
@dataclass(frozen=True)
class ToLiteRT(PassConfig):
    name = "litert"
    note = "runs on LiteRT (TensorFlow Lite), not ONNX Runtime: the device needs edgeship[litert]"

    quantize: Literal["none", "dynamic-int8", "int8-weights", "int8"] = "none"

    def check(self, model: Model, ctx: PassContext) -> None:
        check_from_torch(ENGINE, model, ctx)

    def apply(self, model: Model, ctx: PassContext) -> Model:
        from edgeship.engines.litert.convert import to_litert

        samples = ctx.samples(MAX_CALIBRATION)
        ctx.say(f"LiteRT: converting{', ' + self.quantize if self.quantize != 'none' else ''}")
        path = to_litert(model.torch_module, [s.name for s in model.inputs], [s.name for s in model.outputs], samples,
                         ctx.output_path("litert").with_suffix(ENGINE.suffix), self.quantize)
        derived = model.derive(model.path, self.name, asdict(self), keeps_arch=True)
        return replace(derived, engine=ENGINE.name, artifact=path)
