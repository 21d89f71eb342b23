"""The Pareto plot: task metric against latency, marker area set by model size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pareto_plot"]

_COLORS = {"baseline": "#444444", "ok": "#1f77b4", "rejected": "#bbbbbb"}


def pareto_plot(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.metric.name
    rows = [result.baseline] + [c for c in result.candidates if c.status != "failed"]
    largest = max(c.metrics["size_bytes"] for c in rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for i, c in enumerate(rows):
        kind = "baseline" if c is result.baseline else c.status
        x, y = c.metrics["latency_ms_p50"], c.metrics[metric]
        area = 60 + 900 * c.metrics["size_bytes"] / largest
        edge = "#d62728" if c.pareto else "none"
        ax.scatter(x, y, s=area, c=_COLORS[kind], alpha=0.75, edgecolors=edge, linewidths=2, zorder=3)
        label = c.recipe + (" (best)" if result.best is c else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(8, 8 - 11 * (i % 3)), fontsize=8)
    front = sorted((c for c in rows if c.pareto), key=lambda c: c.metrics["latency_ms_p50"])
    if len(front) > 1:
        ax.plot([c.metrics["latency_ms_p50"] for c in front], [c.metrics[metric] for c in front],
                "--", color="#d62728", lw=1, zorder=2, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"latency p50 (ms, batch {result.settings.batch_size}, {result.settings.threads} threads)")
    ax.set_ylabel(metric + ("" if result.metric.higher_is_better else " (lower is better)"))
    ax.set_title("Candidates: marker area = model size, red ring = Pareto-optimal, grey = rejected", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
