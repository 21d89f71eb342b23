"""Optimize a generative model: build every engine candidate, measure them on one front, gate on
perplexity, pick one.

The reference is the float model built for the same engine (fp32 ONNX Runtime GenAI, whose greedy
tokens are torch's). Every candidate is scored on the same held-out tokens (perplexity, and the
share of positions where its top-1 next token is the reference's), timed in interleaved rounds
(prompt and decode tokens/s, medians), sized, and its peak resident memory measured in a fresh
process at ``context`` tokens. The gate rejects a candidate whose perplexity exceeds the
reference's by more than ``max_perplexity_increase``; the choice is the fastest decoder (or the
smallest file) among the rest: a larger candidate is chosen only when it decodes measurably
faster (a confidence interval over the paired rounds), since speeds within noise are no reason to ship more bytes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeship.core.errors import ConfigError, EdgeshipError

__all__ = ["LLMSettings", "LLMCandidate", "LLMResult", "optimize_llm", "CANDIDATES", "AUTO"]

ProgressFn = Callable[[int, int, str], None]  # (done, total, what)
MAX_TEXT_BYTES = 16 << 20


def _builder(precision: str, **options: Any) -> Callable[[Path, Path, Path], Path]:
    def build(hf_dir: Path, fp32: Path, out: Path) -> Path:
        from edgeship.engines.ort_genai import build_genai

        return build_genai(hf_dir, out, precision, **options)  # type: ignore[arg-type]

    return build


def _blockmin(hf_dir: Path, fp32: Path, out: Path) -> Path:
    from edgeship.engines.blockmin import blockmin_int4

    return blockmin_int4(fp32, out)


#: candidate name -> how it is built from (the float Hugging Face directory, the fp32 build, out)
CANDIDATES: dict[str, Callable[[Path, Path, Path], Path]] = {
    "int4-blockmin": _blockmin,  # keeps a Q4_1 model's blocks; 8-bit embedding and output layer
    "int4": _builder("int4"),  # ONNX Runtime GenAI's default: symmetric blocks of 32, int8 compute
    "int8": _builder("int8"),
    # the builder's own options (asymmetric and mixed precision need untied embeddings here)
    "int4-asym": _builder("int4", is_symmetric="false", shared_embeddings="false"),
    "int4-kquant-mixed": _builder("int4", algo_config="k_quant_mixed", shared_embeddings="false"),
}
#: what `--recipes auto` builds (the others on request: on SmolLM2 they lose 42% and 14%)
AUTO = ("int4-blockmin", "int4", "int8")


@dataclass(frozen=True)
class LLMSettings:
    """How candidates are chosen and measured."""

    candidates: tuple[str, ...] = AUTO
    max_perplexity_increase: float = 0.02  # the quality gate: +2% over the float model
    objective: Literal["decode", "size"] = "decode"
    window: int = 512  # perplexity window, tokens
    max_eval_tokens: int = 4096  # held-out tokens scored at most
    prompt_tokens: int = 128
    decode_tokens: int = 64
    rounds: int = 3
    context: int = 1024  # peak memory is measured with this many tokens in the cache

    def __post_init__(self) -> None:
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            raise ConfigError(f"unknown LLM candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}.")
        if not 0 <= self.max_perplexity_increase < 10:
            raise ConfigError(f"max_perplexity_increase is a fraction (0.02 = 2%), got {self.max_perplexity_increase}.")
        if self.objective not in ("decode", "size"):
            raise ConfigError(f"objective must be decode or size, got {self.objective!r}.")
        small = {k: v for k, v in asdict(self).items() if isinstance(v, int) and k != "candidates" and v < 1}
        if small or self.window < 2 or self.context <= 16:
            raise ConfigError(f"token counts must be positive (window >= 2, context > 16), got {small or asdict(self)}.")


@dataclass
class LLMCandidate:
    name: str
    folder: Path
    size_bytes: int = 0
    perplexity: float = 0.0
    agreement: float = 0.0
    prompt_tps: float = 0.0
    decode_tps: float = 0.0
    peak_memory_bytes: int = 0
    status: str = "ok"  # ok | rejected | failed | reference
    reason: str = ""
    pareto: bool = False
    fit: dict[str, Any] | None = None
    timings: list[tuple[float, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("timings", "folder")}
        out["folder"] = self.folder.name
        return out


@dataclass
class LLMResult:
    source: str
    reference: LLMCandidate
    candidates: list[LLMCandidate]
    chosen: LLMCandidate | None
    settings: LLMSettings
    eval_tokens: int
    target: str | None = None
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        from edgeship.core.cpu import machine

        return {"kind": "llm", "source": self.source, "settings": {**asdict(self.settings)},
                "eval_tokens": self.eval_tokens, "target": self.target, "machine": machine(),
                "reference": self.reference.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
                "chosen": self.chosen.name if self.chosen else None, "why": self.why}


def _read_text(path: Path | str) -> str:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--data {str(path)!r} is not a file; give held-out text (.txt).")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ConfigError(f"--data {str(path)!r} is {path.stat().st_size >> 20} MiB; give at most "
                          f"{MAX_TEXT_BYTES >> 20} MiB of held-out text.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--data {str(path)!r} is not UTF-8 text.") from None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _peak_memory(folder: Path, context: int) -> int:
    done = subprocess.run([sys.executable, "-m", "edgeship._memprobe", "--llm", str(folder), str(context)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise EdgeshipError(f"the memory probe failed on {folder.name}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(json.loads(done.stdout)["peak_memory_bytes"])


def _fit(c: LLMCandidate, target: str | None, context: int) -> dict[str, Any] | None:
    if target is None:
        return None
    from edgeship.targets import load_profile
    from edgeship.targets.llm_fit import genai_fit

    return genai_fit(c.folder, c.size_bytes, load_profile(target), context, measured_peak=c.peak_memory_bytes)


def _gate(c: LLMCandidate, ref: LLMCandidate, limit: float) -> None:
    increase = c.perplexity / ref.perplexity - 1
    if increase > limit:
        c.status, c.reason = "rejected", f"perplexity {c.perplexity:.3f} is {increase:+.1%} over float (limit +{limit:.0%})"
    elif c.fit is not None and not c.fit["fits"]:
        c.status, c.reason = "rejected", "; ".join(c.fit["reasons"])


def _front(cands: list[LLMCandidate]) -> None:
    from edgeship.search.gate import pareto

    points = [(-c.decode_tps, -c.prompt_tps, c.size_bytes, c.perplexity, c.peak_memory_bytes) for c in cands]
    for c, flag in zip(cands, pareto(points)):
        c.pareto = flag


def _choose(passing: list[LLMCandidate], objective: str) -> tuple[LLMCandidate | None, str]:
    """The smallest passing candidate, unless (objective ``decode``) a larger one decodes measurably
    faster: the 95% interval of its paired per-round speedup lies above 1."""
    from edgeship.search.gate import speedup_interval

    if not passing:
        return None, "every candidate was rejected"
    order = sorted(passing, key=lambda c: c.size_bytes)
    best, why = order[0], "the smallest that passes the gate"
    if objective == "size":
        return best, why
    for c in order[1:]:
        est = speedup_interval([1 / d for _, d in best.timings], [1 / d for _, d in c.timings])
        if est.low > 1.0:
            best, why = c, f"decodes measurably faster than the smaller candidates ({est.describe()})"
    return best, why


def optimize_llm(source: Path | str, data: Path | str, out: Path | str, settings: LLMSettings = LLMSettings(),
                 target: str | None = None, progress: ProgressFn | None = None) -> LLMResult:
    """Build, measure and gate every candidate of a GGUF file or Hugging Face causal LM; the chosen
    one is copied to ``out/model`` (an ONNX Runtime GenAI folder that ``edgeship pack`` takes)."""
    from edgeship.engines.ort_genai import GenAIModel, build_genai
    from edgeship.importers.causal_lm import load_causal_lm

    text, out = _read_text(data), Path(out)
    steps = 3 + 2 * len(settings.candidates) + settings.rounds
    tick = (lambda what, i: progress(i, steps, what)) if progress else (lambda what, i: None)
    work = out / "candidates"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tick("importing", 0)
    lm = load_causal_lm(source)
    hf_dir = lm.save(out / ".float-hf")
    del lm
    tick("building fp32", 1)
    ref = LLMCandidate("fp32", build_genai(hf_dir, work / "fp32", "fp32"), status="reference")
    cands = [ref]
    for i, name in enumerate(settings.candidates):
        tick(f"building {name}", 2 + i)
        try:
            cands.append(LLMCandidate(name, CANDIDATES[name](hf_dir, ref.folder, work / name)))
        except EdgeshipError as exc:
            cands.append(LLMCandidate(name, work / name, status="failed", reason=str(exc)))
    shutil.rmtree(hf_dir, ignore_errors=True)
    live = [c for c in cands if c.status != "failed"]
    models = {c.name: GenAIModel(c.folder) for c in live}
    ids = models["fp32"].encode(text)[: settings.max_eval_tokens + 1]
    if len(ids) < 2 * settings.prompt_tokens:
        raise ConfigError(f"--data holds {len(ids)} tokens; give at least {2 * settings.prompt_tokens} of held-out text.")
    reference_scores = None
    for i, c in enumerate(live):
        tick(f"scoring {c.name}", 2 + len(settings.candidates) + i)
        scores = models[c.name].scores(ids, settings.window)
        reference_scores = reference_scores or scores
        c.perplexity, c.agreement, c.size_bytes = scores.perplexity, scores.agreement(reference_scores), _size(c.folder)
    prompt = ids[: settings.prompt_tokens]
    for r in range(settings.rounds):  # interleaved: every candidate sees the same machine state
        tick(f"timing, round {r + 1}/{settings.rounds}", 3 + 2 * len(settings.candidates) + r - 1)
        for c in live:
            t = models[c.name].timed(prompt, settings.decode_tokens)
            c.timings.append((t.prompt_tps, t.decode_tps))
    models.clear()
    for c in live:
        c.prompt_tps = statistics.median(p for p, _ in c.timings)
        c.decode_tps = statistics.median(d for _, d in c.timings)
        c.peak_memory_bytes = _peak_memory(c.folder, settings.context)
        c.fit = _fit(c, target, settings.context)
        if c is not ref:
            _gate(c, ref, settings.max_perplexity_increase)
    _front(live)
    chosen, why = _choose([c for c in live if c.status == "ok"], settings.objective)
    result = LLMResult(str(source), ref, cands[1:], chosen, settings, len(ids) - 1, target, why)
    tick("writing the report", steps - 1)
    _write(result, out)
    return result


def _write(result: LLMResult, out: Path) -> None:
    from edgeship.core.files import atomic_write_text
    from edgeship.report.llm import write_llm_report

    if result.chosen is not None:
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(result.chosen.folder, out / "model")
        meta = {"source": result.source, "candidate": result.chosen.name, "perplexity": result.chosen.perplexity,
                "reference_perplexity": result.reference.perplexity, "agreement": result.chosen.agreement}
        atomic_write_text(out / "model" / "edgeship.json", json.dumps(meta, indent=2))
    write_llm_report(result, out)
