"""The fleet dashboard: HTML pages for operators who would rather look than type.

Rendered on the server, with no script: every value a device sent goes through
``html.escape``, and the pages are served with a Content-Security-Policy that allows no script
at all, so text that slipped through could still not run. The page refreshes itself every
``REFRESH_S`` seconds.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["login_page", "dashboard_page", "CSP", "REFRESH_S"]

REFRESH_S = 15
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.ok { color: #176f2c; } .bad { color: #b00020; font-weight: 600; }
.bar { background: #e6e6e6; width: 200px; height: 12px; display: inline-block; }
.bar span { background: #3a7bd5; height: 12px; display: block; }
.error { color: #b00020; white-space: pre-wrap; max-width: 40em; }
"""


def _page(title: str, body: str, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def login_page(error: str | None = None) -> str:
    message = f'<p class="bad" id="login-error">{escape(error)}</p>' if error else ""
    return _page("edgeship fleet: sign in", f"""
<h1>edgeship fleet</h1>
<p>Sign in with the operator's token (the file given to <code>fleet serve --operator-token-file</code>).</p>
{message}
<form method="post" action="/dashboard/login">
  <label>Operator token <input type="password" name="token" id="token" autocomplete="off" size="50"></label>
  <button type="submit" id="sign-in">Sign in</button>
</form>""")


def _rollout(summary: list[dict[str, Any]]) -> str:
    rows = []
    for m in summary:
        share = m["on_newest"] / m["devices"] if m["devices"] else 0.0
        versions = ", ".join(f"v{v}: {n}" for v, n in m["versions"])
        rows.append(f'<tr data-model="{escape(m["model"])}"><td>{escape(m["model"])}</td><td>{m["devices"]}</td>'
                    f'<td>v{m["newest"]}</td><td><span class="bar"><span style="width:{share * 100:.0f}%"></span>'
                    f'</span> <span class="progress">{m["on_newest"]} of {m["devices"]} on v{m["newest"]} '
                    f'({share * 100:.0f}%)</span></td><td>{escape(versions)}</td>'
                    f'<td class="{"bad" if m["unhealthy"] else "ok"}">{m["unhealthy"]}</td></tr>')
    return ("<table id=\"rollout\"><tr><th>model</th><th>devices</th><th>newest</th><th>rollout</th>"
            "<th>versions</th><th>unhealthy</th></tr>" + "".join(rows) + "</table>")


def dashboard_page(summary: list[dict[str, Any]], rows: list[dict[str, Any]], total: int, page: int,
                   page_size: int) -> str:
    """The rollout per model, then the devices (unhealthy first), a page at a time."""
    body = ['<h1>edgeship fleet</h1><form method="post" action="/dashboard/logout">'
            '<button type="submit" id="sign-out">Sign out</button></form>',
            f"<h2>Rollout</h2>{_rollout(summary)}",
            f'<h2>Devices</h2><p id="device-count">{total} device row(s); unhealthy first.</p>',
            '<table id="devices"><tr><th>device</th><th>model</th><th>channel</th><th>version</th><th>slot</th>'
            "<th>health</th><th>last error</th><th>reported</th></tr>"]
    for r in rows:
        health = str(r.get("health") or "")
        body.append(
            f'<tr><td class="device">{escape(str(r["device_id"]))}</td><td>{escape(str(r["model"]))}</td>'
            f'<td>{escape(str(r.get("channel") or ""))}</td><td>{escape(str(r.get("version") or "-"))}</td>'
            f'<td>{escape(str(r.get("slot") or "-"))}</td>'
            f'<td class="health {"ok" if health == "ok" else "bad"}">{escape(health)}</td>'
            f'<td class="error">{escape(str(r.get("last_error") or ""))}</td>'
            f'<td>{escape(str(r.get("reported_at") or ""))}</td></tr>')
    body.append("</table>")
    pages = max(1, -(-total // page_size))
    if pages > 1:
        links = [f'<a href="/dashboard?page={p}">{p}</a>' if p != page else f"<b>{p}</b>" for p in range(1, pages + 1)]
        body.append(f'<p id="pages">page {" ".join(links[:50])}</p>')
    return _page("edgeship fleet", "".join(body), refresh=True)
