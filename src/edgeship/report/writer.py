"""Write an optimize result into a folder, atomically: build beside it, then rename into place."""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeship.report.plots import energy_plot, pareto_plot

__all__ = ["write_report", "render_html", "fmt_bytes", "check_out_dir"]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _engine_label(name: str) -> str:
    from edgeship.engines import ENGINES

    return ENGINES[name].label if name in ENGINES else name


def table_rows(result: Any) -> list[dict[str, str]]:
    """One display row per candidate, shared by the HTML report and the CLI table."""
    metric = result.metric.name
    rows = []
    for c in [result.baseline, *result.candidates]:
        m = c.metrics
        measured = bool(m)
        rows.append(
            {
                "recipe": c.recipe + (" *" if result.best is c else ""),
                "status": "baseline" if c is result.baseline else c.status,
                "engine": _engine_label(c.model.engine) if c.model is not None else "-",
                metric: f"{m[metric]:.4f}" if measured else "-",
                "p50 ms": f"{m['latency_ms_p50']:.3g}" if measured else "-",
                "p95 ms": f"{m['latency_ms_p95']:.3g}" if measured else "-",
                "faster": f"{m['speedup']:.2f}x" if measured else "-",
                "size": fmt_bytes(m["size_bytes"]) if measured else "-",
                "smaller": f"{m['size_ratio']:.2f}x" if measured else "-",
                "zipped": fmt_bytes(m["compressed_size_bytes"]) if "compressed_size_bytes" in m else "-",
                "MACs": "-" if "macs" not in m else ("unknown" if m["macs"] is None else f"{m['macs'] / 1e6:.1f}M"),
                "peak mem": fmt_bytes(m["peak_memory_bytes"]) if "peak_memory_bytes" in m else "-",
                "pareto": "yes" if c.pareto else "",
                "reason": "; ".join([c.reason, *getattr(c, "notes", [])]).strip("; "),
            }
        )
    return rows


def render_html(result: Any, png: bytes, energy_png: bytes | None = None) -> str:
    rows = table_rows(result)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        f"<tr class='{html.escape(r['status'])}'>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    best = result.best.recipe if result.best else "none passed the gate"
    if result.best is None and getattr(result, "closest", None) is not None:
        best += f" (closest: {result.closest.recipe}, which breaks {result.closest_reason})"
    image = base64.b64encode(png).decode("ascii")
    fit_html = _fit_html(result)
    if energy_png:
        fit_html += ('<h2>Quality against energy on the target</h2><img alt="metric against energy" '
                     f'src="data:image/png;base64,{base64.b64encode(energy_png).decode("ascii")}">')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeship report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}} table{{border-collapse:collapse;font-size:.9rem}}
td,th{{border:1px solid #ddd;padding:.3rem .5rem;text-align:left}} th{{background:#f3f3f3}}
tr.rejected td,tr.failed td{{color:#888}} tr.baseline td{{font-weight:600}}
</style></head><body>
<h1>edgeship optimize report</h1>
<p>Model: <code>{html.escape(result.source)}</code> &middot; metric: <b>{html.escape(result.metric.name)}</b>
&middot; allowed drop: {result.budget.max_accuracy_drop} &middot; objective: {html.escape(result.objective)}
&middot; threads: {result.settings.threads}, batch {result.settings.batch_size}</p>
<p>Best: <b>{html.escape(best)}</b> (marked *). A candidate is rejected when it is not smaller, not faster, or loses more
than the allowed drop. Latency is measured on this machine.</p>
<table><tr>{head}</tr>{body}</table>
<h2>Pareto plot</h2><img alt="metric against latency" src="data:image/png;base64,{image}">
{fit_html}
</body></html>
"""


def _fit_html(result: Any) -> str:
    """The fit table on the target (pass/fail per budget line) and the best model's DVFS states."""
    if getattr(result, "target", None) is None:
        return ""
    lines = [name for name, _, _ in result.budget.device_lines()]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["recipe", "latency ms", "peak memory", "size", "energy mJ", *lines, "source", "why it lost"])
    rows = []
    for c in [result.baseline, *result.candidates]:
        if not c.fit:
            continue
        f = c.fit["figures"]
        marks = {line["line"]: ("pass" if line["ok"] else "FAIL") for line in c.fit["lines"]}
        cells = [c.recipe, f"{f['latency_ms']:.3g}", fmt_bytes(f["peak_memory_bytes"]), fmt_bytes(f["size_bytes"]),
                 f"{f['energy_mj']:.4g}", *(marks.get(line, "-") for line in lines), c.fit["source"],
                 "" if c is result.baseline else c.lost_because]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>")
    chosen = result.best or result.baseline
    states = chosen.fit.get("estimate", {}).get("dvfs", []) if chosen.fit else []
    dvfs = "".join(
        f"<tr><td>{html.escape(s['state'])}</td><td>{s['freq_ghz']:g}</td><td>{s['latency_ms']:.3g}</td>"
        f"<td>{s['active_energy_mj']:.3g}</td><td>{s['energy_mj']:.4g}</td><td>{'yes' if s['meets_latency'] else 'no'}</td></tr>"
        for s in states
    )
    return (f"<h2>Fit on {html.escape(result.target.id)}</h2><p>{html.escape(result.target.name)}. Figures are "
            "estimates from the device profile, except where the source says measured.</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            f"<h2>DVFS states and energy ({html.escape(chosen.recipe)})</h2><table><tr><th>state</th><th>GHz</th>"
            "<th>latency ms</th><th>active mJ</th><th>mJ per inference incl. idle</th><th>meets latency</th></tr>"
            f"{dvfs}</table>")


def _copy_model(model: Any, dest: Path) -> None:
    if model.artifact is not None:  # an engine's own files (an OpenVINO IR, a .tflite): kept under their suffixes
        for f in model.files:
            shutil.copyfile(f, dest.with_suffix(f.suffix))
        return
    shutil.copyfile(model.path, dest)
    for extra in model.files[1:]:
        shutil.copyfile(extra, dest.parent / extra.name.replace(model.path.name, dest.name, 1))


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that holds something other than an earlier edgeship report."""
    from edgeship.errors import ConfigError

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "report.json").is_file())):
        raise ConfigError(
            f"--out {str(out_dir)!r} exists and is not an edgeship report folder; choose a new or empty folder."
        )


def write_report(result: Any, out_dir: Path) -> Path:
    """Build the report in a temporary sibling folder, then swap it into ``out_dir``."""
    check_out_dir(out_dir)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # a report is for others to read (mkdtemp makes 0700)
        (tmp / "candidates").mkdir()
        for c in result.candidates:
            if c.model is not None:
                suffix = c.model.artifact.suffix if c.model.artifact is not None else ".onnx"
                _copy_model(c.model, tmp / "candidates" / f"{c.recipe}{suffix}")
                c.path = f"candidates/{c.recipe}{suffix}"
        if result.best is not None:
            best = result.best.model
            if best.artifact is not None:  # another engine's best: its model, and the ONNX graph it was made from
                _copy_model(best, tmp / f"best{best.artifact.suffix}")
                shutil.copyfile(best.path, tmp / "best.onnx")
            else:
                _copy_model(best, tmp / "best.onnx")
        pareto_plot(result, tmp / "pareto.png")
        energy_png = (tmp / "pareto_energy.png").read_bytes() if energy_plot(result, tmp / "pareto_energy.png") else None
        (tmp / "report.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(result, (tmp / "pareto.png").read_bytes(), energy_png),
                                         encoding="utf-8")
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
