"""Import a Hugging Face transformers encoder directory (and sentence-transformers pooling).

Weights load only through safetensors or ``torch.load(weights_only=True)``: never an
arbitrary unpickle. A sentence-transformers directory (``modules.json`` with a Pooling
module) exports pooling and normalization too, so the ONNX output is the sentence
embedding, named ``sentence_embedding``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeship._workspace import scratch_dir
from edgeship.errors import InvalidModelError
from edgeship.importers.torch_module import check_parity, export_onnx
from edgeship.model import Model

__all__ = ["load_hf_dir", "DEFAULT_SEQ_LEN"]

DEFAULT_SEQ_LEN = 64


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"cannot read {str(path)!r}: {exc}") from None


def _load_state_dict(model_dir: Path) -> dict[str, Any]:
    safetensors_file = model_dir / "model.safetensors"
    bin_file = model_dir / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    if bin_file.is_file():
        import torch

        try:  # weights_only: tensors and plain containers only, never arbitrary objects
            return torch.load(str(bin_file), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InvalidModelError(
                f"{str(bin_file)!r} is not a plain tensor checkpoint ({type(exc).__name__}); "
                "convert it to model.safetensors."
            ) from None
    raise InvalidModelError(
        f"{str(model_dir)!r} has no model.safetensors or pytorch_model.bin; save the model with save_pretrained()."
    )


def _pooling_config(model_dir: Path) -> dict[str, Any] | None:
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    for module in _read_json(modules_file):
        if module.get("type", "").endswith("Pooling"):
            pooling_dir = (model_dir / module.get("path", "")).resolve()
            if not pooling_dir.is_relative_to(model_dir.resolve()):
                raise InvalidModelError(f"modules.json points outside {str(model_dir)!r}.")
            config = _read_json(pooling_dir / "config.json")
            modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
            if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
                raise InvalidModelError(f"pooling {modes} is not supported; use mean or cls pooling.")
            normalize = any(m.get("type", "").endswith("Normalize") for m in _read_json(modules_file))
            return {"mode": "mean" if modes[0].endswith("mean_tokens") else "cls", "normalize": normalize}
    return None


class _LazyModules:
    """Module-level (so picklable, for worker processes) wrappers, built on first use."""

    _classes: dict[str, Any] = {}

    @classmethod
    def get(cls, name: str) -> Any:
        if name not in cls._classes:
            cls._classes.update(_define_wrappers())
        return cls._classes[name]


def _define_wrappers() -> dict[str, Any]:
    import torch

    global SentenceEmbedding, LastHiddenState

    class SentenceEmbedding(torch.nn.Module):  # type: ignore[no-redef]
        """Encoder + pooling (+ L2 normalization): the output is the sentence embedding."""

        def __init__(self, encoder: Any, mode: str, normalize: bool) -> None:
            super().__init__()
            self.encoder, self.mode, self.normalize = encoder, mode, normalize

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            if self.mode == "cls":
                emb = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
            return emb

    class LastHiddenState(torch.nn.Module):  # type: ignore[no-redef]
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    SentenceEmbedding.__qualname__ = "SentenceEmbedding"
    LastHiddenState.__qualname__ = "LastHiddenState"
    return {"SentenceEmbedding": SentenceEmbedding, "LastHiddenState": LastHiddenState}


def __getattr__(name: str) -> Any:  # pickle looks the classes up here by name
    if name in ("SentenceEmbedding", "LastHiddenState"):
        return _LazyModules.get(name)
    raise AttributeError(name)


def load_hf_dir(model_dir: Path | str, seq_len: int = DEFAULT_SEQ_LEN) -> Model:
    """Export a transformers encoder directory to ONNX (batch and sequence axes dynamic)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InvalidModelError(
            f"{str(model_dir)!r} is a folder without config.json; give a Hugging Face model directory."
        )
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise InvalidModelError(f"cannot read the config in {str(model_dir)!r}: {exc}") from None
    # Eager attention exports the MatMul/Softmax pattern that ORT's BERT fusions recognize.
    config._attn_implementation = "eager"
    encoder = AutoModel.from_config(config).eval()
    state = _load_state_dict(model_dir)
    prefix = f"{encoder.base_model_prefix}."
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise InvalidModelError(
            f"weights in {str(model_dir)!r} do not match the config: {len(missing)} missing, e.g. {missing[0]!r}."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    example = tokenizer(["edgeship"], padding="max_length", max_length=seq_len, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(example[n].to(torch.int64) for n in names)
    pooling = _pooling_config(model_dir)
    if pooling is not None:
        wrapper = _LazyModules.get("SentenceEmbedding")
        module, outputs = wrapper(encoder, pooling["mode"], pooling["normalize"]).eval(), ["sentence_embedding"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"sentence_embedding": {0: "batch"}}
    else:
        module, outputs = _LazyModules.get("LastHiddenState")(encoder).eval(), ["last_hidden_state"]
        axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    path = scratch_dir("hf") / "model.onnx"
    export_onnx(module, args, path, names, outputs, axes)
    check_parity(module, args, path, names)
    return Model(
        path=path,
        source=str(model_dir),
        kind="hf",
        tokenizer_dir=model_dir.resolve(),
        torch_module=module,
        export_inputs=args,
        teacher_module=module,
    )
