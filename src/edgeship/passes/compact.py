"""Shorten internal tensor and node names and drop doc strings.

Exporters and quantizers write long names (``/layer.0/Conv_output_0_QuantizeLinear_Output``);
on a small quantized CNN they are a tenth of the file. Model inputs and outputs keep
their names, so the model's interface does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeship.model import Model
from edgeship.passes.base import PassConfig, PassContext, register_pass

__all__ = ["Compact"]


@register_pass
@dataclass(frozen=True)
class Compact(PassConfig):
    name = "compact"

    def apply(self, model: Model, ctx: PassContext) -> Path:
        import onnx

        proto = onnx.load(str(model.path))
        graph = proto.graph
        keep = {v.name for v in [*graph.input, *graph.output]}
        mapping: dict[str, str] = {}

        def short(name: str) -> str:
            if not name or name in keep:
                return name
            if name not in mapping:
                mapping[name] = format(len(mapping), "x")
            return mapping[name]

        for init in graph.initializer:
            init.name = short(init.name)
            init.doc_string = ""
        for i, node in enumerate(graph.node):
            node.name = ""
            node.doc_string = ""
            node.input[:] = [short(n) for n in node.input]
            node.output[:] = [short(n) for n in node.output]
        for vi in graph.value_info:
            vi.name = short(vi.name)
        graph.doc_string = ""
        proto.doc_string = ""
        out = ctx.output_path(self.name)
        onnx.save_model(proto, str(out))
        return out
