"""Import a generative (causal) language model: a GGUF file or a Hugging Face directory, with its
tokenizer and chat template, as a float PyTorch model, and measure its perplexity on held-out text.

Families are recognised from the config (``model_type``, or a GGUF's ``general.architecture``):
llama, qwen2, phi3, gemma (and gemma2), mistral. Anything else is refused by name. A GGUF file is
checked by :func:`edgeship.importers.gguf_file.read_gguf` before transformers reads it (and
dequantizes it to float: such a model's float weights are its GGUF blocks, dequantized).
Weights of a directory load through safetensors only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.errors import ConfigError, InvalidModelError

__all__ = ["CausalLM", "load_causal_lm", "is_causal_lm", "FAMILIES"]

FAMILIES = ("llama", "qwen2", "phi3", "gemma", "gemma2", "mistral")


@dataclass
class CausalLM:
    """A float causal LM with its tokenizer: the reference every compressed candidate is measured against."""

    source: str
    family: str
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    context_length: int
    gguf: Any = field(default=None, repr=False)  # GGUFInfo when imported from a GGUF file

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def save(self, out: Path | str) -> Path:
        """A Hugging Face directory of the float model (safetensors), its config and tokenizer: what
        engine builders (ONNX Runtime GenAI's) take. A GGUF import is saved as the float model it
        dequantized to (transformers will not save a GGUF-loaded model itself)."""
        import json

        from safetensors.torch import save_model

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(out / "model.safetensors"))  # handles tied embeddings
        config = self.model.config.to_dict()
        config.pop("quantization_config", None)  # the GGUF's; these weights are float
        config["architectures"] = [type(self.model).__name__]
        config["torch_dtype"] = config["dtype"] = "float32"
        (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.tokenizer.save_pretrained(str(out))
        return out

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's own chat template applied to ``messages``, ready for the assistant's turn."""
        if not self.chat_template:
            raise ConfigError(f"{self.source} has no chat template; give a plain prompt instead.")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def perplexity(self, text: str, window: int = 512) -> float:
        """exp(mean next-token loss) over ``text``, in consecutive windows of ``window`` tokens."""
        import torch

        if not 2 <= window <= self.context_length:
            raise ConfigError(f"the perplexity window must be 2..{self.context_length} tokens, got {window}.")
        ids = self.tokenizer(text, return_tensors="pt").input_ids[0]
        if len(ids) < 2:
            raise ConfigError("the held-out text has fewer than 2 tokens; give more text.")
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(ids) - 1, window):
                chunk = ids[start:start + window + 1]  # predicts chunk[1:] from chunk[:-1]
                if len(chunk) < 2:
                    break
                logits = self.model(chunk[None, :-1]).logits[0]
                loss = torch.nn.functional.cross_entropy(logits.float(), chunk[1:], reduction="sum")
                total, count = total + float(loss), count + len(chunk) - 1
        return math.exp(total / count)


def is_causal_lm(source: Path | str) -> bool:
    """A GGUF file, or a Hugging Face directory whose config names a ...ForCausalLM architecture."""
    import json

    path = Path(source)
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    config = path / "config.json"
    if not config.is_file() or config.stat().st_size > 1 << 20:
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in architectures)


def _family(name: str | None, source: Path) -> str:
    if name not in FAMILIES:
        raise InvalidModelError(f"{str(source)!r} is a {name or 'model of unknown family'}; edgeship imports the "
                                f"causal LM families {', '.join(FAMILIES)}.")
    return str(name)


def load_causal_lm(source: Path | str) -> CausalLM:
    """A GGUF file or a Hugging Face causal-LM directory, as a float model with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".gguf":
        from edgeship.importers.gguf_file import read_gguf

        info = read_gguf(path)  # refuses a corrupt or hostile file before transformers allocates anything
        family = _family(info.architecture, path)
        where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
        context = int(info.get("{arch}.context_length") or 2048)
    elif path.is_dir() and (path / "config.json").is_file():
        info = None
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        family = _family(getattr(config, "model_type", None), path)
        if not any(path.glob("*.safetensors")):
            raise InvalidModelError(f"{str(path)!r} has no .safetensors weights; edgeship loads no pickled checkpoint.")
        from edgeship.importers.huggingface import check_config_fits_weights

        check_config_fits_weights(lambda: AutoModelForCausalLM.from_config(config), path)
        where = {"pretrained_model_name_or_path": str(path), "use_safetensors": True}
        context = int(getattr(config, "max_position_embeddings", 2048))
    else:
        raise InvalidModelError(f"{str(path)!r} is neither a .gguf file nor a Hugging Face model directory.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(**where, local_files_only=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"transformers cannot load {str(path)!r}: {str(exc).splitlines()[0]}") from None
    return CausalLM(str(path), family, model, tokenizer, context, info)
