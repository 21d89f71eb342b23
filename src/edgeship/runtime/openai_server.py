"""An OpenAI-compatible server for an LLM bundle: ``POST /v1/chat/completions`` and
``POST /v1/completions`` (streamed as server-sent events, or whole), ``GET /v1/models``, health and
Prometheus metrics.

Requests go to the fair scheduler of :mod:`edgeship.runtime.llm`; a client that disconnects cancels
its request at the next step. Refusals are 4xx in OpenAI's error shape: a prompt longer than the
context gets a 400 that gives the numbers, ``max_tokens`` is capped, a full queue is a 503.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import Request

from edgeship.core.errors import ConfigError
from edgeship.runtime.llm import Busy, ChatModel, Job, PromptTooLong

__all__ = ["create_openai_app", "serve_llm", "LLMMetrics"]

MAX_MESSAGES = 256


class _Refused(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class LLMMetrics:
    def __init__(self, chat: ChatModel) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.prompt_tokens = Counter("edgeship_llm_prompt_tokens", "Prompt tokens received.", registry=r)
        self.cached_tokens = Counter("edgeship_llm_prompt_cached_tokens",
                                     "Prompt tokens served from the prefix cache (not recomputed).", registry=r)
        self.completion_tokens = Counter("edgeship_llm_completion_tokens",
                                         "Tokens generated; their rate is the server's tokens/s.", registry=r)
        self.requests = Counter("edgeship_llm_requests", "Finished generations, by finish reason.", ["finish_reason"],
                                registry=r)
        self.ttft = Histogram("edgeship_llm_time_to_first_token_seconds", "From arrival to the first token.",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.decode_rate = Histogram("edgeship_llm_decode_tokens_per_second", "Per request, after the first token.",
                                     buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800), registry=r)
        queue = Gauge("edgeship_llm_queue_length", "Requests waiting for a slot.", registry=r)
        queue.set_function(chat.scheduler.queue_length)
        active = Gauge("edgeship_llm_active_requests", "Requests in a slot.", registry=r)
        active.set_function(lambda: len(chat.scheduler.active))
        loaded = Gauge("edgeship_llm_model_loaded", "1 while the model is in memory (0 after an idle unload).",
                       registry=r)
        loaded.set_function(lambda: 1 if chat.scheduler.model is not None else 0)

    def finished(self, job: Job, reason: str, clock: float) -> None:
        self.requests.labels(reason.split(":")[0]).inc()
        self.prompt_tokens.inc(len(job.prompt_ids))
        self.cached_tokens.inc(job.cached_tokens)
        self.completion_tokens.inc(job.completion_tokens)
        if job.first_token_at is not None:
            self.ttft.observe(job.first_token_at - job.created)
            if job.completion_tokens > 1 and clock > job.first_token_at:
                self.decode_rate.observe((job.completion_tokens - 1) / (clock - job.first_token_at))


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _Refused(f"{key} must be a {getattr(kind, '__name__', 'number')}, got {value!r}.", param=key)
    if not isinstance(value, kind):
        raise _Refused(f"{key} has the wrong type ({type(value).__name__}).", param=key)
    return value


def _sampling(body: dict[str, Any]) -> Any:
    from edgeship.engines.ort_genai import Sampling

    temperature = float(_get(body, "temperature", (int, float), 1.0))
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    top_k = int(_get(body, "top_k", int, 50))
    seed = _get(body, "seed", int)
    repetition = float(_get(body, "repetition_penalty", (int, float), 1.0))
    if not (0 <= temperature <= 2 and 0 < top_p <= 1 and 1 <= top_k <= 1000 and 0 < repetition <= 10):
        raise _Refused("sampling needs 0 <= temperature <= 2, 0 < top_p <= 1, 1 <= top_k <= 1000 and "
                       "0 < repetition_penalty <= 10.", param="temperature")
    if seed is not None and not 0 <= seed < 2**63:
        raise _Refused("seed must be a non-negative 64-bit integer.", param="seed")
    return Sampling(temperature, top_p, top_k, repetition, seed)


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop):
        raise _Refused("stop takes a string or at most 4 strings of 1-64 characters.", param="stop")
    return stop


def create_openai_app(chat: ChatModel, max_request_bytes: int = 1 << 20, clock: Any = time.monotonic) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from edgeship import __version__
    from edgeship.core.http import BodyLimit

    app = FastAPI(title="edgeship LLM server", version=__version__,
                  description="OpenAI-compatible chat and completions for an edgeship LLM bundle.")
    metrics = LLMMetrics(chat)
    app.state.chat, app.state.metrics = chat, metrics
    previous = chat.scheduler.on_step

    def on_step(event: str, job: Job) -> None:  # on the scheduler thread
        previous(event, job)
        if event == "finish":
            metrics.finished(job, job.finish_reason, clock())

    chat.scheduler.on_step = on_step
    created = int(time.time())

    @app.exception_handler(_Refused)
    async def _refused(request: Request, exc: _Refused) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error" if exc.status < 500
                                       else "server_error", "param": exc.param, "code": exc.code}},
                            status_code=exc.status)

    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise _Refused("the body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _Refused("the body must be a JSON object.")
        model = body.get("model")
        if model is not None and model != chat.name:
            raise _Refused(f"this server serves the model {chat.name!r}, not {model!r}.", 404, "model", "model_not_found")
        return body

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": chat.name, "object": "model", "created": created,
                                            "owned_by": "edgeship"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": chat.name, "loaded": chat.scheduler.model is not None}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _run(request: Request, prompt_ids: list[int], body: dict[str, Any], kind: str) -> Any:
        max_tokens = _get(body, "max_completion_tokens", int) or _get(body, "max_tokens", int)
        stream = _get(body, "stream", bool, False)
        include_usage = bool((_get(body, "stream_options", dict) or {}).get("include_usage"))
        if _get(body, "n", int, 1) != 1:
            raise _Refused("n must be 1: this server returns one choice.", param="n")
        sampling, stop = _sampling(body), _stop(body)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()  # type: ignore[var-annotated]

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("text", text))

        def finish(reason: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("end", reason))

        try:
            job = chat.submit(prompt_ids, emit, finish, max_tokens, sampling, stop)
        except PromptTooLong as exc:
            raise _Refused(str(exc), 400, "messages" if kind == "chat" else "prompt", "context_length_exceeded") from None
        except Busy as exc:
            raise _Refused(str(exc), 503, None, "busy") from None
        except ConfigError as exc:
            raise _Refused(str(exc)) from None
        watcher = asyncio.ensure_future(_watch_disconnect(request, job))
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        shape = _Shape(kind, rid, chat.name, int(time.time()))
        if stream:
            return StreamingResponse(_sse(events, job, shape, include_usage, watcher), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, reason = [], "stop"
        try:
            while True:
                what, value = await events.get()
                if what == "end":
                    reason = value
                    break
                text.append(value)
        finally:
            job.cancel()
            watcher.cancel()
        if reason.startswith("error"):
            raise _Refused(f"generation failed: {reason[7:]}", 500, None, "generation_failed")
        return shape.whole("".join(text), _finish_reason(reason), _usage(job))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
            raise _Refused(f"messages must be a list of 1-{MAX_MESSAGES} messages.", param="messages")
        messages = [_message(m) for m in messages]
        try:
            prompt = chat.chat_prompt(messages)
        except ConfigError as exc:
            raise _Refused(str(exc), param="messages") from None
        return await _run(request, chat.encode(prompt), body, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await _body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _Refused("prompt must be a non-empty string.", param="prompt")
        return await _run(request, chat.encode(prompt), body, "text")

    app.add_middleware(BodyLimit, limit=max_request_bytes)
    return app


def _message(m: Any) -> dict[str, str]:
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
        raise _Refused("each message needs a role (system, user or assistant) and content.", param="messages")
    content = m.get("content")
    if isinstance(content, list):  # [{type: text, text: ...}] parts
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise _Refused("only text content parts are supported.", param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise _Refused("a message's content must be text.", param="messages")
    return {"role": "system" if m["role"] == "developer" else m["role"], "content": content}


async def _watch_disconnect(request: Any, job: Job) -> None:
    """Cancel the job when the client goes away (Starlette reports http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(job: Job) -> dict[str, Any]:
    return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": job.completion_tokens,
            "total_tokens": len(job.prompt_ids) + job.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": job.cached_tokens}}


class _Shape:
    """OpenAI's response objects for chat (``chat.completion``) and text (``text_completion``)."""

    def __init__(self, kind: str, rid: str, model: str, created: int) -> None:
        self.kind, self.rid, self.model, self.created = kind, rid, model, created

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        return {**self._head("text_completion"), "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                                              "logprobs": None}], "usage": usage}

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            return {**self._head("chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return {**self._head("text_completion"), "choices": [{"index": 0, "text": text or "", "finish_reason": finish,
                                                              "logprobs": None}]}

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage}


async def _sse(events: asyncio.Queue, job: Job, shape: _Shape, include_usage: bool, watcher: Any) -> Any:
    def line(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    try:
        yield line(shape.chunk("" if shape.kind == "chat" else None, None, first=True))
        while True:
            what, value = await events.get()
            if what == "end":
                if value.startswith("error"):
                    yield line({"error": {"message": f"generation failed: {value[7:]}", "type": "server_error"}})
                else:
                    yield line(shape.chunk(None, _finish_reason(value)))
                    if include_usage:
                        yield line(shape.usage_chunk(_usage(job)))
                yield b"data: [DONE]\n\n"
                return
            yield line(shape.chunk(value, None))
    finally:  # also when the client disconnects: Starlette stops this generator
        job.cancel()
        watcher.cancel()


def serve_llm(bundle: Any, trust: Any, settings: Any, chat_settings: Any, on_listening: Any = None) -> None:
    """Verify and open an LLM bundle, then serve it (``edgeship serve`` on an LLM bundle)."""
    from edgeship.core.http import ConnectionLimits, bind, run_app

    settings.check()
    chat = ChatModel.open(bundle, trust.keys, trust.decrypt_key, trust.state_dir, trust.allow_downgrade, chat_settings)
    try:
        app = create_openai_app(chat, settings.max_request_bytes)
        sock = bind(settings.host, settings.port)
        if on_listening is not None:
            on_listening(settings.host, sock.getsockname()[1], chat)
        run_app(app, sock, settings.graceful_timeout_s, ConnectionLimits(max_body_bytes=settings.max_request_bytes))
    finally:
        chat.close()
