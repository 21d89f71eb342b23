"""Will a generative model fit a device? Memory with the KV cache, the longest context, and the
decode speed that the device's memory bandwidth allows. Estimates from the GGUF's own figures.

- memory = weights + KV cache (layers x KV heads x head dim x 2 x bytes per value x context)
  + working buffers (the logits and one token's activations through a layer, fp32);
- the longest context is what the RAM left after weights and buffers holds in KV cache, capped
  at the model's trained context;
- decode reads every weight and the whole KV cache once per token, so tokens/s is at most the
  memory bandwidth over those bytes (an upper bound: compute, and the runtime's own memory, come on top).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.errors import ConfigError

__all__ = ["llm_fit", "genai_fit"]


def llm_fit(info: Any, profile: Any, context: int | None = None, kv_bytes_per_value: int = 2) -> dict[str, Any]:
    """The fit report of a GGUF model (``edgeship.importers.gguf_file.GGUFInfo``) on a device profile."""
    kv_per_token = info.kv_cache_bytes_per_token(kv_bytes_per_value)
    if kv_per_token is None:
        raise ConfigError(f"{info.path} does not say its layers, heads and width; no KV-cache estimate is possible.")
    width = int(info.get("{arch}.embedding_length"))
    ffn = int(info.get("{arch}.feed_forward_length", 4 * width) or 4 * width)
    vocab = len(info.metadata.get("tokenizer.ggml.tokens", ())) or 32000
    return _fit(Shape(sum(t.nbytes for t in info.tensors), kv_per_token, info.get("{arch}.context_length"),
                      4 * (vocab + 4 * width + 2 * ffn), info.file_size), profile, context)


def genai_fit(folder: Path | str, size_bytes: int, profile: Any, context: int | None = None,
              measured_peak: int | None = None, prefill_chunk: int = 128) -> dict[str, Any]:
    """The fit report of an ONNX Runtime GenAI build: its KV cache is fp32 on the CPU, and the prompt
    goes in ``prefill_chunk`` tokens at a time (logits for each: chunk x vocabulary, fp32). With
    ``measured_peak`` (bytes, on this machine) the report sets the estimate beside the measurement."""
    import json

    model = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))["model"]
    d = model["decoder"]
    kv_per_token = int(d["num_hidden_layers"]) * int(d["num_key_value_heads"]) * int(d["head_size"]) * 2 * 4
    working = 4 * prefill_chunk * (int(model["vocab_size"]) + 4 * int(d["hidden_size"]))
    report = _fit(Shape(size_bytes, kv_per_token, model.get("context_length"), working, size_bytes), profile, context)
    if measured_peak:
        report["measured_peak_bytes"] = int(measured_peak)
        report["estimate_over_measured"] = report["memory_bytes"] / measured_peak
    return report


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model, in bytes (and tokens for the context)."""

    weights: int
    kv_per_token: int
    trained_context: int | None
    working: int
    file_size: int


def _fit(m: Shape, profile: Any, context: int | None) -> dict[str, Any]:
    trained = int(m.trained_context) if m.trained_context else None
    context = int(context or trained or 2048)
    if context < 1:
        raise ConfigError(f"--context must be >= 1 token, got {context}.")
    ram = profile.ram_mb * 2**20
    memory = m.weights + m.kv_per_token * context + m.working
    room = ram - m.weights - m.working
    longest = max(0, min(int(room // m.kv_per_token), trained or int(room // m.kv_per_token))) if room > 0 else 0
    reasons = []
    if memory > ram:
        reasons.append(f"needs {memory / 2**20:.1f} MiB at {context} tokens of context, the device has {profile.ram_mb:g} MiB")
    if m.file_size > profile.storage_mb * 2**20:
        reasons.append(f"the file ({m.file_size / 2**20:.1f} MiB) exceeds storage ({profile.storage_mb:g} MiB)")
    return {
        "target": profile.id,
        "is_estimate": True,
        "context": context,
        "memory_bytes": int(memory),
        "memory_breakdown_bytes": {"weights": int(m.weights), "kv_cache": int(m.kv_per_token * context),
                                   "working": int(m.working)},
        "kv_cache_bytes_per_token": int(m.kv_per_token),
        "longest_context": longest,
        "decode_tokens_per_s_bound": profile.mem_bandwidth_gbs * 1e9 / (m.weights + m.kv_per_token * context),
        "bandwidth_source": profile.sources.get("mem_bandwidth_gbs", ""),
        "fits": not reasons,
        "reasons": reasons,
    }
