"""The optimize pipeline: recipes -> candidates -> measurements -> gate -> Pareto -> best."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgeship._workspace import scratch_dir
from edgeship.dataset import Dataset, load_data, split
from edgeship.errors import ConfigError, EdgeshipError
from edgeship.evaluate import Metric, get_metric, measure_latencies, measure_peak_memory, run_outputs
from edgeship._graph import weight_sparsity
from edgeship.model import Model
from edgeship.passes import PassContext
from edgeship.recipes import Recipe, resolve_recipes

__all__ = [
    "Budget",
    "EvalSettings",
    "Candidate",
    "OptimizeResult",
    "OptimizationPlan",
    "plan_optimization",
    "optimize",
    "evaluate_model",
]

Objective = Literal["latency", "size", "accuracy"]
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Budget:
    """What a candidate may cost. ``max_accuracy_drop`` is in the metric's own units
    (accuracy is a fraction: 0.01 = one percentage point; cosine 0.01 = 1.0 -> 0.99)."""

    max_accuracy_drop: float = 0.01
    #: "faster" means at least this speedup, so that timing noise does not pass a candidate.
    min_speedup: float = 1.05

    def __post_init__(self) -> None:
        if not self.max_accuracy_drop >= 0:
            raise ConfigError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}.")
        if not self.min_speedup > 0:
            raise ConfigError(f"min_speedup must be > 0, got {self.min_speedup}.")


@dataclass(frozen=True)
class EvalSettings:
    """How candidates are measured: fixed threads, batch 1 latency over warm runs."""

    threads: int = 2
    batch_size: int = 1
    warmup: int = 10
    runs: int = 100
    #: latency is timed round-robin over all candidates in this many rounds
    rounds: int = 5
    measure_memory: bool = True
    max_eval_samples: int = 1000
    #: tokens per sentence when data is a .txt file for a Hugging Face text model
    text_max_length: int = 64

    def __post_init__(self) -> None:
        for name in ("threads", "batch_size", "runs", "max_eval_samples", "text_max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclass
class Candidate:
    recipe: str
    steps: list[dict[str, Any]]
    status: str = "ok"  # ok | rejected | failed
    reason: str = ""
    model: Model | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    pareto: bool = False
    path: str | None = None

    @property
    def notes(self) -> list[str]:
        from edgeship.passes import PASSES

        names = [s["pass"] for s in self.steps]
        return sorted({PASSES[n].note for n in names if n in PASSES and PASSES[n].note})

    def to_dict(self) -> dict[str, Any]:
        lineage = [s.to_dict() for s in self.model.lineage] if self.model else []
        return {
            "recipe": self.recipe,
            "steps": self.steps,
            "lineage": lineage,
            "status": self.status,
            "reason": self.reason,
            "path": self.path,
            "metrics": self.metrics,
            "pareto": self.pareto,
            "notes": self.notes,
        }


@dataclass
class OptimizeResult:
    baseline: Candidate
    candidates: list[Candidate]
    best: Candidate | None
    metric: Metric
    budget: Budget
    settings: EvalSettings
    objective: str
    source: str

    def report(self, out_dir: Path | str) -> Path:
        """Write report.json, report.html, pareto.png, best.onnx and candidates/ into ``out_dir``."""
        from edgeship.report import write_report

        return write_report(self, Path(out_dir))

    def to_dict(self) -> dict[str, Any]:
        from edgeship import __version__

        return {
            "type": "edgeship.report",
            "version": 1,
            "edgeship_version": __version__,
            "model": self.source,
            "metric": {"name": self.metric.name, "higher_is_better": self.metric.higher_is_better},
            "budget": self.budget.__dict__,
            "settings": self.settings.__dict__,
            "objective": self.objective,
            "baseline": {"metrics": self.baseline.metrics},
            "candidates": [c.to_dict() for c in self.candidates],
            "best": self.best.recipe if self.best else None,
        }


def compressed_size(model: Model) -> int:
    """Bytes of the model's files deflated (zip's method, level 6), as they would travel."""
    compressor_total = 0
    for path in model.files:
        compressor = zlib.compressobj(6)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                compressor_total += len(compressor.compress(chunk))
        compressor_total += len(compressor.flush())
    return compressor_total


def _first_sample(data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[:batch_size]) for k, v in data.inputs.items()}


def evaluate_model(
    model: Model,
    data: Dataset,
    metric: Metric,
    reference: np.ndarray | None,
    settings: EvalSettings,
) -> tuple[dict[str, Any], np.ndarray]:
    """Quality, size, memory, params and MACs of ``model`` (latency is timed separately,
    interleaved over all candidates). Returns (metrics, outputs); ``reference`` None = baseline."""
    session = model.session(settings.threads)
    eval_batch = 32 if model.has_batch_axis else 1
    outputs = run_outputs(session, data.batches(eval_batch))
    ref = outputs if reference is None else reference
    metrics: dict[str, Any] = {metric.name: metric.fn(outputs, ref, data.labels)}
    feeds = _first_sample(data, settings.batch_size)
    metrics["size_bytes"] = model.size_bytes
    metrics["compressed_size_bytes"] = compressed_size(model)
    metrics["sparsity"] = weight_sparsity(model.path)
    if settings.measure_memory:
        metrics["peak_memory_bytes"] = measure_peak_memory(model.path, feeds, settings.threads)
    shapes = {k: v.shape for k, v in feeds.items()}
    metrics.update(model.stats(shapes))
    return metrics, outputs


def _pareto(points: list[tuple[float, ...]]) -> list[bool]:
    """Non-dominated flags; every coordinate is lower-is-better."""
    flags = []
    for i, p in enumerate(points):
        dominated = any(
            all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
            for j, q in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def _choose(candidates: list[Candidate], metric: Metric, objective: str) -> Candidate | None:
    ok = [c for c in candidates if c.status == "ok"]
    if not ok:
        return None
    sign = -1.0 if metric.higher_is_better else 1.0
    keys = {
        "latency": lambda c: (c.metrics["latency_ms_p50"], c.metrics["size_bytes"]),
        "size": lambda c: (c.metrics["size_bytes"], c.metrics["latency_ms_p50"]),
        "accuracy": lambda c: (sign * c.metrics[metric.name], c.metrics["latency_ms_p50"]),
    }
    if objective not in keys:
        raise ConfigError(f"unknown objective {objective!r}; choose from {sorted(keys)}.")
    return min(ok, key=keys[objective])


def _gate(c: Candidate, base: dict[str, Any], metric: Metric, budget: Budget) -> None:
    m = c.metrics
    m["speedup"] = base["latency_ms_p50"] / m["latency_ms_p50"]
    m["size_ratio"] = base["size_bytes"] / m["size_bytes"]
    m["metric_drop"] = metric.drop(base[metric.name], m[metric.name])
    reasons = []
    if m["size_ratio"] <= 1.0:
        reasons.append(f"not smaller than the baseline (size ratio {m['size_ratio']:.2f}x)")
    if m["speedup"] < budget.min_speedup:
        reasons.append(
            f"not faster than the baseline (speedup {m['speedup']:.2f}x, needs {budget.min_speedup:.2f}x)"
        )
    if m["metric_drop"] > budget.max_accuracy_drop:
        reasons.append(
            f"{metric.name} drops by {m['metric_drop']:.4f}, more than the allowed {budget.max_accuracy_drop}"
        )
    if reasons:
        c.status, c.reason = "rejected", "; ".join(reasons)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


@dataclass
class OptimizationPlan:
    """Everything checked and loaded before any work starts: bad input fails here."""

    model: Model
    calibration: Dataset
    evaluation: Dataset
    train: Dataset | None
    metric: Metric
    recipes: list[Recipe]
    budget: Budget
    settings: EvalSettings
    objective: str

    @property
    def steps(self) -> int:
        """Progress steps: the baseline, each recipe, and the interleaved timing."""
        return len(self.recipes) + 2

    def run(self, progress: ProgressFn | None = None) -> OptimizeResult:
        """Build and measure every candidate, gate them, and choose the best."""
        notify = progress or (lambda done, total, label: None)
        settings, metric, total = self.settings, self.metric, self.steps
        notify(0, total, "baseline")
        base_metrics, reference = evaluate_model(self.model, self.evaluation, metric, None, settings)
        baseline = Candidate("baseline", [], "ok", "", self.model, base_metrics)
        baseline.metrics.update(speedup=1.0, size_ratio=1.0, metric_drop=0.0)

        candidates: list[Candidate] = []
        for i, recipe in enumerate(self.recipes, start=1):
            notify(i, total, recipe.name)
            cand = Candidate(recipe.name, [s.to_dict() for s in recipe.steps])
            def say(text: str, i: int = i) -> None:
                notify(i, total, text)

            try:
                ctx = PassContext(scratch_dir(f"recipe-{i:02d}"), self.calibration, self.train, say)
                cand.model = recipe.apply(self.model, ctx)
                cand.metrics, _ = evaluate_model(cand.model, self.evaluation, metric, reference, settings)
            except Exception as exc:  # a failing recipe is recorded; the others still run
                cand.status, cand.reason, cand.model = "failed", _one_line(exc), None
            candidates.append(cand)

        measured = [baseline] + [c for c in candidates if c.status != "failed"]
        notify(total - 1, total, f"timing {len(measured)} models in {settings.rounds} interleaved rounds")
        feeds = _first_sample(self.evaluation, settings.batch_size)
        sessions = [c.model.session(settings.threads) for c in measured]
        timings = measure_latencies(sessions, feeds, settings.warmup, settings.runs, settings.rounds)
        for c, timing in zip(measured, timings):
            c.metrics.update(timing)
        for c in candidates:
            if c.status != "failed":
                _gate(c, baseline.metrics, metric, self.budget)
        notify(total, total, "done")

        sign = -1.0 if metric.higher_is_better else 1.0
        flags = _pareto(
            [(sign * c.metrics[metric.name], c.metrics["latency_ms_p50"], c.metrics["size_bytes"]) for c in measured]
        )
        for c, flag in zip(measured, flags):
            c.pareto = flag
        best = _choose(candidates, metric, self.objective)
        return OptimizeResult(baseline, candidates, best, metric, self.budget, settings, self.objective,
                              self.model.source)


def plan_optimization(
    model: Any,
    data: Any,
    eval_data: Any = None,
    metric: Any = None,
    recipes: Any = "auto",
    budget: Budget | None = None,
    settings: EvalSettings | None = None,
    objective: Objective = "latency",
    train_data: Any = None,
) -> OptimizationPlan:
    """Load and check the model, data, metric and recipes; raise on bad input. See :func:`optimize`."""
    from edgeship.importers import load

    budget = budget or Budget()
    settings = settings or EvalSettings()
    if objective not in ("latency", "size", "accuracy"):
        raise ConfigError(f"unknown objective {objective!r}; choose latency, size or accuracy.")
    model = load(model)
    calibration = load_data(data, model, settings.text_max_length)
    if eval_data is None:
        calibration, evaluation = split(calibration)
    else:
        evaluation = load_data(eval_data, model, settings.text_max_length)
    evaluation = evaluation.take(slice(0, settings.max_eval_samples))
    metric = get_metric(metric, evaluation.labels is not None)
    train = None
    if train_data is not None:
        from edgeship.passes._torch import check_train_labels

        train = load_data(train_data, model, settings.text_max_length)
        check_train_labels(model, train)
    explicit = not (isinstance(recipes, str) and recipes.strip() == "auto") and recipes is not None
    plan: list[Recipe] = []
    for recipe in resolve_recipes(recipes, model, with_training=train is not None):
        try:
            recipe.check(model, PassContext(scratch_dir("check"), calibration, train))
            plan.append(recipe)
        except EdgeshipError:
            if explicit:  # the user asked for it by name: say why it cannot run
                raise
    return OptimizationPlan(model, calibration, evaluation, train, metric, plan, budget, settings, objective)


def optimize(
    model: Any,
    data: Any,
    eval_data: Any = None,
    metric: Any = None,
    recipes: Any = "auto",
    budget: Budget | None = None,
    settings: EvalSettings | None = None,
    objective: Objective = "latency",
    progress: ProgressFn | None = None,
    train_data: Any = None,
) -> OptimizeResult:
    """Try each recipe on ``model``, measure every candidate, and pick the best that passes.

    Args:
        model: a Model, an .onnx path, a Hugging Face directory or ``module:function``.
        data: calibration data (.npz/.txt path, dict of arrays or Dataset). When
            ``eval_data`` is None it is split into disjoint calibration and evaluation halves.
        metric: ``accuracy`` (needs labels), ``cosine``, ``mse``, ``module:function``, a
            callable, or None for accuracy-if-labelled-else-cosine.
        recipes: ``"auto"``, ``"name1,name2"``, a recipe file, Recipe objects.
        budget: the allowed quality drop. A candidate must also be smaller and faster.
        objective: what ``best`` minimises among passing candidates.
        progress: called as ``progress(done, total, label)``.
        train_data: labelled training data (.npz, dict, Dataset) for pruning fine-tunes and
            distillation; with it, ``auto`` also tries pruning and distillation chains.
    """
    plan = plan_optimization(model, data, eval_data, metric, recipes, budget, settings, objective, train_data)
    return plan.run(progress)
