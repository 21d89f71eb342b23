"""The TFLite Micro engine as a pass: the model's PyTorch module becomes a full-integer .tflite
(litert-torch, then ai-edge-quantizer's int8 recipe with min/max calibration: int8 weights,
activations, inputs and outputs), every op is checked to be int8, and the exact tensor arena is
measured on TFLM's interpreter. From there on the candidate is timed and scored on that interpreter:
the accuracy is the microcontroller's."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from edgeship.engines.litert.passes import check_from_torch
from edgeship.engines.tflm import ENGINE
from edgeship.model import Model
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["ToTFLM"]

MAX_CALIBRATION = 200


@register_pass
@dataclass(frozen=True)
class ToTFLM(PassConfig):
    name = "tflm"
    note = "a microcontroller model (TFLite Micro, full int8): its arena is exact; export it with `edgeship export`"

    def check(self, model: Model, ctx: PassContext) -> None:
        check_from_torch(ENGINE, model, ctx)

    def apply(self, model: Model, ctx: PassContext) -> Model:
        from edgeship.engines.litert.convert import to_litert
        from edgeship.engines.tflm.firmware import check_full_int8
        from edgeship.engines.tflm.session import exact_arena

        samples = ctx.samples(MAX_CALIBRATION)
        ctx.say("TFLite Micro: converting to full int8")
        path = to_litert(model.torch_module, [s.name for s in model.inputs], [s.name for s in model.outputs],
                         samples, ctx.output_path("tflm").with_suffix(ENGINE.suffix), "int8")
        check_full_int8(path.read_bytes())
        arena = exact_arena(path)
        derived = model.derive(model.path, self.name, asdict(self), keeps_arch=True)
        return replace(derived, engine=ENGINE.name, artifact=path,
                       engine_options=(("arena_bytes", str(arena.exact_bytes)),))
