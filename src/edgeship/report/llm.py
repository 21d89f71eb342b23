"""The report of a generative model's search: report.json, a table (terminal and HTML), and a plot of
decode speed against perplexity with the quality line."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from edgeship.core.files import atomic_write_text
from edgeship.report.writer import fmt_bytes

__all__ = ["llm_rows", "write_llm_report"]


def llm_rows(result: Any) -> list[dict[str, str]]:
    ref = result.reference
    rows = []
    for c in [ref, *result.candidates]:
        measured = c.status != "failed"
        rows.append({
            "candidate": c.name + (" *" if c is result.chosen else ""),
            "status": c.status,
            "perplexity": f"{c.perplexity:.3f} ({c.perplexity / ref.perplexity - 1:+.1%})" if measured else "-",
            "top-1 agree": f"{c.agreement:.3f}" if measured else "-",
            "decode tok/s": f"{c.decode_tps:.0f}" if measured else "-",
            "prompt tok/s": f"{c.prompt_tps:.0f}" if measured else "-",
            "size": fmt_bytes(c.size_bytes) if measured else "-",
            f"peak mem @{result.settings.context}": fmt_bytes(c.peak_memory_bytes) if measured else "-",
            "pareto": "yes" if c.pareto else "",
            "reason": c.reason,
        })
    return rows


def _plot(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = result.reference
    rows = [c for c in [ref, *result.candidates] if c.status != "failed"]
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    colors = {"reference": "#444444", "ok": "#1f77b4", "rejected": "#bbbbbb"}
    largest = max(c.size_bytes for c in rows)
    for c in rows:
        ax.scatter(c.decode_tps, c.perplexity, s=60 + 700 * c.size_bytes / largest, c=colors[c.status], alpha=0.8,
                   edgecolors="#d62728" if c.pareto else "none", linewidths=2, zorder=3)
        ax.annotate(c.name + (" (chosen)" if c is result.chosen else ""), (c.decode_tps, c.perplexity),
                    textcoords="offset points", xytext=(8, 6), fontsize=8)
    line = ref.perplexity * (1 + result.settings.max_perplexity_increase)
    ax.axhline(line, color="#d62728", lw=1, ls="--", label=f"quality line: +{result.settings.max_perplexity_increase:.0%}")
    ax.set_xlabel("decode tokens/s (this machine)")
    ax.set_ylabel(f"perplexity ({result.eval_tokens} held-out tokens)")
    ax.set_title("candidates: speed against quality (marker area: file size; red edge: Pareto)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_llm_report(result: Any, out: Path) -> None:
    """report.json, report.png and report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(result.to_dict(), indent=2))
    _plot(result, out / "report.png")
    rows = llm_rows(result)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(f"<tr class='{html.escape(r['status'])}'>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values())
                   + "</tr>" for r in rows)
    chosen = result.chosen.name if result.chosen else "none passed the gate"
    image = base64.b64encode((out / "report.png").read_bytes()).decode("ascii")
    atomic_write_text(out / "report.html", f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeship report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}} table{{border-collapse:collapse;font-size:.9rem}}
td,th{{border:1px solid #ddd;padding:.3rem .5rem;text-align:left}} th{{background:#f3f3f3}}
tr.rejected td,tr.failed td{{color:#888}} tr.reference td{{font-weight:600}}</style></head><body>
<h1>edgeship optimize report: generative model</h1>
<p>Model: <code>{html.escape(result.source)}</code> &middot; quality line: perplexity at most
+{result.settings.max_perplexity_increase:.0%} over the float model &middot; objective: {result.settings.objective}</p>
<p>Chosen: <b>{html.escape(chosen)}</b> (marked *): {html.escape(result.why)}. Speeds are medians of {result.settings.rounds} interleaved rounds
({result.settings.prompt_tokens} prompt tokens, {result.settings.decode_tokens} decoded) on this machine.</p>
<table><tr>{head}</tr>{body}</table>
<h2>Speed against quality</h2><img alt="decode tokens/s against perplexity" src="data:image/png;base64,{image}">
</body></html>
""")
