"""Where the fleet service keeps its rows and device credentials: SQLite or PostgreSQL.

SQLite (a file) is the embedded default, fine for one machine's worth of devices. A fleet that
outgrows it uses PostgreSQL (``fleet serve --db postgresql://user@host/db``, the ``fleet-pg``
extra): several connections at once, each report one transaction that locks its device's
credential row, so that reports from thousands of devices at once neither mix nor lose rows.
The SQL is the same for both (UPSERT is in SQLite since 3.24); every statement takes
parameters, never text from a request.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import queue
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeship.core.errors import ConfigError
from edgeship.core.names import check_name

__all__ = ["FleetStore", "PostgresFleetStore", "open_store", "FIELDS", "TOKEN_PREFIX"]

FIELDS = ("device_id", "model", "channel", "version", "slot", "health", "last_error", "message")
TOKEN_PREFIX = "esd_"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT NOT NULL, model TEXT NOT NULL, channel TEXT, version BIGINT, slot TEXT, health TEXT,
        last_error TEXT, message TEXT, reported_at TEXT NOT NULL, PRIMARY KEY (device_id, model))""",
    """CREATE TABLE IF NOT EXISTS credentials (
        device_id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, enrolled_at TEXT NOT NULL)""",
)
_COLUMNS = FIELDS + ("reported_at",)
_UPSERT_ROW = (f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
               "ON CONFLICT (device_id, model) DO UPDATE SET "
               + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:]))
_UPSERT_CREDENTIAL = ("INSERT INTO credentials (device_id, token_sha256, enrolled_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (device_id) DO UPDATE SET token_sha256 = excluded.token_sha256, "
                      "enrolled_at = excluded.enrolled_at")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class FleetStore:
    """The store over SQLite; :class:`PostgresFleetStore` changes only how connections are had."""

    def __init__(self, path: Path | str) -> None:
        try:
            self.db = sqlite3.connect(str(path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the fleet database {str(path)!r}: {exc}.") from None
        self.lock = threading.Lock()
        self._create()

    def _create(self) -> None:
        with self._tx() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        with self.lock:
            cur = self.db.cursor()
            try:
                yield cur
                self.db.commit()
            except BaseException:
                self.db.rollback()
                raise

    def _sql(self, text: str) -> str:
        return text

    def _lock_device(self, cur: Any, device_id: str) -> None:
        """Serialise one device's writes (SQLite: every write is serialised already)."""

    def enroll(self, device_id: str) -> str:
        """A new token for ``device_id`` (replacing any old one, which stops working)."""
        check_name(device_id, "device id")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as cur:
            cur.execute(self._sql(_UPSERT_CREDENTIAL), (device_id, _digest(token), _now()))
        return token

    def device_of(self, token: str) -> str | None:
        """The device a token was issued to, or None."""
        with self._tx() as cur:
            cur.execute(self._sql("SELECT device_id FROM credentials WHERE token_sha256 = ?"), (_digest(token),))
            row = cur.fetchone()
        return row[0] if row else None

    def record(self, report: Any, max_models: int) -> bool:
        """Store the report; False if it would give its device more than ``max_models`` rows."""
        values = [getattr(report, f) for f in FIELDS] + [_now()]
        with self._tx() as cur:
            self._lock_device(cur, report.device_id)
            cur.execute(self._sql("SELECT count(*), sum(CASE WHEN model = ? THEN 1 ELSE 0 END) FROM devices "
                                  "WHERE device_id = ?"), (report.model, report.device_id))
            held, same = cur.fetchone()
            if not same and held >= max_models:
                return False
            cur.execute(self._sql(_UPSERT_ROW), values)
        return True

    def _select(self, tail: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {', '.join(_COLUMNS)} FROM devices {tail}"), params)
            found = cur.fetchall()
        return [dict(zip(_COLUMNS, row)) for row in found]

    def rows(self, model: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        where = "WHERE model = ? " if model else ""
        return self._select(where + "ORDER BY model, device_id LIMIT ? OFFSET ?",
                            ([model] if model else []) + [limit, offset])

    def rows_unhealthy_first(self, limit: int, offset: int) -> list[dict[str, Any]]:
        return self._select("ORDER BY CASE WHEN health = 'ok' THEN 1 ELSE 0 END, model, device_id LIMIT ? OFFSET ?",
                            [limit, offset])

    def count(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT count(*) FROM devices")
            return int(cur.fetchone()[0])

    def summary(self) -> list[dict[str, Any]]:
        """Per model: devices, the newest version reported, how many run it, versions and unhealthy counts."""
        with self._tx() as cur:
            cur.execute("SELECT model, version, count(*), sum(CASE WHEN health = 'ok' THEN 0 ELSE 1 END) FROM devices "
                        "GROUP BY model, version ORDER BY model LIMIT 10000")
            groups = cur.fetchall()
        models: dict[str, dict[str, Any]] = {}
        for model, version, n, unhealthy in groups:
            m = models.setdefault(model, {"model": model, "devices": 0, "versions": [], "unhealthy": 0})
            m["devices"] += int(n)
            m["unhealthy"] += int(unhealthy or 0)
            if version is not None:
                m["versions"].append((int(version), int(n)))
        for m in models.values():
            m["versions"].sort(reverse=True)
            m["newest"], m["on_newest"] = m["versions"][0] if m["versions"] else (0, 0)
        return list(models.values())

    def close(self) -> None:
        self.db.close()


class PostgresFleetStore(FleetStore):
    """The store over PostgreSQL, with a small pool of connections (one per concurrent request)."""

    def __init__(self, url: str, connections: int = 8) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError("a postgresql:// fleet database needs psycopg: pip install 'edgeship[fleet-pg]'.") from None
        self.pool: queue.Queue[Any] = queue.Queue()
        try:
            for _ in range(connections):
                self.pool.put(psycopg.connect(url, connect_timeout=10))
        except psycopg.Error as exc:
            self.close()
            raise ConfigError(f"cannot connect to the fleet database: {str(exc).strip().splitlines()[0]}.") from None
        with self._tx() as cur:  # several services may start at once: create the tables under a lock
            cur.execute("SELECT pg_advisory_xact_lock(7426)")
        self._create()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        conn = self.pool.get()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        finally:
            self.pool.put(conn)

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _lock_device(self, cur: Any, device_id: str) -> None:
        cur.execute("SELECT 1 FROM credentials WHERE device_id = %s FOR UPDATE", (device_id,))

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get().close()


def open_store(db: str | Path) -> FleetStore:
    """``postgresql://...`` opens PostgreSQL; anything else is an SQLite file."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresFleetStore(text)
    return FleetStore(Path(text))
