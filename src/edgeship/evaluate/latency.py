"""Latency over warm runs at a fixed thread count."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["measure_latency"]

MAX_RUNS = 20_000


def measure_latency(
    session: Any,
    feeds: dict[str, np.ndarray],
    warmup: int = 10,
    runs: int = 100,
    min_seconds: float = 0.5,
) -> dict[str, float]:
    """p50/p95/mean latency in milliseconds of ``session.run`` on ``feeds``.

    Runs at least ``runs`` times and for at least ``min_seconds``, so that a short burst of
    load on a shared machine cannot cover the whole sample of a fast model.
    """
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - started < min_seconds and len(times) < MAX_RUNS):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000.0
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "latency_ms_mean": float(ms.mean()),
        "latency_runs": len(ms),
    }
