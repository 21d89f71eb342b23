"""Fleet status: agents report here, `edgeship fleet status` reads it back.

A small FastAPI service over SQLite (one row per device and model, replaced by each report):
``POST /v1/reports`` with ``{device_id, model, channel, version, slot, health, last_error,
message}``, ``GET /v1/devices`` for the table.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import threading
import urllib.request
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from edgeship.core.errors import FleetError

__all__ = ["create_fleet_app", "fetch_status", "FleetError", "Report"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    channel TEXT,
    version INTEGER,
    slot TEXT,
    health TEXT,
    last_error TEXT,
    message TEXT,
    reported_at TEXT NOT NULL,
    PRIMARY KEY (device_id, model)
)
"""
_FIELDS = ("device_id", "model", "channel", "version", "slot", "health", "last_error", "message")


class Report(BaseModel):
    """One agent's report (what `edgeship agent --fleet-url` sends after every check)."""

    device_id: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    channel: Optional[str] = Field(default=None, max_length=50)
    version: Optional[int] = None
    slot: Optional[str] = Field(default=None, max_length=10)
    health: Optional[str] = Field(default=None, max_length=50)
    last_error: Optional[str] = Field(default=None, max_length=2000)
    message: Optional[str] = Field(default=None, max_length=2000)


def create_fleet_app(db_path: Path | str) -> Any:
    db = sqlite3.connect(str(db_path), check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(_SCHEMA)
    db.commit()
    lock = threading.Lock()
    app = FastAPI(title="edgeship fleet status")

    @app.post("/v1/reports")
    def report(body: Report) -> dict[str, str]:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with lock:
            db.execute(f"INSERT OR REPLACE INTO devices ({', '.join(_FIELDS)}, reported_at) "
                       f"VALUES ({', '.join('?' * (len(_FIELDS) + 1))})",
                       [getattr(body, f) for f in _FIELDS] + [now])
            db.commit()
        return {"status": "recorded"}

    @app.get("/v1/devices")
    def devices(model: str | None = None) -> list[dict[str, Any]]:
        with lock:
            query = f"SELECT {', '.join(_FIELDS)}, reported_at FROM devices"
            rows = db.execute(query + (" WHERE model = ?" if model else "") + " ORDER BY model, device_id",
                              [model] if model else []).fetchall()
        if model and not rows:
            raise HTTPException(404, f"no device has reported model {model!r}")
        return [dict(zip(_FIELDS + ("reported_at",), row)) for row in rows]

    return app


def fetch_status(url: str, model: str | None = None) -> list[dict[str, Any]]:
    address = f"{url.rstrip('/')}/v1/devices" + (f"?model={model}" if model else "")
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            return json.loads(response.read())
    except OSError as exc:
        raise FleetError(f"cannot read fleet status from {address}: {exc}; is `edgeship fleet serve` running?") from None
