"""Fleet status: agents report here, operators read it back (`edgeship fleet status`).

A small FastAPI service over a store of rows, one per device and model, replaced by each report:

- ``POST /v1/reports`` (a device's token): ``{device_id, model, channel, version, slot, health,
  last_error, message}``. A device writes only its own rows: its token names it.
- ``GET /v1/devices?model=&limit=&offset=`` (the operator's token): the table, a page (at most
  ``max_page`` rows) at a time; an empty page is the end.
- ``GET /v1/health``: open, for probes.
- ``GET /dashboard``: the same table as a web page, with each model's rollout, for an operator
  signed in with the operator's token (a session cookie; see :mod:`edgeship.ota.dashboard`).

Credentials are bearer tokens (``Authorization: Bearer ...``): ``edgeship fleet enroll DEVICE``
makes a device's token (the store keeps only its SHA-256), and the operator's token lives in
a file given to ``fleet serve --operator-token-file``. Bodies, text fields and the rows a
device may hold are bounded.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field, field_validator

from edgeship.core.errors import ConfigError, FleetError
from edgeship.core.http import BodyLimit, bearer_token, same_secret
from edgeship.core.names import NAME_PATTERN, is_name
from edgeship.ota.fleet_store import FleetStore, open_store

__all__ = ["create_fleet_app", "FleetError", "FleetLimits", "FleetStore", "Report", "new_operator_token"]

_NAME = f"^{NAME_PATTERN}$"  # pydantic's spelling of core.names.check_name (it refuses '..' too, below)


@dataclass(frozen=True)
class FleetLimits:
    """What one request may cost the fleet service."""

    max_body_bytes: int = 16 << 10  # a report is a few hundred bytes
    max_models_per_device: int = 16  # rows one device may hold
    max_page: int = 1000  # rows per GET /v1/devices


class Report(BaseModel):
    """One agent's report (what `edgeship agent --fleet-url` sends after every check)."""

    device_id: str = Field(pattern=_NAME)
    model: str = Field(pattern=_NAME)
    channel: Optional[Literal["stable", "canary"]] = None
    version: Optional[int] = Field(default=None, ge=1, le=2**53)
    slot: Optional[Literal["a", "b"]] = None
    health: Optional[str] = Field(default=None, max_length=50)
    last_error: Optional[str] = Field(default=None, max_length=2000)
    message: Optional[str] = Field(default=None, max_length=2000)

    @field_validator("device_id", "model")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not is_name(value):
            raise ValueError("not a plain name")
        return value


def new_operator_token() -> str:
    return "eso_" + secrets.token_urlsafe(32)


def create_fleet_app(store: FleetStore | Path | str, operator_token: str, limits: FleetLimits | None = None) -> Any:
    """The fleet service over ``store`` (a FleetStore, an SQLite file path or a postgresql:// URL)."""
    if not operator_token or len(operator_token) < 16:
        raise ConfigError("the operator token must be at least 16 characters; make one with "
                          "`edgeship fleet serve --operator-token-file NEW_FILE` (it writes one).")
    store = store if isinstance(store, FleetStore) else open_store(store)
    limits = limits or FleetLimits()
    app = FastAPI(title="edgeship fleet status")
    app.state.store = store

    def device(request: Request) -> str:
        token = bearer_token(request.headers.get("authorization"))
        found = store.device_of(token) if token else None
        if found is None:
            raise HTTPException(401, "a device reports with its own token (Authorization: Bearer ...), from "
                                     "`edgeship fleet enroll DEVICE`.", headers={"WWW-Authenticate": "Bearer"})
        return found

    def operator(request: Request) -> None:
        if not same_secret(bearer_token(request.headers.get("authorization")), operator_token):
            raise HTTPException(401, "reading the fleet takes the operator's token (Authorization: Bearer ...).",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/reports")
    def report(body: Report, request: Request) -> dict[str, str]:
        who = device(request)
        if body.device_id != who:
            raise HTTPException(403, f"this token belongs to device {who!r}; a device reports only its own rows.")
        if not store.record(body, limits.max_models_per_device):
            raise HTTPException(409, f"device {who!r} already reports {limits.max_models_per_device} models, the "
                                     "most one device may hold.")
        return {"status": "recorded"}

    @app.get("/v1/devices")
    def devices(request: Request, model: Optional[str] = Query(None, pattern=_NAME),
                limit: int = Query(limits.max_page, ge=1, le=2**31),
                offset: int = Query(0, ge=0, le=2**31)) -> list[dict[str, Any]]:
        operator(request)
        rows = store.rows(model, min(limit, limits.max_page), offset)  # a page holds max_page rows at most
        if model and not rows and offset == 0:
            raise HTTPException(404, f"no device has reported model {model!r}")
        return rows

    _dashboard_routes(app, store, operator_token, limits)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, option="FleetLimits.max_body_bytes")
    return app


SESSION_COOKIE = "edgeship_fleet_session"
SESSION_S = 12 * 3600
MAX_SESSIONS = 1000


def _dashboard_routes(app: Any, store: FleetStore, operator_token: str, limits: FleetLimits,
                      clock: Any = time.monotonic) -> None:
    """GET /dashboard (an operator's session cookie, else the sign-in form), POST /dashboard/login
    (the operator's token, form-encoded) and POST /dashboard/logout. Sessions live in memory: a
    restart signs everyone out."""
    from fastapi.responses import HTMLResponse, RedirectResponse

    from edgeship.ota.dashboard import CSP, dashboard_page, login_page

    sessions: dict[str, float] = {}  # session id -> expiry
    lock = threading.Lock()
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
               "Referrer-Policy": "no-referrer"}

    def signed_in(request: Request) -> bool:
        sid = request.cookies.get(SESSION_COOKIE)
        with lock:
            expiry = sessions.get(sid or "")
            if expiry is not None and expiry < clock():
                sessions.pop(sid, None)
                expiry = None
        return expiry is not None

    @app.get("/dashboard", include_in_schema=False)
    def dashboard(request: Request, page: int = Query(1, ge=1, le=2**31)) -> Any:
        if not signed_in(request):
            return HTMLResponse(login_page(), headers=headers)
        size = min(500, limits.max_page)
        rows = store.rows_unhealthy_first(size, (page - 1) * size)
        return HTMLResponse(dashboard_page(store.summary(), rows, store.count(), page, size), headers=headers)

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Any:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=5)
        if not same_secret((form.get("token") or [""])[0].strip(), operator_token):
            return HTMLResponse(login_page("That is not the operator's token."), 401, headers=headers)
        sid = secrets.token_urlsafe(32)
        with lock:
            if len(sessions) >= MAX_SESSIONS:
                sessions.pop(min(sessions, key=sessions.__getitem__))
            sessions[sid] = clock() + SESSION_S
        response = RedirectResponse("/dashboard", 303, headers=headers)
        response.set_cookie(SESSION_COOKIE, sid, max_age=SESSION_S, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/dashboard/logout", include_in_schema=False)
    def logout(request: Request) -> Any:
        with lock:
            sessions.pop(request.cookies.get(SESSION_COOKIE) or "", None)
        response = RedirectResponse("/dashboard", 303, headers=headers)
        response.delete_cookie(SESSION_COOKIE)
        return response
