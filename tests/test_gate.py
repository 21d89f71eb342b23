"""The gate, the Pareto front and the choice, on synthetic measurements: no timing, no models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import edgeship
from edgeship.evaluate.metrics import METRICS
from edgeship.search.gate import choose, explain, gate, pareto, speed_demand, speedup_interval

ACC = METRICS["accuracy"]


@dataclass
class Cand:
    recipe: str
    metrics: dict[str, Any]
    status: str = "ok"
    reason: str = ""
    fit: dict[str, Any] = field(default_factory=dict)
    lost_because: str = ""


def base(ms: list[float], size: int = 1000, acc: float = 0.9) -> dict[str, Any]:
    return {"latency_round_ms": ms, "latency_ms_p50": float(np.median(ms)), "size_bytes": size, "accuracy": acc}


def noisy(level: float, rounds: int, spread: float, seed: int) -> list[float]:
    """Per-round medians: a shared load factor per round (both models see it) times own noise."""
    rng = np.random.default_rng(seed)
    return list(level * np.exp(rng.normal(0, spread, rounds)))


def test_interval_contains_the_true_speedup_and_shrinks_with_rounds():
    load = np.exp(np.random.default_rng(1).normal(0, 0.3, 40))  # a busy machine: +-30% between rounds
    b = 2.0 * load * np.exp(np.random.default_rng(2).normal(0, 0.02, 40))
    c = 1.0 * load * np.exp(np.random.default_rng(3).normal(0, 0.02, 40))
    wide, narrow = speedup_interval(b[:5], c[:5]), speedup_interval(b, c)
    for est in (wide, narrow):
        assert est.low < 2.0 < est.high
    assert narrow.high - narrow.low < wide.high - wide.low
    # the shared load cancels in the paired ratio: 30% swings between rounds still give a tight interval
    assert narrow.low > 1.9 and narrow.high < 2.1


def test_one_round_says_nothing_about_noise():
    est = speedup_interval([1.0], [0.5])
    assert est.ratio == pytest.approx(2.0) and est.low == 0.0 and est.high == float("inf")


def test_equal_models_are_not_faster_but_not_slower():
    b = noisy(1.0, 10, 0.05, 0)
    c = [x * y for x, y in zip(b, np.exp(np.random.default_rng(7).normal(0, 0.05, 10)))]
    for objective, status in (("latency", "rejected"), ("energy", "rejected"), ("size", "ok"),
                              ("memory", "ok"), ("accuracy", "ok")):
        cand = Cand("same", {**base(c, size=500)})
        gate(cand, base(b), ACC, edgeship.Budget(), objective)
        assert cand.status == status, (objective, cand.reason)
        if status == "rejected":
            assert "not faster than the baseline at 95% confidence" in cand.reason
        assert cand.metrics["speedup_low"] < 1 < cand.metrics["speedup_high"]


def test_a_clearly_slower_candidate_fails_even_a_size_objective():
    b = noisy(1.0, 10, 0.02, 0)
    cand = Cand("slow", base([x * 1.5 for x in b], size=500))
    gate(cand, base(b), ACC, edgeship.Budget(), "size")
    assert cand.status == "rejected" and "slower than the baseline" in cand.reason


def test_a_clearly_faster_candidate_passes_a_latency_objective_on_a_busy_machine():
    load = list(np.exp(np.random.default_rng(5).normal(0, 0.4, 10)))
    cand = Cand("fast", base([0.8 * x for x in load], size=500))
    gate(cand, base(list(load)), ACC, edgeship.Budget(), "latency")
    assert cand.status == "ok", cand.reason


def test_rounding_never_prints_a_speedup_equal_to_what_it_needs():
    b = [1.0] * 10
    c = [1.0 / 1.0499] * 10  # 1.0499x exactly, every round
    cand = Cand("almost", base(c, size=500))
    gate(cand, base(b), ACC, edgeship.Budget(min_speedup=1.05), "latency")
    assert cand.status == "rejected"
    assert "not at least 1.05x faster" in cand.reason and "interval 1.04-1.05x" in cand.reason


def test_size_not_smaller_and_quality_drop_each_give_a_reason():
    b = noisy(1.0, 10, 0.01, 0)
    cand = Cand("worse", {**base(b, size=2000, acc=0.8)})
    gate(cand, base(b), ACC, edgeship.Budget(max_accuracy_drop=0.05), "size")
    assert "not smaller" in cand.reason and "accuracy drops by 0.1000" in cand.reason


def test_unknown_objective_is_refused():
    with pytest.raises(edgeship.EdgeshipError, match="unknown objective 'speed'"):
        speed_demand("speed")


def test_pareto_ties_and_domination():
    points = [(1.0, 1.0), (1.0, 1.0), (0.5, 2.0), (2.0, 2.0)]
    assert pareto(points) == [True, True, True, False]


def test_choice_ties_go_to_the_first_listed_and_only_passing_candidates_count():
    a = Cand("a", {"latency_ms_p50": 1.0, "size_bytes": 10})
    b = Cand("b", {"latency_ms_p50": 1.0, "size_bytes": 10})
    c = Cand("c", {"latency_ms_p50": 0.1, "size_bytes": 1}, status="rejected")
    assert choose([a, b, c], ACC, "latency") is a
    assert choose([b, a, c], ACC, "size") is b
    assert choose([c], ACC, "latency") is None


@dataclass
class Result:
    candidates: list[Cand]
    best: Any
    objective: str
    metric: Any
    budget: Any
    closest: Any = None
    closest_reason: str = ""


def test_a_budget_nothing_meets_names_the_closest_candidate():
    line = lambda value, limit: {"line": "max-latency-ms", "value": value, "limit": limit, "ok": value <= limit}
    near = Cand("near", {"metric_drop": 0.0}, "rejected", "breaks max-latency-ms", fit={"lines": [line(1.2, 1.0)]})
    far = Cand("far", {"metric_drop": 0.0}, "rejected", "breaks max-latency-ms", fit={"lines": [line(5.0, 1.0)]})
    result = Result([far, near], None, "latency", ACC, edgeship.Budget(max_accuracy_drop=0.01))
    explain(result)
    assert result.closest is near and "max-latency-ms (1.2 ms > 1 ms)" in result.closest_reason
    assert far.lost_because == "breaks max-latency-ms"
