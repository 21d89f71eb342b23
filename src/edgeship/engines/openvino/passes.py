"""The OpenVINO engine as a pass: the ONNX model becomes an OpenVINO IR, optionally compressed by
NNCF, and from there on runs (is timed, scored, measured) on OpenVINO. So OpenVINO candidates
enter the same search and the same Pareto front as ONNX Runtime's. See edgeship.engines.openvino.convert."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from edgeship.engines.openvino import ENGINE
from edgeship.errors import PassNotApplicableError
from edgeship.model import Model
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["ToOpenVINO"]

MAX_CALIBRATION = 300


@register_pass
@dataclass(frozen=True)
class ToOpenVINO(PassConfig):
    name = "openvino"
    note = "runs on OpenVINO, not ONNX Runtime: the device needs edgeship[openvino]"

    quantize: Literal["none", "int8", "int8-weights"] = "none"
    hint: Literal["latency", "throughput"] = "latency"
    precision: Literal["f32", "bf16"] = "f32"

    def check(self, model: Model, ctx: PassContext) -> None:
        ENGINE.check_convertible(model)
        if self.quantize == "int8" and ctx.calibration is None:
            raise PassNotApplicableError("OpenVINO int8 needs calibration data.")

    def apply(self, model: Model, ctx: PassContext) -> Model:
        from edgeship.engines.openvino.convert import to_openvino

        calibration = ctx.samples(MAX_CALIBRATION) if self.quantize == "int8" else None
        text = model.tokenizer_dir is not None or any(s.name == "input_ids" for s in model.inputs)
        ctx.say(f"OpenVINO: converting{', NNCF ' + self.quantize if self.quantize != 'none' else ''}")
        xml = to_openvino(model.path, ctx.output_path("openvino").with_suffix(ENGINE.suffix), self.quantize, calibration,
                          text_model=text)
        derived = model.derive(model.path, self.name, asdict(self), keeps_arch=True)
        return replace(derived, engine=ENGINE.name, artifact=xml,
                       engine_options=(("hint", self.hint), ("precision", self.precision)))
