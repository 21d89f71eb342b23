"""The Pareto plot: task metric against latency, marker area set by model size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pareto_plot", "energy_plot"]

_COLORS = {"baseline": "#444444", "ok": "#1f77b4", "rejected": "#bbbbbb"}


def _front_2d(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """Points not beaten on both latency (lower) and quality (higher), by latency."""
    front, best_quality = [], float("-inf")
    for x, q, c in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best_quality:
            front.append((x, q, c))
            best_quality = q
    return front


def pareto_plot(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.metric.name
    sign = 1.0 if result.metric.higher_is_better else -1.0
    rows = [result.baseline] + [c for c in result.candidates if c.metrics]  # failed and skipped have none
    largest = max(c.metrics["size_bytes"] for c in rows)
    base = result.baseline.metrics[metric]
    allowed = base - sign * result.budget.max_accuracy_drop
    # show the region around the budget; far-off candidates sit on the edge with their value
    span = max(4 * result.budget.max_accuracy_drop, 1e-3)
    values = [c.metrics[metric] for c in rows]
    if sign > 0:
        low, high = max(min(values), base - span), max(values)
    else:
        low, high = min(values), min(max(values), base + span)
    pad = 0.08 * max(high - low, 1e-6)
    low, high = low - pad, high + pad

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for i, c in enumerate(rows):
        kind = "baseline" if c is result.baseline else c.status
        x, y = c.metrics["latency_ms_p50"], c.metrics[metric]
        clipped = not low <= y <= high
        shown_y = min(max(y, low), high)
        area = 60 + 900 * c.metrics["size_bytes"] / largest
        edge = "#d62728" if c.pareto else "none"
        ax.scatter(x, shown_y, s=area, c=_COLORS[kind], alpha=0.75, edgecolors=edge, linewidths=2, zorder=3,
                   marker="v" if clipped else "o")
        label = c.recipe + (" (best)" if result.best is c else "") + (f" ({metric} {y:.3g})" if clipped else "")
        ax.annotate(label, (x, shown_y), textcoords="offset points", xytext=(8, 8 - 11 * (i % 3)), fontsize=8)
    front = _front_2d([(c.metrics["latency_ms_p50"], sign * c.metrics[metric], c) for c in rows])
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[2].metrics[metric] for p in front], "--", color="#d62728", lw=1,
                zorder=2, label=f"front: {metric} vs latency")
    ax.axhline(allowed, color="#2ca02c", lw=1, ls=":", label=f"allowed drop ({result.budget.max_accuracy_drop})")
    ax.set_ylim(low, high)
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"latency p50 (ms, batch {result.settings.batch_size}, {result.settings.threads} threads)")
    ax.set_ylabel(metric + ("" if result.metric.higher_is_better else " (lower is better)"))
    ax.set_title("marker area = model size; red ring = Pareto-optimal in quality, latency and size; "
                 "grey = rejected; v = off the scale", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def energy_plot(result: Any, path: Path) -> bool:
    """Task metric against energy per inference on the target; False when there is no target."""
    rows = [c for c in [result.baseline, *result.candidates] if c.metrics and c.fit]
    if getattr(result, "target", None) is None or not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.metric.name
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for i, c in enumerate(rows):
        kind = "baseline" if c is result.baseline else c.status
        x, y = c.fit["figures"]["energy_mj"], c.metrics[metric]
        ax.scatter(x, y, s=120, c=_COLORS.get(kind, "#bbbbbb"), alpha=0.8, zorder=3,
                   edgecolors="#d62728" if c.pareto else "none", linewidths=2)
        ax.annotate(c.recipe + (" (best)" if result.best is c else ""), (x, y), textcoords="offset points",
                    xytext=(8, 8 - 11 * (i % 3)), fontsize=8)
    if result.budget.max_energy_mj:
        ax.axvline(result.budget.max_energy_mj, color="#2ca02c", ls=":", lw=1, label="max-energy-mj")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"energy per inference on {result.target.id} (mJ; {rows[-1].fit['source']})")
    ax.set_ylabel(metric)
    ax.set_title("quality against energy on the target; red ring = Pareto-optimal", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
