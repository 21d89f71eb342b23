"""A hybrid bundle on the device: run the head, send the cut tensor upstream, answer with the tail's
result, and fall back to the whole model on the device when the upstream fails.

- :class:`Upstream` calls any Open Inference Protocol v2 server (``edgeship serve`` of the tail
  bundle, Triton, ...) with the binary data extension, over a kept-alive connection per thread,
  with a bearer token and a timeout. Everything that is not a well-formed answer of the right
  names and shapes is an :class:`UpstreamError` that says what went wrong.
- :class:`CircuitBreaker` stops calling an upstream after ``failures`` failures in a row and
  tries again after ``cooldown_s`` (one request at a time: half-open); its clock is injected.
- :class:`HybridRunner` puts them together: every request is answered, and says where it ran
  (``split``, ``upstream``: the whole model upstream, or ``device``) and why it fell back.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeship.core.errors import ConfigError
from edgeship.core.wire import wire_inputs
from edgeship.runtime.protocol import DATATYPES, oip_datatype

log = logging.getLogger(__name__)

__all__ = ["Upstream", "UpstreamError", "CircuitBreaker", "RoutePolicy", "HybridRunner", "MAX_RESPONSE_BYTES"]

MAX_RESPONSE_BYTES = 256 << 20  # an upstream's answer larger than this is refused unread


class UpstreamError(Exception):
    """The upstream did not give a usable answer; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Upstream:
    """One upstream model on an OIP v2 server."""

    def __init__(self, url: str, model: str, token: str | None = None, timeout_s: float = 2.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"--upstream {url!r} must be an http(s)://HOST[:PORT] address.")
        if not timeout_s > 0:
            raise ConfigError(f"the upstream timeout must be > 0 seconds, got {timeout_s}.")
        self.url, self.model, self.timeout_s = url.rstrip("/"), model, timeout_s
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str], model: str | None = None) -> dict[str, np.ndarray]:
        """``model``'s (default: this upstream's model) ``outputs`` for ``inputs``, both ways as binary tensors."""
        entries, blobs = [], []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            blob = array.tobytes()
            entries.append({"name": name, "shape": list(array.shape), "datatype": oip_datatype(array.dtype.name),
                            "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        header = json.dumps({"inputs": entries, "outputs": [{"name": n, "parameters": {"binary_data": True}}
                                                             for n in outputs]}).encode()
        headers = {**self._headers, "Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(len(header))}
        path = f"{self._prefix}/v2/models/{urllib.parse.quote(model or self.model, safe='')}/infer"
        try:
            conn = self._connection()
            conn.request("POST", path, body=header + b"".join(blobs), headers=headers)
            response = conn.getresponse()
            length = int(response.getheader("Content-Length") or -1)
            if length > MAX_RESPONSE_BYTES:
                raise UpstreamError("too_large", f"the upstream answered {length} bytes, over {MAX_RESPONSE_BYTES}")
            body = response.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            self._drop()
            raise UpstreamError("timeout", f"no answer from {self.url} within {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise UpstreamError("unreachable", f"{self.url}: {type(exc).__name__}: {exc}") from None
        if response.status in (401, 403):
            raise UpstreamError("auth", f"{self.url} refused the token ({response.status})")
        if response.status != 200:
            detail = body[:200].decode("utf-8", "replace")
            raise UpstreamError(f"http_{response.status}", f"{self.url} answered {response.status}: {detail}")
        return _parse_response(body, response.getheader("Inference-Header-Content-Length"), outputs)


def _parse_response(body: bytes, header_length: str | None, wanted: list[str]) -> dict[str, np.ndarray]:
    try:
        split = int(header_length) if header_length is not None else len(body)
        header = json.loads(body[:split])
        result, offset = {}, split
        for entry in header["outputs"]:
            dtype = np.dtype(DATATYPES[entry["datatype"]])
            if dtype == object:
                raise ValueError(f"output {entry['name']!r} is BYTES, not a numeric tensor")
            shape = [int(d) for d in entry["shape"]]
            count = int(np.prod(shape, dtype=np.int64))
            if "parameters" in entry and "binary_data_size" in entry["parameters"]:
                size = int(entry["parameters"]["binary_data_size"])
                if size != count * dtype.itemsize or offset + size > len(body):
                    raise ValueError(f"output {entry['name']!r} has {size} bytes for shape {shape}")
                array = np.frombuffer(body, dtype, count, offset).reshape(shape)
                offset += size
            else:
                array = np.asarray(entry["data"], dtype=dtype).reshape(shape)
            result[str(entry["name"])] = array
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError("bad_answer", f"the upstream's answer is not an OIP response: {exc}") from None
    missing = [n for n in wanted if n not in result]
    if missing:
        raise UpstreamError("bad_answer", f"the upstream's answer lacks outputs {missing}")
    return {n: result[n] for n in wanted}


class CircuitBreaker:
    """Closed: calls go through. After ``failures`` failures in a row: open, no calls for
    ``cooldown_s``. Then half-open: one call goes through; its success closes, its failure reopens."""

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or cooldown_s < 0:
            raise ConfigError(f"the circuit breaker needs failures >= 1 and cooldown >= 0, got {failures}, {cooldown_s}.")
        self.failures, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self._streak, self._opened_at, self._trial = 0, None, False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at >= self.cooldown_s and not self._trial:
                self._trial = True  # one trial call at a time
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._streak, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._streak += 1
            self._trial = False
            if self._opened_at is not None or self._streak >= self.failures:
                self._opened_at = self._clock()


class RoutePolicy:
    """Where the next request runs: the route with the lowest expected latency.

    - Each route starts from the plan's estimate (``edgeship split``: device-only, the chosen cut,
      cloud-only), and each answer's measured latency moves its route's figure (an exponentially
      weighted mean, weight ``alpha``): the link and the upstream's load are measured, not assumed.
    - A route's device time (all of ``device``, the head of ``split``, none of ``upstream``) waits
      behind the requests already queued for the device: when the queue is deep, whole requests go
      upstream.
    - A remote route not measured for ``probe_s`` gets the next request once, so a link that came
      back, or got faster, is noticed.
    """

    def __init__(self, estimates_s: dict[str, float], device_s: dict[str, float] | None = None,
                 alpha: float = 0.3, probe_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if "device" not in estimates_s or not 0 < alpha <= 1 or probe_s < 0:
            raise ConfigError("a route policy needs a device estimate, 0 < alpha <= 1 and probe_s >= 0.")
        self.alpha, self.probe_s, self._clock = alpha, probe_s, clock
        self.expected_s = {k: float(v) for k, v in estimates_s.items()}
        self.device_s = {k: float((device_s or {}).get(k, v if k == "device" else 0.0)) for k, v in estimates_s.items()}
        now = clock()
        self._checked = {k: now for k in estimates_s}
        self._lock = threading.Lock()

    @property
    def routes(self) -> list[str]:
        return list(self.expected_s)

    def cost_s(self, route: str, waiting: int = 0) -> float:
        """The expected latency of ``route`` with ``waiting`` requests queued for the device."""
        device = self.device_s[route]
        return self.expected_s[route] + (device * waiting if math.isfinite(device) else 0.0)

    def choose(self, waiting: int = 0, allowed: Callable[[str], bool] = lambda route: True) -> str:
        """The route for the next request; ``waiting``: requests queued for the device."""
        with self._lock:
            now = self._clock()
            cost = {r: self.cost_s(r, waiting) for r in self.expected_s if r == "device" or allowed(r)}
            best = min(cost, key=cost.get)
            stale = [r for r in cost if r not in ("device", best) and now - self._checked[r] >= self.probe_s]
            if stale:
                best = stale[0]
            self._checked[best] = now
            return best

    def observe(self, route: str, seconds: float, device_seconds: float | None = None) -> None:
        """A measured answer on ``route``: ``seconds`` in all, ``device_seconds`` of them on the device."""
        with self._lock:
            if route not in self.expected_s:
                return
            for table, value in ((self.expected_s, seconds), (self.device_s, device_seconds)):
                if value is not None:
                    now = table[route]
                    table[route] = value if not math.isfinite(now) else now + self.alpha * (value - now)
            self._checked[route] = self._clock()

    def drop(self, route: str) -> None:
        """Never choose ``route`` again (the upstream does not serve it)."""
        with self._lock:
            if route != "device":
                self.expected_s.pop(route, None)
                self.device_s.pop(route, None)


@dataclass(frozen=True)
class Answer:
    outputs: dict[str, np.ndarray]
    executed_on: str  # "split", "upstream" or "device"
    fallback_reason: str  # why it ran on the device ("" if it did not fall back)


class HybridRunner:
    """A hybrid bundle's runtime (``Runtime`` with a head) and its upstream.

    The routes: ``split`` (the head here, the tail upstream), ``upstream`` (the whole request to the
    upstream: the cloud-only plan's tail, or with ``offload`` the whole model served there under the
    bundle's own name) and ``device`` (the whole model here). :class:`RoutePolicy` picks one per
    request; a remote route that fails falls back to the device, and the upstream's circuit breaker opens
    after repeated failures."""

    def __init__(self, runtime: Any, upstream: Upstream, breaker: CircuitBreaker | None = None,
                 offload: bool = True, policy: RoutePolicy | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        plan = runtime.hybrid
        if plan is None:
            raise ConfigError(f"{runtime.manifest['name']} is not a hybrid bundle: pack it with --split, or serve "
                              "it without --upstream.")
        self.runtime, self.upstream, self.plan = runtime, upstream, plan
        self.outputs = [s["name"] for s in runtime.manifest["outputs"]]
        self.whole_model = str(runtime.manifest["name"])
        self.policy = policy or RoutePolicy(*_route_estimates(plan, offload))
        self.breaker = breaker or CircuitBreaker()  # one upstream: its faults close every remote route
        self._clock = clock
        self.last_error = ""  # the last upstream failure, in full

    def predict(self, inputs: dict[str, Any], waiting: int = 0) -> Answer:
        """One request on the route the policy picks; every request gets an answer."""
        route = self.policy.choose(waiting, lambda r: self.breaker.state != "open")
        if route == "device":
            return Answer(self._local(inputs), "device", "circuit_open" if self.breaker.state == "open" else "")
        if not self.breaker.allow():  # half-open, and another request holds the one trial
            return Answer(self._local(inputs), "device", "circuit_open")
        started = self._clock()
        try:
            answer, head_s = self._remote(route, inputs)
        except UpstreamError as exc:
            self.last_error = str(exc)
            if exc.reason == "http_404" and route == "upstream" and self.plan["position"] > 0:
                self.policy.drop(route)  # the upstream does not serve the whole model: no offload
                log.warning("the upstream does not serve %r: whole-request offload is off", self.whole_model)
                self.breaker.success()
            else:
                self.breaker.failure()
                self.policy.observe(route, self._clock() - started)
            return Answer(self._local(inputs), "device", exc.reason)
        self.breaker.success()
        self.policy.observe(route, self._clock() - started, head_s if route == "split" else None)
        return Answer(answer, route, "")

    def _local(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        started = self._clock()
        outputs = self.runtime.predict(inputs)
        took = self._clock() - started
        self.policy.observe("device", took, took)
        return outputs

    def _remote(self, route: str, inputs: dict[str, Any]) -> tuple[dict[str, np.ndarray], float]:
        """The upstream's answer, and the seconds the device spent on the head."""
        rows = len(next(iter(inputs.values())))
        if route == "upstream" and self.plan["position"] > 0:  # the whole model, served upstream by name
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
            answer, head_s = self.upstream.infer(feeds, self.outputs, self.whole_model), 0.0
        else:
            started = self._clock()
            cut = self.runtime.run_head(inputs) if self.plan["position"] > 0 else inputs
            head_s = self._clock() - started
            answer = self.upstream.infer(wire_inputs(cut, self.plan["wire"]), self.outputs)
        _check_shapes(answer, self.runtime.manifest["outputs"], rows)
        return answer, head_s


def _route_estimates(plan: dict[str, Any], offload: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Each route's starting latency and device time, seconds, from the plan's estimates. A plan
    without the other routes' estimates keeps to its own route until the others are measured."""
    estimates = {k: v for k, v in (plan.get("estimates_ms") or {}).items() if v is not None}
    own_ms = plan.get("estimate_ms") or {}
    own = "split" if plan["position"] > 0 else "upstream"
    routes = {"device": estimates.get("device", math.inf), own: own_ms.get("total_ms") or 0.0}
    if offload and own == "split":
        routes["upstream"] = estimates.get("upstream", math.inf)
    device = {"device": routes["device"], own: own_ms.get("head_ms") or 0.0}
    return ({r: float(t) / 1000 for r, t in routes.items()}, {r: float(t) / 1000 for r, t in device.items()})


def _check_shapes(answer: dict[str, np.ndarray], specs: list[dict[str, Any]], rows: int) -> None:
    for spec in specs:
        array = answer[spec["name"]]
        want = [rows if i == 0 and not isinstance(d, int) else d for i, d in enumerate(spec["shape"])]
        if list(array.shape) != [d if isinstance(d, int) else array.shape[i] for i, d in enumerate(want)]:
            raise UpstreamError("bad_answer", f"the upstream's {spec['name']!r} has shape {list(array.shape)}, "
                                f"the model's is {want}")
        if array.dtype != np.dtype(spec["dtype"]):
            raise UpstreamError("bad_answer", f"the upstream's {spec['name']!r} is {array.dtype}, not {spec['dtype']}")
