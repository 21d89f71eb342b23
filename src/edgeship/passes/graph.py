"""Graph optimization before quantization: ONNX Runtime's rewrites and transformer fusions."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeship.errors import PassNotApplicableError
from edgeship.model import Model
from edgeship.passes.base import PassConfig, PassContext, ops_in, register_pass

__all__ = ["OptimizeGraph"]

# Hugging Face model types that ORT's BERT fusions handle.
_BERT_FAMILY = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "camembert", "mpnet"}


def _hf_config(model: Model) -> dict:
    if model.tokenizer_dir is None:
        return {}
    try:
        return json.loads((model.tokenizer_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _hf_model_type(model: Model) -> str | None:
    return _hf_config(model).get("model_type")


@register_pass
@dataclass(frozen=True)
class OptimizeGraph(PassConfig):
    """Rewrite the graph for speed without changing its numbers (beyond float rounding).

    ``mode="transformer"`` runs ORT's BERT-family fusions (EmbedLayerNormalization,
    Attention, SkipLayerNormalization, BiasGelu); ``mode="basic"`` runs ORT's portable
    rewrites (constant folding, Conv+BatchNorm fusion, redundant-node removal), which keep
    standard ONNX ops; ``auto`` picks transformer for BERT-family models.
    """

    name = "optimize_graph"
    mode: Literal["auto", "basic", "transformer"] = "auto"
    #: attention heads and hidden size for the fusions; 0 = from the HF config
    num_heads: int = 0
    hidden_size: int = 0

    def _resolved_mode(self, model: Model) -> str:
        if self.mode != "auto":
            return self.mode
        return "transformer" if _hf_model_type(model) in _BERT_FAMILY else "basic"

    def check(self, model: Model, ctx: PassContext) -> None:
        if self._resolved_mode(model) == "transformer" and not {"Softmax", "MatMul"} <= ops_in(model):
            raise PassNotApplicableError(
                "optimize_graph: mode 'transformer' needs a BERT-style graph (MatMul + Softmax "
                "attention); use mode 'basic' for this model."
            )

    def apply(self, model: Model, ctx: PassContext) -> Path:
        out = ctx.output_path(self.name)
        if self._resolved_mode(model) == "transformer":
            from onnxruntime.transformers import optimizer

            logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
            # num_heads/hidden_size 0: detected from the graph. opt_level 0: only the Python
            # fusions, so the saved graph stays portable across execution providers.
            config = _hf_config(model)
            heads = self.num_heads or int(config.get("num_attention_heads", 0))
            hidden = self.hidden_size or int(config.get("hidden_size", 0))
            optimized = optimizer.optimize_model(
                str(model.path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
            )
            fused = optimized.get_fused_operator_statistics()
            if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
                raise PassNotApplicableError(
                    "optimize_graph: no attention pattern matched ORT's BERT fusions (num_heads="
                    f"{heads}, hidden_size={hidden}); set num_heads and hidden_size, or use mode 'basic'."
                )
            optimized.save_model_to_file(str(out))
            return out
        from edgeship.core.session import Optimization, open_session

        open_session(model.path, threads=1, optimization=Optimization.BASIC, optimized_model_path=out)
        return out
