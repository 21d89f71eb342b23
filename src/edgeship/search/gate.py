"""The gate, the Pareto front and the choice: pure functions of measurements.

Speed is a claim with noise. Candidates and the baseline are timed interleaved in rounds
(:func:`edgeship.evaluate.measure_latencies`), so each round gives one paired ratio of medians
measured under the same load. "Faster" means the lower end of a Student-t confidence interval
of the speedup, over those rounds, is above 1; "not slower" means its upper end reaches 1.
Speed is asked for only where the objective asks for it: ``latency`` and ``energy`` need
"faster"; ``size``, ``memory`` and ``accuracy`` need "not slower". A budget's explicit
``min_speedup`` asks that the whole interval clear it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from edgeship.errors import ConfigError

__all__ = ["OBJECTIVES", "SpeedEstimate", "speedup_interval", "speed_demand", "speed_reason", "gate", "pareto",
           "choose", "explain", "fmt_line"]

#: what ``best`` minimises among passing candidates, and whether it asks for speed
OBJECTIVES = {"latency": "faster", "energy": "faster", "size": "not slower", "memory": "not slower",
              "accuracy": "not slower"}


@dataclass(frozen=True)
class SpeedEstimate:
    """Speedup of a candidate over the baseline (baseline time / candidate time)."""

    ratio: float  # geometric mean of the per-round ratios
    low: float
    high: float
    rounds: int
    confidence: float

    def describe(self) -> str:
        # floor and ceil, so that a printed bound never claims more than was measured
        low, high = math.floor(self.low * 100) / 100, math.ceil(self.high * 100) / 100
        return (f"speedup {self.ratio:.2f}x, {self.confidence:.0%} interval {low:.2f}-{high:.2f}x "
                f"over {self.rounds} interleaved rounds")


def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def speedup_interval(baseline_ms: Sequence[float], candidate_ms: Sequence[float],
                     confidence: float = 0.95) -> SpeedEstimate:
    """A confidence interval of the speedup from paired per-round latencies (same rounds, same order).

    The log of each round's ratio is one observation; the interval is the t-interval of their mean,
    turned back into a ratio. Fewer than two rounds say nothing about noise: the interval is (0, inf).
    """
    if len(baseline_ms) != len(candidate_ms) or not len(baseline_ms):
        raise ConfigError(f"speedup needs the same number of rounds for both models, got {len(baseline_ms)} "
                          f"and {len(candidate_ms)}.")
    d = np.log(np.asarray(baseline_ms, np.float64)) - np.log(np.asarray(candidate_ms, np.float64))
    mean, n = float(d.mean()), len(d)
    if n < 2:
        return SpeedEstimate(math.exp(mean), 0.0, math.inf, n, confidence)
    half = _t_quantile(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return SpeedEstimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n, confidence)


def speed_demand(objective: str) -> str:
    """``faster`` or ``not slower``: what the objective asks of a candidate's speed."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose from {sorted(OBJECTIVES)}.")
    return OBJECTIVES[objective]


def speed_reason(est: SpeedEstimate, demand: str, min_speedup: float | None = None) -> str:
    """Why a candidate fails the speed demand, or "" when it meets it."""
    if min_speedup is not None:
        if est.low >= min_speedup:
            return ""
        return f"not at least {min_speedup:g}x faster at {est.confidence:.0%} confidence ({est.describe()})"
    if demand == "faster" and not est.low > 1.0:
        return f"not faster than the baseline at {est.confidence:.0%} confidence ({est.describe()})"
    if demand == "not slower" and not est.high >= 1.0:
        return f"slower than the baseline at {est.confidence:.0%} confidence ({est.describe()})"
    return ""


def fmt_line(line: dict[str, Any]) -> str:
    if line["line"] in ("max-memory-mb", "max-size-mb"):
        return f"{line['value'] / 2**20:.2f} MiB > {line['limit'] / 2**20:.2f} MiB"
    unit = "ms" if line["line"] == "max-latency-ms" else "mJ"
    return f"{line['value']:.4g} {unit} > {line['limit']:.4g} {unit}"


def gate(c: Any, base: dict[str, Any], metric: Any, budget: Any, objective: str) -> None:
    """Set ``c.status``/``c.reason`` to rejected when it is not smaller, too slow for the objective,
    loses too much quality, or breaks a device budget line; record its speedup interval."""
    m = c.metrics
    est = speedup_interval(base["latency_round_ms"], m["latency_round_ms"], budget.confidence)
    m["speedup"] = base["latency_ms_p50"] / m["latency_ms_p50"]
    m["speedup_low"], m["speedup_high"] = est.low, est.high
    m["size_ratio"] = base["size_bytes"] / m["size_bytes"]
    m["metric_drop"] = metric.drop(base[metric.name], m[metric.name])
    reasons = []
    if m["size_ratio"] <= 1.0:
        reasons.append(f"not smaller than the baseline (size ratio {m['size_ratio']:.2f}x)")
    slow = speed_reason(est, speed_demand(objective), budget.min_speedup)
    if slow:
        reasons.append(slow)
    if m["metric_drop"] > budget.max_accuracy_drop:
        reasons.append(
            f"{metric.name} drops by {m['metric_drop']:.4f}, more than the allowed {budget.max_accuracy_drop}"
        )
    for line in c.fit.get("lines", []):
        if not line["ok"]:
            reasons.append(f"breaks {line['line']} on {c.fit['target']}: {fmt_line(line)}")
    if reasons:
        c.status, c.reason = "rejected", "; ".join(reasons)


def pareto(points: Sequence[tuple[float, ...]]) -> list[bool]:
    """Non-dominated flags; every coordinate is lower-is-better. Equal points do not dominate each other."""
    flags = []
    for i, p in enumerate(points):
        dominated = any(
            all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
            for j, q in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def _objective_key(objective: str, metric: Any) -> Any:
    sign = -1.0 if metric.higher_is_better else 1.0
    keys = {
        "latency": lambda c: (c.metrics["latency_ms_p50"], c.metrics["size_bytes"]),
        "size": lambda c: (c.metrics["size_bytes"], c.metrics["latency_ms_p50"]),
        "memory": lambda c: (c.metrics.get("peak_memory_bytes", math.inf), c.metrics["size_bytes"]),
        "accuracy": lambda c: (sign * c.metrics[metric.name], c.metrics["latency_ms_p50"]),
        "energy": lambda c: (c.fit.get("figures", {}).get("energy_mj", math.inf), c.metrics["latency_ms_p50"]),
    }
    speed_demand(objective)  # refuses an unknown objective
    return keys[objective]


def choose(candidates: Iterable[Any], metric: Any, objective: str) -> Any:
    """The passing candidate that is best on ``objective`` (ties: the first listed), or None."""
    ok = [c for c in candidates if c.status == "ok"]
    key = _objective_key(objective, metric)
    return min(ok, key=key) if ok else None


def violation(c: Any, budget: Any, metric: Any) -> tuple[float, str]:
    """How far a candidate is from fitting (0 = fits), and the lines it breaks."""
    worst, broken = 0.0, []
    for line in c.fit.get("lines", []):
        if not line["ok"]:
            worst = max(worst, line["value"] / line["limit"] - 1)
            broken.append(f"{line['line']} ({fmt_line(line)})")
    drop = c.metrics.get("metric_drop")
    if drop is not None and drop > budget.max_accuracy_drop:
        worst = max(worst, (drop - budget.max_accuracy_drop) / max(budget.max_accuracy_drop, 1e-3))
        broken.append(f"max-accuracy-drop ({metric.name} drop {drop:.4f} > {budget.max_accuracy_drop})")
    return worst, "; ".join(broken)


def explain(result: Any) -> None:
    """Why each candidate lost to the best; or, when nothing fits, which came closest."""
    best, objective = result.best, result.objective
    keys = {"latency": ("latency_ms_p50", "ms"), "size": ("size_bytes", "bytes"), "energy": (None, "mJ"),
            "memory": ("peak_memory_bytes", "bytes"), "accuracy": (result.metric.name, "")}
    for c in result.candidates:
        if c is best:
            continue
        if c.status != "ok" or best is None:
            c.lost_because = c.reason or c.status
            continue
        key, unit = keys[objective]
        ours = c.fit["figures"]["energy_mj"] if key is None else c.metrics.get(key, math.inf)
        theirs = best.fit["figures"]["energy_mj"] if key is None else best.metrics.get(key, math.inf)
        c.lost_because = (f"meets every budget line, but its {objective} ({ours:.4g} {unit}) is worse than "
                          f"{best.recipe}'s ({theirs:.4g} {unit})").replace(" )", ")")
    if best is None:
        contenders = [c for c in result.candidates if c.status in ("ok", "rejected", "skipped")]
        scored = [(*violation(c, result.budget, result.metric), c) for c in contenders]
        fitting_lines = [s for s in scored if s[1]]
        if fitting_lines:
            score, why, closest = min(fitting_lines, key=lambda s: s[0])
            result.closest, result.closest_reason = closest, why
        elif contenders:
            result.closest = contenders[0]
            result.closest_reason = contenders[0].reason
