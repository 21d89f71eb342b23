"""Latency over warm runs at a fixed thread count.

Shared machines drift: a model timed during a burst of load looks slow. So candidates are
timed interleaved, in rounds (:func:`measure_latencies`), and every candidate sees the same
conditions on average.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

__all__ = ["measure_latency", "measure_latencies", "time_runs", "summarize"]

MAX_RUNS_PER_CALL = 20_000


def time_runs(session: Any, feeds: dict[str, np.ndarray], runs: int, min_seconds: float) -> list[float]:
    """Wall times (s) of at least ``runs`` calls and at least ``min_seconds`` of calls."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - started < min_seconds and len(times) < MAX_RUNS_PER_CALL):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000.0
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "latency_ms_mean": float(ms.mean()),
        "latency_runs": int(len(ms)),
    }


def measure_latency(
    session: Any, feeds: dict[str, np.ndarray], warmup: int = 10, runs: int = 100, min_seconds: float = 0.5
) -> dict[str, float]:
    """p50/p95/mean latency in milliseconds of one session."""
    for _ in range(warmup):
        session.run(None, feeds)
    return summarize(time_runs(session, feeds, runs, min_seconds))


def measure_latencies(
    sessions: list[Any],
    feeds: dict[str, np.ndarray],
    warmup: int = 10,
    runs: int = 100,
    rounds: int = 5,
    min_seconds: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """Latency of several sessions on the same feeds, timed round-robin in ``rounds`` rounds."""
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    samples: list[list[float]] = [[] for _ in sessions]
    round_medians: list[list[float]] = [[] for _ in sessions]
    per_round_runs = max(1, runs // rounds)
    for r in range(rounds):
        for i, session in enumerate(sessions):
            times = time_runs(session, feeds, per_round_runs, min_seconds / rounds)
            samples[i].extend(times)
            round_medians[i].append(float(np.median(times)) * 1000.0)
        if progress is not None:
            progress(r + 1)
    # per-round medians pair each candidate with the baseline under the same load: the gate's
    # confidence interval is computed on them (edgeship.search.gate.speedup_interval)
    return [{**summarize(s), "latency_round_ms": m} for s, m in zip(samples, round_medians)]
