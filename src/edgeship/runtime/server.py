"""`edgeship serve`: verified bundles behind the Open Inference Protocol (KServe v2) over REST.

Endpoints (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol):
``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``,
``/v2/models/{name}[/versions/{v}]/ready``; ``POST /v2/models/{name}[/versions/{v}]/infer``;
``GET /metrics`` (Prometheus) and ``/openapi.json``. Errors are ``{"error": "..."}``.

Every bundle is verified (signature, digests, anti-rollback, decryption) and self-tested
before the port opens. A model that is idle for ``idle_unload_s`` is dropped from memory and
verified again, from its file, on the next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from edgeship.bundle.format import BundleError
from edgeship.core.http import (
    BodyLimit,
    ConnectionLimits,
    bearer_token,
    bind,
    json_response_messages,
    run_app,
    same_secret,
)
from edgeship.core.names import StateDir
from edgeship.errors import ConfigError
from edgeship.runtime.batching import DynamicBatcher, QueueFullError
from edgeship.runtime.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    RequestLimits,
    encode_infer_response,
    parse_infer_request,
    tensor_metadata,
)
from edgeship.runtime.session import TEXT_INPUT, Runtime

log = logging.getLogger(__name__)

__all__ = ["ServeSettings", "Trust", "create_app", "serve", "has_batch_axis"]


@dataclass(frozen=True)
class Trust:
    """What a device trusts: signing keys, the content key, and its anti-rollback state."""

    keys: list[Any]
    decrypt_key: bytes | None = None
    state_dir: Path | None = None
    allow_downgrade: bool = False


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 2  # ONNX Runtime intra-op threads per model
    max_batch_size: int = 16  # rows per batch for models with a batch axis; 1 turns batching off
    max_queue_delay_ms: float | None = None  # wait to fill a batch; None adapts (see batching.py), 0 never waits
    max_queue: int = 128  # queued requests per model before answering 503
    max_request_bytes: int = 16 << 20  # larger bodies get 413
    max_json_bytes: int = 1 << 20  # the JSON part of a request, bounded before it is parsed (413 over it)
    max_elements: int = 1 << 24  # per input tensor (413 over it)
    max_output_bytes: int = 64 << 20  # an answer's tensors (413 over it)
    cache_size: int = 0  # LRU entries of results per model; 0: no cache
    idle_unload_s: float | None = None  # unload a model idle this long; reload on the next request
    graceful_timeout_s: float = 30.0  # on shutdown, how long in-flight requests may take
    reload_poll_s: float = 0.5  # how often a served state directory is checked for a new bundle
    token: str | None = None  # when set, /v2/models and /v2/repository need "Authorization: Bearer <token>"
    upstream: str | None = None  # hybrid bundles: the OIP server that runs the tail
    upstream_token: str | None = None
    upstream_timeout_s: float = 2.0
    breaker_failures: int = 3  # upstream failures in a row before the device stops calling it
    breaker_cooldown_s: float = 30.0  # then one trial call after this long
    offload: bool = True  # hybrid bundles: whole requests may go to the upstream's copy of the model

    def check(self) -> None:
        for name in ("threads", "max_batch_size", "max_queue", "max_request_bytes", "max_json_bytes", "max_elements",
                     "max_output_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if (self.max_queue_delay_ms is not None and self.max_queue_delay_ms < 0) or self.cache_size < 0:
            raise ConfigError("max-queue-delay-ms and cache-size must be >= 0.")
        if self.idle_unload_s is not None and self.idle_unload_s <= 0:
            raise ConfigError(f"idle-unload must be > 0 seconds, got {self.idle_unload_s}.")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}.")
        if not self.reload_poll_s > 0:
            raise ConfigError(f"reload-poll must be > 0 seconds, got {self.reload_poll_s}.")
        if not self.upstream_timeout_s > 0 or self.breaker_failures < 1 or self.breaker_cooldown_s < 0:
            raise ConfigError("upstream-timeout must be > 0 s, breaker-failures >= 1 and breaker-cooldown >= 0 s.")


#: the outputs' key that carries where a hybrid bundle's rows ran (never sent as an output)
EXECUTED_ON = "\x00executed_on"


def has_batch_axis(manifest: dict[str, Any]) -> bool:
    """True when every input and output has a symbolic first dimension (a batch axis)."""
    specs = manifest["inputs"] + manifest["outputs"]
    return all(s["shape"] and not isinstance(s["shape"][0], int) for s in specs)


class _Metrics:
    """Prometheus metrics, in a registry of this server's own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter("edgeship_inference_requests", "Inference requests, by HTTP status.",
                                labels + ["status"], registry=self.registry)
        self.latency = Histogram(
            "edgeship_inference_request_duration_seconds", "Time from request received to response ready.", labels,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry)
        self.batch = Histogram("edgeship_batch_size", "Rows per executed batch.", labels,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.queue = Gauge("edgeship_queue_depth", "Requests waiting for the model.", labels, registry=self.registry)
        self.cache = Counter("edgeship_cache_lookups", "Result-cache lookups, by result (hit/miss).",
                             labels + ["result"], registry=self.registry)
        self.in_flight = Gauge("edgeship_inference_requests_in_flight", "Inference requests received, not yet answered.",
                               labels, registry=self.registry)
        self.loaded = Gauge("edgeship_model_loaded", "1 while the model is in memory.", labels, registry=self.registry)
        self.loads = Counter("edgeship_model_loads", "Verified loads, including reloads after an idle unload.",
                             labels, registry=self.registry)
        self.reload_failures = Counter("edgeship_model_reload_failures",
                                       "New bundles in a state directory that were refused (the old one kept serving).",
                                       ["model"], registry=self.registry)
        self.hybrid = Counter("edgeship_hybrid_requests", "Hybrid bundles' batches, by where they ran "
                              "(split, upstream, device) and why they fell back to the device.",
                              labels + ["executed_on", "reason"], registry=self.registry)


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[bytes, dict[str, np.ndarray]] = collections.OrderedDict()

    @staticmethod
    def key(inputs: dict[str, np.ndarray]) -> bytes:
        h = hashlib.blake2b(digest_size=20)
        for name in sorted(inputs):
            a = np.ascontiguousarray(inputs[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            if a.dtype == np.dtype(object):  # strings: their bytes, each with its length, not object pointers
                for item in a.reshape(-1):
                    data = item if isinstance(item, bytes) else str(item).encode()
                    h.update(len(data).to_bytes(8, "little") + data)
            else:
                h.update(a.data)
        return h.digest()

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: dict[str, np.ndarray]) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class ModelHost:
    """One served model: its runtime (or none while unloaded), batcher and cache.

    ``path`` is a bundle file, or an update agent's state directory: then the host serves
    ``current/bundle.edgeship`` and, when the agent switches ``current``, verifies and loads
    the new bundle beside the old one and swaps them between requests (no request fails).
    """

    def __init__(self, path: Path, trust: Trust, settings: ServeSettings, metrics: _Metrics) -> None:
        self.source, self.trust, self.settings, self.metrics = Path(path), trust, settings, metrics
        self.slotted = self.source.is_dir()
        if self.slotted and not StateDir(self.source).current.exists():
            raise ConfigError(f"{str(self.source)!r} is a folder without current/bundle.edgeship; give a .edgeship "
                              "file, or an `edgeship agent` state directory after its first update.")
        self._source_key = self._key()
        self.runtime: Runtime | None = self._open()
        self.name = str(self.runtime.manifest["name"])
        self._adopt(self.runtime)
        self.cache = _LRU(settings.cache_size) if settings.cache_size else None
        self.last_used = time.monotonic()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"edgeship-{self.name}")
        self._load_lock: asyncio.Lock | None = None
        self.batcher: DynamicBatcher | None = None
        self.reload_error: str | None = None

    @property
    def path(self) -> Path:
        return StateDir(self.source).current_bundle if self.slotted else self.source

    def _key(self) -> tuple[Any, ...]:
        """What identifies the bundle being served: the slot link and the file's identity."""
        try:
            st = self.path.stat()
        except OSError:
            return (None,)
        link = os.readlink(StateDir(self.source).current) if self.slotted else None
        return (link, st.st_ino, st.st_mtime_ns, st.st_size)

    def _open(self) -> Runtime:
        t = self.trust
        # the update agent records versions when it commits them; a server only checks
        return Runtime.open(self.path, t.keys, t.decrypt_key, self.settings.threads, t.state_dir,
                            t.allow_downgrade, record=not self.slotted)

    def _adopt(self, runtime: Runtime) -> None:
        """Make ``runtime`` the served one (its manifest, version and metric labels)."""
        old = getattr(self, "labels", None)
        self.runtime, self.manifest = runtime, runtime.manifest
        self.version = int(self.manifest["version"])
        self.output_names = [s["name"] for s in self.manifest["outputs"]]
        # a text model also takes its texts as one BYTES input, tokenized on the device
        self.text_input = ({"name": TEXT_INPUT, "dtype": "object", "shape": ["batch"]}
                           if self.manifest.get("text") else None)
        self.batched = has_batch_axis(self.manifest)
        st = self.settings
        self.limits = RequestLimits(st.max_json_bytes, st.max_batch_size if self.batched else None, st.max_elements,
                                    st.max_output_bytes)
        self.hybrid = self._hybrid_runner(runtime)
        self.labels = {"model": self.name, "version": str(self.version)}
        if old is not None and old != self.labels:
            self.metrics.loaded.labels(**old).set(0)
        self.metrics.loads.labels(**self.labels).inc()
        self.metrics.loaded.labels(**self.labels).set(1)
        self.metrics.queue.labels(**self.labels).set_function(lambda: self.batcher.depth if self.batcher else 0)
        if getattr(self, "cache", None) is not None:
            self.cache = _LRU(self.settings.cache_size)  # results of the old model are not this one's

    def _hybrid_runner(self, runtime: Runtime) -> Any:
        """A hybrid bundle served with --upstream: its runner (head, upstream, breaker); else None."""
        if runtime.hybrid is None or not self.settings.upstream:
            return None
        from edgeship.runtime.hybrid import CircuitBreaker, HybridRunner, Upstream

        s = self.settings
        upstream = Upstream(s.upstream, str(runtime.hybrid["tail_model"]), s.upstream_token, s.upstream_timeout_s)
        return HybridRunner(runtime, upstream, CircuitBreaker(s.breaker_failures, s.breaker_cooldown_s), s.offload)

    def start(self) -> None:
        """Start the batcher (needs the running event loop)."""
        self._load_lock = asyncio.Lock()
        self.batcher = DynamicBatcher(
            self._run_batch,
            self.settings.max_batch_size if self.batched else 1,
            None if self.settings.max_queue_delay_ms is None else self.settings.max_queue_delay_ms / 1000.0,
            self.settings.max_queue,
            on_batch=lambda rows: self.metrics.batch.labels(**self.labels).observe(rows),
        )
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self._executor.shutdown(wait=True)

    async def _ensure_loaded(self) -> Runtime:
        runtime = self.runtime
        if runtime is not None:
            return runtime
        assert self._load_lock is not None
        async with self._load_lock:
            if self.runtime is None:
                try:
                    self._source_key = self._key()
                    runtime = await asyncio.get_running_loop().run_in_executor(None, self._open)
                except BundleError as exc:
                    raise ProtocolError(f"{self.name} v{self.version} could not be reloaded: {exc}", 503) from None
                if str(runtime.manifest["name"]) != self.name or (
                        not self.slotted and int(runtime.manifest["version"]) != self.version):
                    raise ProtocolError(f"{self.path} now holds another model; restart the server to serve it.", 503)
                self._adopt(runtime)
            return self.runtime  # type: ignore[return-value]

    async def reload_if_changed(self) -> bool:
        """For a state directory: when ``current`` moved, verify and load the new bundle, then swap."""
        if not self.slotted or self._load_lock is None:
            return False
        async with self._load_lock:  # the watcher and load requests both come here: one reloads
            key = self._key()
            if key == self._source_key or key == (None,):
                return False
            self._source_key = key
            try:
                runtime = await asyncio.get_running_loop().run_in_executor(None, self._open)
            except Exception as exc:  # keep serving the model we have
                self.reload_error = f"{self.path}: {exc}"
                self.metrics.reload_failures.labels(model=self.name).inc()
                log.warning("kept %s v%s; the new bundle was refused: %s", self.name, self.version, exc)
                return False
            if str(runtime.manifest["name"]) != self.name:
                self.reload_error = f"{self.path} now holds {runtime.manifest['name']}, not {self.name}"
                return False
            self.reload_error = None
            self._adopt(runtime)  # requests already running finish on the old runtime they hold
            return True

    async def load_now(self) -> None:
        """The repository extension's load: take up a switched state directory now (instead of
        at the next poll), and load a model that was unloaded while idle."""
        await self.reload_if_changed()
        if self.reload_error:
            raise ProtocolError(f"{self.name}: still serving v{self.version}; the new bundle was refused: "
                                f"{self.reload_error}", 400)
        await self._ensure_loaded()

    def unload_if_idle(self, now: float) -> bool:
        idle = self.settings.idle_unload_s
        if (idle is None or self.runtime is None or self.batcher is None or self.batcher.busy
                or self.batcher.depth or now - self.last_used < idle):
            return False
        self.runtime = None  # the session and the decrypted model bytes go with it
        self.metrics.loaded.labels(**self.labels).set(0)
        return True

    async def _run_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runtime = await self._ensure_loaded()
        loop, hybrid = asyncio.get_running_loop(), self.hybrid
        if hybrid is None:
            return await loop.run_in_executor(self._executor, runtime.predict, feeds)
        waiting = self.batcher.depth if self.batcher else 0  # a deep queue sends whole requests upstream
        answer = await loop.run_in_executor(self._executor, hybrid.predict, feeds, waiting)
        self.metrics.hybrid.labels(**self.labels, executed_on=answer.executed_on, reason=answer.fallback_reason).inc()
        if answer.fallback_reason:
            log.warning("%s: ran on the device: %s", self.name, answer.fallback_reason)
        rows = len(next(iter(feeds.values())))
        # where each row ran travels with the outputs (the batcher splits rows between requests)
        return {**answer.outputs, EXECUTED_ON: np.array([answer.executed_on] * rows, dtype=object)}

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        self.last_used = time.monotonic()
        key = None
        if self.cache is not None:
            key = self.cache.key(request.inputs)
            cached = self.cache.get(key)
            self.metrics.cache.labels(**self.labels, result="hit" if cached is not None else "miss").inc()
            if cached is not None:
                return cached
        assert self.batcher is not None
        try:
            outputs = await self.batcher.submit(request.inputs)
        except QueueFullError as exc:
            raise ProtocolError(f"{self.name} is busy: {exc}", 503) from None
        self.last_used = time.monotonic()
        if self.cache is not None and key is not None:
            self.cache.put(key, outputs)
        return outputs


class _Registry:
    """Served models by name and version; looked up per request (a state directory's version changes)."""

    def __init__(self, hosts: list[ModelHost]) -> None:
        self.hosts = hosts
        seen: dict[tuple[str, int], ModelHost] = {}
        for host in hosts:
            other = seen.get((host.name, host.version))
            if other is not None:
                raise ConfigError(f"{host.name} v{host.version} is given twice ({other.source} and {host.source}); "
                                  "give each version once.")
            seen[(host.name, host.version)] = host

    @property
    def by_name(self) -> dict[str, dict[int, ModelHost]]:
        out: dict[str, dict[int, ModelHost]] = {}
        for host in self.hosts:
            out.setdefault(host.name, {})[host.version] = host
        return out

    def get(self, name: str, version: str | None = None) -> ModelHost:
        versions = self.by_name.get(name)
        if not versions:
            raise ProtocolError(f"unknown model {name!r}; this server has {sorted(self.by_name)}.", 404)
        if version is None:
            return versions[max(versions)]
        if not (version.isascii() and version.isdigit() and len(version) <= 18) or int(version) not in versions:
            raise ProtocolError(f"{name} has no version {version!r}; it has {sorted(versions)}.", 404)
        return versions[int(version)]


class _TokenAuth:
    """ASGI middleware: with a token set, model and repository routes need "Authorization: Bearer <token>"
    (401 otherwise); health and metrics stay open for probes."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(("/v2/models", "/v2/repository")):
            if not same_secret(bearer_token(dict(scope["headers"]).get(b"authorization")), self.token):
                for message in json_response_messages(
                        401, {"error": "missing or wrong bearer token (Authorization: Bearer ...)."},
                        [(b"www-authenticate", b"Bearer")]):
                    await send(message)
                return
        await self.app(scope, receive, send)


def _openapi_infer_body() -> dict[str, Any]:
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16", "FP32", "FP64"]},
        "parameters": {"type": "object"}, "data": {"type": "array", "items": {}}}}
    schema = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": tensor},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@dataclass
class _Served:
    """What the routes share: the models, the metrics, the settings, and whether the server is ready."""

    registry: _Registry
    metrics: _Metrics
    settings: ServeSettings
    ready: bool = False


def _lifespan(served: _Served) -> Any:
    """Start the batchers and the background loops (idle unload, slot watch); stop them at shutdown."""

    async def every(seconds: float, action: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            await action()

    async def unload_idle() -> None:
        for host in served.registry.hosts:
            host.unload_if_idle(time.monotonic())

    async def reload_switched() -> None:
        for host in served.registry.hosts:
            await host.reload_if_changed()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        loop, settings, tasks = asyncio.get_running_loop(), served.settings, []
        for host in served.registry.hosts:
            host.start()
        if settings.idle_unload_s:
            tasks.append(loop.create_task(every(min(1.0, settings.idle_unload_s / 4), unload_idle)))
        if any(h.slotted for h in served.registry.hosts):
            tasks.append(loop.create_task(every(settings.reload_poll_s, reload_switched)))
        served.ready = True
        yield
        served.ready = False  # uvicorn has stopped accepting and finished in-flight requests
        for task in tasks:
            task.cancel()
        for host in served.registry.hosts:
            await host.stop()

    return lifespan


def _add_error_handlers(app: Any) -> None:
    """Every refusal is {"error": "..."} with its status; a malformed request is a 400, never a 422 or 500."""

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"malformed request: {exc.errors()[0].get('msg', exc)}"}, status_code=400)


def _health_routes(served: _Served) -> APIRouter:
    from edgeship import __version__

    router = APIRouter()

    @router.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", tags=["health"])
    async def ready() -> Any:
        return {"ready": True} if served.ready else JSONResponse({"ready": False}, status_code=503)

    @router.get("/v2", tags=["server"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgeship", "version": __version__,
                "extensions": ["binary_tensor_data", "classification", "model_repository"]}

    @router.get("/metrics", tags=["server"])
    async def prometheus() -> Response:
        return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _model_routes(served: _Served) -> APIRouter:
    """Model metadata and readiness, with and without a version."""
    router, registry = APIRouter(), served.registry

    def model_metadata(name: str, version: str | None) -> dict[str, Any]:
        host = registry.get(name, version)
        return {
            "name": name,
            "versions": [str(v) for v in sorted(registry.by_name[name])] if version is None else [str(host.version)],
            "platform": "onnxruntime_onnx",
            "inputs": [tensor_metadata(s) for s in ([host.text_input] if host.text_input else [])
                       + host.manifest["inputs"]],
            "outputs": [tensor_metadata(s) for s in host.manifest["outputs"]],
        }

    def model_ready(name: str, version: str | None) -> Any:
        host = registry.get(name, version)  # an idle-unloaded model is ready: it reloads on demand
        return JSONResponse({"name": name, "version": str(host.version), "ready": served.ready},
                            status_code=200 if served.ready else 503)

    @router.get("/v2/models/{name}", tags=["model"])
    async def metadata(name: str) -> dict[str, Any]:
        return model_metadata(name, None)

    @router.get("/v2/models/{name}/versions/{version}", tags=["model"])
    async def metadata_version(name: str, version: str) -> dict[str, Any]:
        return model_metadata(name, version)

    @router.get("/v2/models/{name}/ready", tags=["model"])
    async def ready_model(name: str) -> Any:
        return model_ready(name, None)

    @router.get("/v2/models/{name}/versions/{version}/ready", tags=["model"])
    async def ready_model_version(name: str, version: str) -> Any:
        return model_ready(name, version)

    return router


def _infer_routes(served: _Served) -> APIRouter:
    """POST .../infer: parse and check the request, batch it, answer in JSON or binary."""
    router, registry, metrics = APIRouter(), served.registry, served.metrics

    async def do_infer(name: str, version: str | None, request: Request) -> Response:
        start = time.perf_counter()
        host = registry.get(name, version)
        status = 500
        in_flight = metrics.in_flight.labels(**host.labels)
        in_flight.inc()
        try:
            body = await request.body()
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), host.manifest["inputs"],
                                         host.output_names, host.text_input, host.limits)
            outputs = dict(await host.infer(parsed))
            where = outputs.pop(EXECUTED_ON, None)
            host.limits.check_output(outputs)
            parameters = {"executed_on": str(where[0])} if where is not None and len(where) else None
            payload, headers = encode_infer_response(host.name, host.version, outputs, parsed,
                                                     host.manifest.get("labels"), parameters)
            status = 200
            return Response(payload, headers=headers)
        except ProtocolError as exc:
            status = exc.status
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            if type(exc).__name__ == "InvalidArgument":  # ONNX Runtime: a value the model cannot take (an id past its table)
                status = 400
                raise ProtocolError(f"the model refused this input: {first}", 400) from None
            # a validated input that ONNX Runtime still refused: the server's fault, say what happened
            raise ProtocolError(f"inference failed: {type(exc).__name__}: {first}", 500) from None
        finally:
            in_flight.dec()
            metrics.requests.labels(**host.labels, status=str(status)).inc()
            metrics.latency.labels(**host.labels).observe(time.perf_counter() - start)

    @router.post("/v2/models/{name}/infer", tags=["inference"], openapi_extra=_openapi_infer_body())
    async def infer(name: str, request: Request) -> Response:
        return await do_infer(name, None, request)

    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["inference"], openapi_extra=_openapi_infer_body())
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await do_infer(name, version, request)

    return router


def _repository_routes(served: _Served) -> APIRouter:
    """Triton's model repository extension, the part that fits bundles checked before load: an index,
    and a load that takes up what the update agent switched to (no new files)."""
    router, registry = APIRouter(), served.registry

    @router.post("/v2/repository/index", tags=["repository"])
    async def repository_index() -> list[dict[str, Any]]:
        return [{"name": h.name, "version": str(h.version), "state": "READY",
                 "reason": h.reload_error or ("" if h.runtime is not None else "unloaded while idle; loads on demand")}
                for h in registry.hosts]

    @router.post("/v2/repository/models/{name}/load", tags=["repository"])
    async def repository_load(name: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            params = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            raise ProtocolError("malformed request: the load body is not JSON.", 400) from None
        if not isinstance(params, dict) or params.get("parameters"):
            raise ProtocolError("load takes no parameters: this server loads only its own bundles (or the "
                                "bundle its update agent switched to), each verified before load.", 400)
        registry.get(name)  # 404 for a name this server does not have
        for host in registry.by_name[name].values():
            await host.load_now()
        return {}

    return router


def create_app(bundles: list[Path], trust: Trust, settings: ServeSettings | None = None) -> Any:
    """Verify and load every bundle, then build the FastAPI app. Raises if any bundle is refused."""
    from edgeship import __version__

    settings = settings or ServeSettings()
    settings.check()
    if not bundles:
        raise ConfigError("give at least one .edgeship bundle to serve.")
    metrics = _Metrics()
    served = _Served(_Registry([ModelHost(Path(p), trust, settings, metrics) for p in bundles]), metrics, settings)
    app = FastAPI(title="edgeship inference server", version=__version__, lifespan=_lifespan(served),
                  description="Open Inference Protocol (KServe v2) REST, with Triton's binary tensor data extension.")
    app.state.registry, app.state.metrics = served.registry, metrics
    _add_error_handlers(app)
    for routes in (_health_routes, _model_routes, _infer_routes, _repository_routes):
        app.include_router(routes(served))
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    if settings.token:
        app.add_middleware(_TokenAuth, token=settings.token)
    return app


def serve(bundles: list[Path], trust: Trust, settings: ServeSettings | None = None,
          on_listening: Any = None) -> None:
    """Verify every bundle, bind the port, serve until SIGINT/SIGTERM, then finish in-flight requests."""
    settings = settings or ServeSettings()
    app = create_app(bundles, trust, settings)
    sock = bind(settings.host, settings.port)
    if on_listening is not None:
        on_listening(settings.host, sock.getsockname()[1], app.state.registry.hosts)
    run_app(app, sock, settings.graceful_timeout_s, ConnectionLimits(max_body_bytes=settings.max_request_bytes))
