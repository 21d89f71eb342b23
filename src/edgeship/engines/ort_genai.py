"""ONNX Runtime GenAI: build a causal LM into its ONNX format (fp32, int8 or int4 weights) with the
model builder, and generate with a KV cache on the device (numpy + onnxruntime-genai; no torch).

Building needs the build side (transformers, torch); generating needs only ``onnxruntime-genai``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from edgeship.core.errors import ConfigError, EdgeshipError, InvalidModelError

__all__ = ["build_genai", "GenAIModel", "Sampling", "TokenScores", "Timing"]

Precision = Literal["fp32", "int8", "int4"]


def build_genai(model_dir: Path | str, out: Path | str, precision: Precision = "int4",
                **extra_options: Any) -> Path:
    """Run ONNX Runtime GenAI's model builder on a Hugging Face causal-LM directory (CPU execution).

    ``extra_options`` are the builder's (e.g. ``int4_block_size=32``, ``int4_accuracy_level=4``)."""
    if precision not in ("fp32", "int8", "int4"):
        raise ConfigError(f"precision must be fp32, int8 or int4, got {precision!r}.")
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise ConfigError("building for ONNX Runtime GenAI needs onnxruntime-genai: pip install 'edgeship[llm]'.")
    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").is_file():
        raise InvalidModelError(f"{str(model_dir)!r} is not a Hugging Face model directory (no config.json).")
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(model_dir), "-i", str(model_dir),
               "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out / ".cache")]
    if extra_options:  # the builder's documented command line, as its README gives it
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra_options.items())]
    done = subprocess.run(command, capture_output=True, text=True)
    shutil.rmtree(out / ".cache", ignore_errors=True)
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise InvalidModelError(f"ONNX Runtime GenAI's builder refused {str(model_dir)!r}: {last}")
    return out


@dataclass(frozen=True)
class TokenScores:
    """Next-token losses over a text: perplexity, and the top-1 prediction at every position."""

    nll: float  # summed negative log-likelihood (nats)
    count: int
    top1: tuple[int, ...]

    @property
    def perplexity(self) -> float:
        import math

        return math.exp(self.nll / self.count)

    def agreement(self, reference: "TokenScores") -> float:
        """The share of positions where this model's top-1 next token is the reference's."""
        if len(reference.top1) != len(self.top1):
            raise ConfigError("next-token agreement needs both models scored on the same tokens.")
        return sum(a == b for a, b in zip(self.top1, reference.top1)) / max(1, len(self.top1))


@dataclass(frozen=True)
class Timing:
    """One generation, timed: the prompt (to the first token) and the decode of the rest."""

    prompt_tokens: int
    prompt_s: float
    decode_tokens: int
    decode_s: float

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_s

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_tokens else 0.0


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked; ``temperature=0`` is greedy. ``seed`` makes sampling repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 1 or self.repetition_penalty <= 0:
            raise ConfigError(f"sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 1 and a positive "
                              f"repetition penalty; got {self}.")

    def options(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "repetition_penalty": self.repetition_penalty}
        out = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
               "repetition_penalty": self.repetition_penalty}
        if self.seed is not None:
            out["random_seed"] = int(self.seed)
        return out


class GenAIModel:
    """A built model folder, opened for generation."""

    def __init__(self, folder: Path | str, prefill_chunk: int = 128) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise ConfigError("generating needs onnxruntime-genai: pip install 'edgeship[llm]'.") from None
        self._og = og
        self.folder = Path(folder)
        self._session: Any = None
        self.prefill_chunk = prefill_chunk
        try:
            self.model = og.Model(str(folder))
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError for a folder it cannot load
            raise EdgeshipError(f"ONNX Runtime GenAI cannot load {str(folder)!r}: {str(exc).splitlines()[0]}") from None

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling()) -> Iterator[int]:
        """Generate token ids one at a time (the KV cache stays in the generator)."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt_ids) + max_new_tokens, **sampling.options())
        generator = og.Generator(self.model, params)
        self._prefill(generator, prompt_ids)
        while not generator.is_done():
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])

    def _prefill(self, generator: Any, prompt_ids: Sequence[int]) -> None:
        """The prompt in chunks: the graph computes logits for every prompt position, and in one piece
        a long prompt's logits alone are context x vocabulary x 4 bytes (200 MB for 1k tokens of SmolLM2)."""
        ids = list(prompt_ids)
        for start in range(0, len(ids), self.prefill_chunk):
            generator.append_tokens(ids[start:start + self.prefill_chunk])

    def timed(self, prompt_ids: Sequence[int], new_tokens: int, clock: Any = None) -> Timing:
        """Greedy generation of exactly ``new_tokens`` (end-of-sequence ignored), timed by ``clock``."""
        import time

        clock = clock or time.perf_counter
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt_ids) + new_tokens, min_length=len(prompt_ids) + new_tokens,
                                  do_sample=False)
        generator = og.Generator(self.model, params)
        start = clock()
        self._prefill(generator, prompt_ids)
        generator.generate_next_token()
        generator.get_next_tokens()  # the token is computed by the time it is read
        first = clock()
        n = 0
        while n < new_tokens - 1 and not generator.is_done():
            generator.generate_next_token()
            generator.get_next_tokens()
            n += 1
        return Timing(len(prompt_ids), first - start, n, clock() - first)

    def scores(self, ids: Sequence[int], window: int = 512, threads: int | None = None) -> TokenScores:
        """Next-token losses over ``ids`` in consecutive windows, from the built ONNX graph itself
        (plain ONNX Runtime: the same weights and kernels that generate)."""
        import numpy as np

        if len(ids) < 2 or window < 2:
            raise ConfigError("scoring needs at least 2 tokens and a window of at least 2.")
        window = min(window, self.context_length)  # positions beyond the trained context have no rotary table
        nll, count, top1 = 0.0, 0, []
        ids = np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1]
            if len(chunk) < 2:
                break
            logits = self.logits(chunk[:-1], threads).astype(np.float64)
            peak = logits.max(-1)
            lse = peak + np.log(np.exp(logits - peak[:, None]).sum(-1))
            nll += float((lse - logits[np.arange(len(chunk) - 1), chunk[1:]]).sum())
            count += len(chunk) - 1
            top1 += logits.argmax(-1).tolist()
        return TokenScores(nll, count, tuple(int(t) for t in top1))

    @cached_property
    def config(self) -> dict[str, Any]:
        """The ``model`` section of genai_config.json (read once)."""
        import json

        return json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))["model"]

    @property
    def context_length(self) -> int:
        return int(self.config["context_length"])

    def logits(self, ids: Sequence[int], threads: int | None = None) -> Any:
        """[len(ids), vocabulary] next-token logits from an empty cache, through plain ONNX Runtime."""
        import numpy as np

        from edgeship.core.session import open_session

        if self._session is None:
            self._session = open_session(self.folder / "model.onnx", threads=threads or 2)
        heads, dim = self._kv_dims()
        x = np.asarray(ids, dtype=np.int64)[None]
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
        for spec in self._session.get_inputs():
            if spec.name.startswith("past_key_values"):
                feeds[spec.name] = np.zeros((1, heads, 0, dim), np.float32)
            elif spec.name == "position_ids":
                feeds[spec.name] = np.arange(x.shape[1], dtype=np.int64)[None]
        return self._session.run(["logits"], feeds)[0][0]

    def _kv_dims(self) -> tuple[int, int]:
        decoder = self.config["decoder"]
        return int(decoder["num_key_value_heads"]), int(decoder["head_size"])

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling()) -> list[int]:
        return list(self.stream(prompt_ids, max_new_tokens, sampling))
