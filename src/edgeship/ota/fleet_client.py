"""The fleet service's clients: an agent's report (a device token), an operator's read (the
operator token). Standard library only, so the agent on a device does not import the service."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from edgeship.core.errors import FleetError
from edgeship.core.names import check_name

__all__ = ["fetch_status", "send_report"]


def _detail(exc: Any) -> str:
    """The reason in a FastAPI error answer ({"detail": ...}), else the status line's."""
    try:
        detail = json.loads(exc.read(4096)).get("detail", exc.reason)
    except (ValueError, AttributeError, OSError):
        detail = exc.reason
    return str(detail)[:300]


def fetch_status(url: str, token: str, model: str | None = None, page: int = 1000) -> list[dict[str, Any]]:
    """Every row the fleet service holds (for ``model``), read a page at a time with the operator's token."""
    if model is not None:
        check_name(model, "--model")
    rows: list[dict[str, Any]] = []
    while True:
        query = urllib.parse.urlencode({k: v for k, v in (("model", model), ("limit", page),
                                                          ("offset", len(rows))) if v is not None})
        address = f"{url.rstrip('/')}/v1/devices?{query}"
        request = urllib.request.Request(address, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                got = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise FleetError(f"the fleet service at {url} answered {exc.code}: {_detail(exc)}") from None
        except OSError as exc:
            raise FleetError(f"cannot read fleet status from {address}: {exc}; is `edgeship fleet serve` running?") from None
        if not got:  # the server may give fewer rows per page than asked: only an empty page ends it
            return rows
        rows += got


def send_report(url: str, token: str, payload: dict[str, Any], timeout: float = 10) -> None:
    """POST one report with a device's token; raises FleetError with the service's reason."""
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/reports", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        raise FleetError(f"the fleet service refused the report ({exc.code}): {_detail(exc)}") from None
    except OSError as exc:
        raise FleetError(f"cannot reach the fleet service at {url}: {exc}") from None

