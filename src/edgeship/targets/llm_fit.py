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

from typing import Any

from edgeship.errors import ConfigError

__all__ = ["llm_fit"]


def llm_fit(info: Any, profile: Any, context: int | None = None, kv_bytes_per_value: int = 2) -> dict[str, Any]:
    """The fit report of a GGUF model (``edgeship.importers.gguf_file.GGUFInfo``) on a device profile."""
    kv_per_token = info.kv_cache_bytes_per_token(kv_bytes_per_value)
    if kv_per_token is None:
        raise ConfigError(f"{info.path} does not say its layers, heads and width; no KV-cache estimate is possible.")
    trained = info.get("{arch}.context_length")
    context = int(context or trained or 2048)
    if context < 1:
        raise ConfigError(f"--context must be >= 1 token, got {context}.")
    weights = sum(t.nbytes for t in info.tensors)
    width = int(info.get("{arch}.embedding_length"))
    ffn = int(info.get("{arch}.feed_forward_length", 4 * width) or 4 * width)
    vocab = len(info.metadata.get("tokenizer.ggml.tokens", ())) or 32000
    working = 4 * (vocab + 4 * width + 2 * ffn)
    ram = profile.ram_mb * 2**20
    memory = weights + kv_per_token * context + working
    room = ram - weights - working
    longest = max(0, min(int(room // kv_per_token), int(trained or room // kv_per_token))) if room > 0 else 0
    bandwidth = profile.mem_bandwidth_gbs * 1e9
    reasons = []
    if memory > ram:
        reasons.append(f"needs {memory / 2**20:.1f} MiB at {context} tokens of context, the device has {profile.ram_mb:g} MiB")
    if info.file_size > profile.storage_mb * 2**20:
        reasons.append(f"the file ({info.file_size / 2**20:.1f} MiB) exceeds storage ({profile.storage_mb:g} MiB)")
    return {
        "target": profile.id,
        "is_estimate": True,
        "context": context,
        "memory_bytes": int(memory),
        "memory_breakdown_bytes": {"weights": int(weights), "kv_cache": int(kv_per_token * context),
                                   "working": int(working)},
        "kv_cache_bytes_per_token": int(kv_per_token),
        "longest_context": longest,
        "decode_tokens_per_s_bound": bandwidth / (weights + kv_per_token * context),
        "bandwidth_source": profile.sources.get("mem_bandwidth_gbs", ""),
        "fits": not reasons,
        "reasons": reasons,
    }
