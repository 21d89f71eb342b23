"""The optimize pipeline: recipes -> candidates -> measurements -> gate -> Pareto -> best."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgeship._workspace import scratch_dir
from edgeship.core.report import ModelInfo
from edgeship.dataset import Dataset, load_data, split
from edgeship.errors import ConfigError, EdgeshipError
from edgeship.evaluate import Metric, get_metric, measure_latencies, measure_peak_memory, run_outputs
from edgeship.evaluate.metrics import non_tensor_outputs
from edgeship.evaluate.graph import weight_sparsity
from edgeship.model import Model
from edgeship.passes import PassContext
from edgeship.recipes import Recipe, resolve_recipes
from edgeship.search.gate import choose, explain, fmt_line, gate, pareto, speed_demand

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

Objective = Literal["latency", "size", "memory", "accuracy", "energy"]
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Budget:
    """What a candidate may cost. ``max_accuracy_drop`` is in the metric's own units
    (accuracy is a fraction: 0.01 = one percentage point; cosine 0.01 = 1.0 -> 0.99)."""

    max_accuracy_drop: float = 0.01
    #: an explicit speed demand: the speedup's whole confidence interval must clear it. None: the
    #: objective decides (latency and energy need "faster", the others "not slower"; see search.gate)
    min_speedup: float | None = None
    #: confidence of the speed verdicts, from interleaved rounds
    confidence: float = 0.95
    #: limits on the target device (estimates there; measurements when the target is `host`)
    max_latency_ms: float | None = None
    max_memory_mb: float | None = None
    max_size_mb: float | None = None
    max_energy_mj: float | None = None

    def __post_init__(self) -> None:
        if not self.max_accuracy_drop >= 0:
            raise ConfigError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}.")
        if self.min_speedup is not None and not self.min_speedup > 0:
            raise ConfigError(f"min_speedup must be > 0, got {self.min_speedup}.")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}; 0.95 is usual.")
        for name in ("max_latency_ms", "max_memory_mb", "max_size_mb", "max_energy_mj"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}.")

    def device_lines(self) -> list[tuple[str, str, float]]:
        """(budget line, figure key, limit in the figure's unit) for the device limits given."""
        lines = [("max-latency-ms", "latency_ms", self.max_latency_ms),
                 ("max-memory-mb", "peak_memory_bytes", self.max_memory_mb and self.max_memory_mb * 2**20),
                 ("max-size-mb", "size_bytes", self.max_size_mb and self.max_size_mb * 2**20),
                 ("max-energy-mj", "energy_mj", self.max_energy_mj)]
        return [(name, key, float(limit)) for name, key, limit in lines if limit]

    def check(self, figures: dict[str, float]) -> list[dict[str, Any]]:
        """Each device budget line with the value, the limit and whether it holds."""
        return [{"line": name, "value": figures[key], "limit": limit, "ok": figures[key] <= limit}
                for name, key, limit in self.device_lines() if key in figures]


@dataclass(frozen=True)
class EvalSettings:
    """How candidates are measured: fixed threads, batch 1 latency over warm runs."""

    threads: int = 2
    batch_size: int = 1
    warmup: int = 10
    runs: int = 100
    #: latency is timed round-robin over all candidates in this many rounds; each round is one
    #: paired observation for the speed verdict's confidence interval
    rounds: int = 10
    measure_memory: bool = True
    max_eval_samples: int = 1000
    #: tokens per sentence when data is a .txt file for a Hugging Face text model
    text_max_length: int = 64

    def __post_init__(self) -> None:
        for name in ("threads", "batch_size", "runs", "max_eval_samples", "text_max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.rounds < 2:
            raise ConfigError(f"rounds must be >= 2 (speed is judged from the spread between rounds), got {self.rounds}.")


@dataclass
class Candidate:
    recipe: str
    steps: list[dict[str, Any]]
    status: str = "ok"  # ok | rejected | skipped (estimate broke the budget) | failed
    reason: str = ""
    model: Model | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    pareto: bool = False
    path: str | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    lost_because: str = ""

    @property
    def notes(self) -> list[str]:
        from edgeship.passes import PASSES

        names = [s["pass"] for s in self.steps]
        return sorted({PASSES[n].note for n in names if n in PASSES and PASSES[n].note})

    def to_dict(self) -> dict[str, Any]:
        lineage = [s.to_dict() for s in self.model.lineage] if self.model else []
        return {
            "recipe": self.recipe,
            "engine": self.model.engine if self.model else None,
            "steps": self.steps,
            "lineage": lineage,
            "status": self.status,
            "reason": self.reason,
            "path": self.path,
            "metrics": self.metrics,
            "pareto": self.pareto,
            "notes": self.notes,
            "fit": self.fit,
            "lost_because": self.lost_because,
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
    target: Any = None
    closest: Candidate | None = None
    closest_reason: str = ""
    #: the input shapes that sized dynamic dims for MACs and estimates
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    model_info: ModelInfo = ModelInfo()

    def report(self, out_dir: Path | str) -> Path:
        """Write report.json, report.html, pareto.png, best.onnx and candidates/ into ``out_dir``."""
        from edgeship.report import write_report

        return write_report(self, Path(out_dir))

    def to_dict(self) -> dict[str, Any]:
        from edgeship import __version__

        from edgeship.core.report import REPORT_TYPE, REPORT_VERSION

        return {
            "type": REPORT_TYPE,
            "version": REPORT_VERSION,
            "edgeship_version": __version__,
            "model": self.source,
            "model_info": self.model_info.to_dict(),
            "metric": {"name": self.metric.name, "higher_is_better": self.metric.higher_is_better,
                       "output": self.metric.output or ("every float output" if self.metric.every_output else None)},
            "budget": self.budget.__dict__,
            "settings": self.settings.__dict__,
            "shapes": {"from": "the evaluation data (one sample)", "inputs": self.input_shapes},
            "objective": self.objective,
            "baseline": {"metrics": self.baseline.metrics},
            "candidates": [c.to_dict() for c in self.candidates],
            "best": self.best.recipe if self.best else None,
            "target": self.target.to_dict() if self.target is not None else None,
            "baseline_fit": self.baseline.fit,
            "nothing_fits": None if self.best else {"closest": self.closest.recipe if self.closest else None,
                                                    "why": self.closest_reason},
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
    reference: dict[str, np.ndarray] | None,
    settings: EvalSettings,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Quality, size, memory, params and MACs of ``model`` (latency is timed separately,
    interleaved over all candidates). Returns (metrics, outputs); ``reference`` None = baseline."""
    session = model.session(settings.threads)
    eval_batch = 32 if model.has_batch_axis else 1
    outputs = run_outputs(session, data.batches(eval_batch))
    ref = outputs if reference is None else reference
    metrics: dict[str, Any] = {metric.name: metric.score(outputs, ref, data.labels)}
    feeds = _first_sample(data, settings.batch_size)
    metrics["size_bytes"] = model.size_bytes
    metrics["compressed_size_bytes"] = compressed_size(model)
    metrics["sparsity"] = weight_sparsity(model.path)
    if settings.measure_memory:
        metrics["peak_memory_bytes"] = measure_peak_memory(model.artifact or model.path, feeds, settings.threads,
                                                           model.engine, dict(model.engine_options))
    shapes = {k: v.shape for k, v in feeds.items()}  # dynamic dims sized by the evaluation data
    stats = model.stats(shapes)
    metrics.update(params=stats["params"], macs=stats["macs"])
    if stats["macs_unknown"]:
        metrics["macs_unknown"] = "; ".join(stats["macs_unknown"])
    return metrics, outputs


def _fit(model: Model, plan: "OptimizationPlan", measured: dict[str, Any] | None) -> dict[str, Any]:
    """Figures on the target (estimates; on `host`, the measurements where there are some)."""
    from edgeship.targets.estimate import estimate

    shapes = {k: v[:1].shape for k, v in plan.evaluation.inputs.items()}
    est = estimate(model, plan.target, shapes, plan.settings.threads, plan.request_rate_hz,
                   plan.budget.max_latency_ms)
    figures = {"latency_ms": est["latency_ms"], "peak_memory_bytes": est["peak_memory_bytes"],
               "size_bytes": model.size_bytes, "energy_mj": est["energy_mj"]}
    source = "estimate"
    if plan.target.measured and measured and "latency_ms_p50" in measured:
        figures["latency_ms"] = measured["latency_ms_p50"]
        figures["peak_memory_bytes"] = measured.get("peak_memory_bytes", figures["peak_memory_bytes"])
        state = plan.target.max_state
        active = state.power_w * figures["latency_ms"]
        figures["energy_mj"] = active + plan.target.idle_power_w * max(0.0, 1000 / plan.request_rate_hz - figures["latency_ms"])
        source = "measured on host (energy from the assumed host power)"
    return {"target": plan.target.id, "source": source, "figures": figures, "lines": plan.budget.check(figures),
            "estimate": est}


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
    target: Any = None  # edgeship.targets.Profile | None
    request_rate_hz: float = 1.0
    executor: Any = None  # see edgeship.search.executors; None = a local process pool

    @property
    def steps(self) -> int:
        """Progress steps: the baseline, each recipe, and the interleaved timing."""
        return len(self.recipes) + 2

    def run(self, progress: ProgressFn | None = None) -> OptimizeResult:
        """Build and measure every candidate, gate them, and choose the best."""
        notify = progress or (lambda done, total, label: None)
        if self.executor is None:
            from edgeship.search.executors import make_executor

            self.executor = make_executor("process")
        settings, metric, total = self.settings, self.metric, self.steps
        notify(0, total, "baseline")
        base_metrics, reference = evaluate_model(self.model, self.evaluation, metric, None, settings)
        baseline = Candidate("baseline", [], "ok", "", self.model, base_metrics)
        baseline.metrics.update(speedup=1.0, size_ratio=1.0, metric_drop=0.0)
        if self.target is not None:
            baseline.fit = _fit(self.model, self, base_metrics)

        # build every candidate (in parallel, on the executor), then measure them here
        candidates = [Candidate(r.name, [s.to_dict() for s in r.steps]) for r in self.recipes]
        jobs = [(i, r, self.model, self.calibration, self.train, scratch_dir(f"recipe-{i:02d}"))
                for i, r in enumerate(self.recipes)]
        built: dict[int, Any] = {}

        def say(index: int, text: str) -> None:
            notify(len(built), total, f"{self.recipes[index].name}: {text}")

        for index, outcome in self.executor.run(jobs, say):
            built[index] = outcome
            notify(len(built), total, f"built {self.recipes[index].name}")
        for cand, index in zip(candidates, range(len(candidates))):
            try:
                if isinstance(built[index], BaseException):
                    raise built[index]
                cand.model = built[index]
                if self.target is not None:
                    cand.fit = _fit(cand.model, self, None)
                    broken = [line for line in cand.fit["lines"] if not line["ok"]]
                    if broken and not self.target.measured:  # the estimate already breaks the budget
                        cand.status = "skipped"
                        cand.reason = "estimate breaks the budget before measuring: " + "; ".join(
                            f"{line['line']} {fmt_line(line)}" for line in broken)
                        continue
                notify(len(built), total, f"measuring {cand.recipe}")
                cand.metrics, _ = evaluate_model(cand.model, self.evaluation, metric, reference, settings)
            except Exception as exc:  # a failing recipe is recorded; the others still run
                cand.status, cand.reason, cand.model = "failed", _one_line(exc), None

        measured = [baseline] + [c for c in candidates if c.status not in ("failed", "skipped")]
        notify(total - 1, total, f"timing {len(measured)} models in {settings.rounds} interleaved rounds")
        feeds = _first_sample(self.evaluation, settings.batch_size)
        sessions = [c.model.session(settings.threads) for c in measured]
        timings = measure_latencies(sessions, feeds, settings.warmup, settings.runs, settings.rounds)
        for c, timing in zip(measured, timings):
            c.metrics.update(timing)
        for c in measured:
            if self.target is not None and self.target.measured:
                c.fit = _fit(c.model, self, c.metrics)  # `host`: the budget uses the measurements
        for c in candidates:
            if c.status not in ("failed", "skipped"):
                gate(c, baseline.metrics, metric, self.budget, self.objective)
        notify(total, total, "done")

        sign = -1.0 if metric.higher_is_better else 1.0

        def point(c: Candidate) -> tuple[float, ...]:
            p = (sign * c.metrics[metric.name], c.metrics["latency_ms_p50"], c.metrics["size_bytes"])
            return p + ((c.fit["figures"]["energy_mj"],) if c.fit else ())

        for c, flag in zip(measured, pareto([point(c) for c in measured])):
            c.pareto = flag
        best = choose(candidates, metric, self.objective)
        result = OptimizeResult(baseline, candidates, best, metric, self.budget, settings, self.objective,
                                self.model.source, self.target,
                                input_shapes={k: list(v.shape) for k, v in feeds.items()},
                                model_info=ModelInfo(self.model.task, self.model.labels,
                                                     str(self.model.tokenizer_dir) if self.model.tokenizer_dir else None,
                                                     settings.text_max_length if self.model.tokenizer_dir else None))
        explain(result)
        return result


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
    target: Any = None,
    request_rate_hz: float = 1.0,
    executor: Any = "process",
    ray_address: str | None = None,
    output: str | None = None,
) -> OptimizationPlan:
    """Load and check the model, data, metric and recipes, and raise on bad input, before any work.

    Args:
        model: a Model, an .onnx path, a Hugging Face directory or ``module:function``.
        data: calibration data (.npz/.txt path, dict of arrays or Dataset). When
            ``eval_data`` is None it is split into disjoint calibration and evaluation halves.
        metric: ``accuracy`` (needs labels), ``cosine``, ``mse``, ``module:function``, a
            callable, or None for accuracy-if-labelled-else-cosine.
        recipes: ``"auto"``, ``"name1,name2"``, a recipe file, Recipe objects.
        budget: the allowed quality drop and device limits. A candidate must also be smaller, and
            faster (objective latency or energy) or not slower (size, memory, accuracy) at the
            budget's confidence, judged over interleaved timing rounds.
        objective: what ``best`` minimises among passing candidates.
        train_data: labelled training data (.npz, dict, Dataset) for pruning fine-tunes and
            distillation; with it, ``auto`` also tries pruning and distillation chains.
        target: a device profile id or .toml: every candidate gets a fit estimate there, the
            budget's device lines apply to it, and candidates whose estimate already breaks
            them are skipped before they are measured.
        request_rate_hz: requests per second, for the idle share of energy per inference.
        executor: where candidates are built: ``"process"`` (a local process pool, default),
            ``"local"`` (this process) or ``"ray"`` (Ray tasks; ``ray_address`` names a cluster).
        output: the model output the metric reads (default: the one that is unambiguous; cosine
            and mse compare every float output). See :mod:`edgeship.evaluate.metrics`.
    """
    from edgeship.importers import load

    budget = budget or Budget()
    settings = settings or EvalSettings()
    speed_demand(objective)  # refuses an unknown objective
    profile = None
    if target is not None:
        from edgeship.targets import load_profile

        profile = load_profile(target)
    elif budget.device_lines() or objective == "energy":
        raise ConfigError("device budget lines (--max-latency-ms, --max-memory-mb, --max-size-mb, --max-energy-mj) "
                          "and --objective energy need --target; see `edgeship targets`.")
    model = load(model)
    if model.kind == "tflite":
        raise ConfigError(f"{model.source!r} is already a LiteRT model, and edgeship optimizes ONNX graphs and "
                          "PyTorch modules: give optimize the model it was made from (LiteRT candidates are among "
                          "the results), or pack the .tflite as it is.")
    calibration = load_data(data, model, settings.text_max_length)
    if eval_data is None:
        calibration, evaluation = split(calibration)
    else:
        evaluation = load_data(eval_data, model, settings.text_max_length)
    evaluation = evaluation.take(slice(0, settings.max_eval_samples))
    metric = get_metric(metric, evaluation.labels is not None, output)
    first = model.session(settings.threads)  # the metric's output is chosen on the float model's outputs
    metric = metric.resolve(run_outputs(first, [_first_sample(evaluation, 32 if model.has_batch_axis else 1)]),
                            evaluation.labels, non_tensor_outputs(first))
    train = None
    if train_data is not None:
        from edgeship.passes._torch import check_train_labels

        train = load_data(train_data, model, settings.text_max_length)
        check_train_labels(model, train)
    microcontroller = profile is not None and profile.microcontroller
    # a microcontroller's one way in (TFLite Micro) is as good as asked for: say why it cannot run
    explicit = microcontroller or (not (isinstance(recipes, str) and recipes.strip() == "auto") and recipes is not None)
    plan: list[Recipe] = []
    # choices a recipe leaves to the CPU (int8 format) are made for the CPU the model is for
    from edgeship.core.cpu import cpu_flags

    flags = frozenset(profile.cpu_flags) if profile is not None else cpu_flags()
    for recipe in resolve_recipes(recipes, model, with_training=train is not None, cpu_flags=flags,
                                  microcontroller=microcontroller):
        recipe = recipe.for_cpu(flags)
        try:
            recipe.check(model, PassContext(scratch_dir("check"), calibration, train))
            plan.append(recipe)
        except EdgeshipError:
            if explicit:  # the user asked for it by name: say why it cannot run
                raise
    from edgeship.search.executors import make_executor

    return OptimizationPlan(model, calibration, evaluation, train, metric, plan, budget, settings, objective,
                            profile, request_rate_hz, make_executor(executor, ray_address))


def optimize(model: Any, data: Any, eval_data: Any = None, *, progress: ProgressFn | None = None,
             **options: Any) -> OptimizeResult:
    """Try each recipe on ``model``, measure every candidate, and pick the best that passes.

    ``options`` are those of :func:`plan_optimization` (metric, recipes, budget, settings, objective,
    train_data, target, request_rate_hz, executor, ray_address, output); ``progress`` is called as
    ``progress(done, total, label)``.
    """
    return plan_optimization(model, data, eval_data, **options).run(progress)
