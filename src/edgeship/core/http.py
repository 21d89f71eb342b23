"""What every edgeship HTTP service shares: a bound socket, uvicorn run with limits, a body limit,
and bearer-token checks.

The inference server, the LLM server and the fleet service all run through :func:`run_app`,
so that connection limits, timeouts and graceful shutdown are the same everywhere.
"""

from __future__ import annotations

import hmac
import json
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.core.errors import ConfigError

__all__ = ["BodyLimit", "ConnectionLimits", "guarded_protocol", "raise_open_file_limit", "make_server", "bearer_token", "json_response_messages", "bind", "run_app", "same_secret", "read_token_file"]


def json_response_messages(status: int, payload: Any, headers: list[tuple[bytes, bytes]] = ()) -> list[dict]:
    """The two ASGI messages of a small JSON answer (for middleware that answers before the app)."""
    body = json.dumps(payload).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]},
            {"type": "http.response.body", "body": body}]


class BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes get 413, whether announced or streamed; the
    answer names ``option``, the setting that raises the limit."""

    def __init__(self, app: Any, limit: int, option: str = "--max-request-mb") -> None:
        self.app, self.limit, self.option = app, limit, option

    async def _refuse(self, send: Any, status: int, message: str) -> None:
        for m in json_response_messages(status, {"error": message}, [(b"connection", b"close")]):
            await send(m)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                return await self._refuse(send, 400, f"Content-Length {declared[:40].decode(errors='replace')!r} "
                                                     "is not a byte count.")
            if int(declared) > self.limit:
                return await self._refuse(send, 413, f"the request body is {int(declared)} bytes, over this server's "
                                                     f"{self.limit}-byte limit ({self.option}).")
        if declared is None and scope.get("method") not in ("GET", "HEAD"):
            # chunked: read it all (up to the limit) before the app runs, so that the app's own body
            # parser never sees an over-long body (FastAPI would answer its error as a 400)
            messages, received = [], 0
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                if received > self.limit:
                    return await self._refuse(send, 413, f"the request body is over this server's {self.limit}-byte "
                                                         f"limit ({self.option}).")
                if not message.get("more_body"):
                    break
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
            replay = [{"type": "http.request", "body": body, "more_body": False}]
            if messages[-1]["type"] != "http.request":
                replay = [messages[-1]]

            async def replayed() -> Any:
                return replay.pop(0) if replay else await receive()

            return await self.app(scope, replayed, send)
        # announced: the HTTP layer delivers no more than Content-Length bytes
        await self.app(scope, receive, send)


def bearer_token(header: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


MAX_TOKEN_BYTES = 4096


def read_token_file(path: Path | None) -> str | None:
    """A bearer token from a file (one line, at most 4 KiB, printable); None for no file."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:  # bounded: /dev/zero or a huge file given by mistake is not read whole
            raw = f.read(MAX_TOKEN_BYTES + 1)
        token = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {str(path)!r}: {exc}.") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise ConfigError(f"token file {str(path)!r} is over {MAX_TOKEN_BYTES} bytes; it should hold one token.")
    if not token or not token.isprintable() or " " in token:
        raise ConfigError(f"token file {str(path)!r} must hold one token: printable, no spaces.")
    return token


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the app starts (port 0 picks a free one), so that clients told
    the address can connect at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; "
                          "pick another --port (0 picks a free one).") from None
    sock.listen(2048)  # connections made once the address is printed wait in the backlog, not refused
    return sock


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold, whatever the app behind it does.

    uvicorn times out only idle keep-alive connections: one that sends nothing, or trickles a
    request a byte at a time, is held for ever. Here a request's head must arrive within
    ``head_timeout_s`` of the connection (or of the previous answer), and its body within
    ``body_timeout_s`` of the head, however the bytes trickle in; a head over ``max_head_bytes``
    gets 431, a body over ``max_body_bytes`` 413, announced or streamed, without the app running.
    Past ``max_connections`` (and the open-file limit) the oldest connection that has no request under way is
    closed for the new one, so a flood of idle connections cannot lock clients out (all of a
    flood may come from one address, so a per-address cap would not do)."""

    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_head_bytes: int = 16 << 10
    max_connections: int = 4096
    #: bodies over this get 413 from the guard, before the app sees the request (None: the app decides)
    max_body_bytes: int | None = None

    def check(self) -> None:
        if not (0 < self.head_timeout_s <= 3600 and 0 < self.body_timeout_s <= 3600):
            raise ConfigError("head and body timeouts must be within (0, 3600] seconds.")
        if not (1024 <= self.max_head_bytes <= 1 << 20 and 1 <= self.max_connections <= 1 << 20):
            raise ConfigError("max head bytes must be 1 KiB-1 MiB and max connections 1-1048576.")


LINGER_S = 1.0  # how long the rest of a refused body is read and dropped
LINGER_BYTES = 256 << 10  # and how much of it: enough for a client's buffered writes to land


def _raw_answer(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer, ``{"error": message}``, that closes the connection (written by the
    guard below the app, so by hand)."""
    body = json.dumps({"error": message}).encode()
    reason = {408: b"Request Timeout", 413: b"Request Entity Too Large", 431: b"Request Header Fields Too Large",
              503: b"Service Unavailable"}[status]
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body)) + body)


def _with_framing(limit: int) -> int:
    """Bytes on the wire that may carry ``limit`` bytes of body (chunked framing adds a little); the
    guard's check is coarse, the app's BodyLimit counts the body itself."""
    return limit + limit // 4 + 4096


def guarded_protocol(limits: ConnectionLimits, parser: str | None = None) -> type:
    """uvicorn's HTTP protocol with ``limits`` enforced (pass it as ``uvicorn.Config(http=...)``).

    ``parser``: "httptools" (the ``fast`` extra) or "h11"; by default httptools when installed,
    as uvicorn chooses. The guard watches only what both share: bytes arriving, the request
    cycle uvicorn starts once a head is complete, and that cycle's ``more_body``."""
    import collections

    if parser is None:
        try:
            import httptools  # noqa: F401

            parser = "httptools"
        except ImportError:
            parser = "h11"
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    idle: collections.OrderedDict[Any, None] = collections.OrderedDict()  # no request under way, oldest first
    live = [0]  # connections not yet closing (counted here: len(connections) would count closing ones too)

    class Lingering:
        """The transport, except that closing it while the client is still sending a body (an
        early 413, say) only ends our side: the rest is read and dropped for a little while, so
        that the client reads the answer instead of a connection reset (nginx's lingering close)."""

        def __init__(self, transport: Any, protocol: "Guarded") -> None:
            self._transport, self._protocol = transport, protocol

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

        def close(self) -> None:
            if self._protocol._in_body:
                self.linger()
            else:
                self._transport.close()

        def linger(self) -> None:
            """End our side now; read and drop what the client still sends, then close."""
            p, t = self._protocol, self._transport
            if t.is_closing() or p._lingering or not t.can_write_eof():
                t.close()
                return
            p._lingering = True
            t.write_eof()
            p.flow.resume_reading()
            p._arm(LINGER_S, "")

    class Guarded(Base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            self._timer: Any = None
            self._raw_head, self._in_body, self._lingering, self._dropped = 0, False, False, 0
            self._seen: Any = None  # the request cycle last seen start
            self._body_bytes, self._counted = 0, True
            live[0] += 1
            super().connection_made(Lingering(transport, self))
            self._await_head()
            excess = live[0] - limits.max_connections
            if excess > 0:
                victims = [other for other in idle if other is not self][:excess]
                for other in victims:
                    other._close(503, "this server is at its connection limit; closed an idle connection.")
                if len(victims) < excess:  # every other connection is busy: this one waits its turn elsewhere
                    self._close(503, "this server is at its connection limit; retry.")

        def _await_head(self) -> None:
            idle[self] = None
            self._raw_head = 0
            self._arm(limits.head_timeout_s, "the request head did not arrive in time")

        def _arm(self, seconds: float, why: str) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(seconds, self._close, 408, f"{why}; closing the connection.")

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _uncount(self) -> None:
            if self._counted:
                self._counted = False
                live[0] -= 1

        def _close(self, status: int, message: str) -> None:
            idle.pop(self, None)
            self._disarm()
            self._uncount()
            if self._lingering:
                self.transport._transport.close()
                return
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:  # nothing sent yet on this request
                self.transport.write(_raw_answer(status, message))
            if self.cycle is not None:
                self.cycle.keep_alive = False
                self.cycle.disconnected = True  # the app, if it runs, answers no one
            self.transport.linger()  # the client may be sending still: it reads the answer, not a reset

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # the answer is out: drop the rest of the body, up to a bound
                self._dropped += len(data)
                if self._dropped > LINGER_BYTES:
                    self.transport._transport.close()
                return
            if self in idle:  # a head is bounded in bytes received, as well as in time
                self._raw_head += len(data)
            elif self._in_body and limits.max_body_bytes is not None:  # and a body, streamed or not
                self._body_bytes += len(data)
                if self._body_bytes > _with_framing(limits.max_body_bytes):
                    self._refuse_body(f"the request body is over this server's {limits.max_body_bytes}-byte limit.")
                    return
            super().data_received(data)
            cycle = self.cycle
            if cycle is not None and cycle is not self._seen:  # a head was completed: a request starts
                self._seen = cycle
                idle.pop(self, None)
                head = len(cycle.scope.get("raw_path", b"")) + sum(len(k) + len(v) + 4 for k, v in cycle.scope["headers"])
                if head > limits.max_head_bytes:
                    self._close(431, f"the request head is over {limits.max_head_bytes} bytes.")
                    return
                self._in_body, self._body_bytes = True, len(getattr(cycle, "body", b""))  # what came with the head
                declared = dict(cycle.scope["headers"]).get(b"content-length", b"")
                if limits.max_body_bytes is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
                    self._refuse_body(f"the request body is {int(declared)} bytes, over this server's "
                                      f"{limits.max_body_bytes}-byte limit.")
                    return
                self._arm(limits.body_timeout_s, "the request body did not arrive in time")
            if self._in_body and limits.max_body_bytes is not None and self._body_bytes > _with_framing(limits.max_body_bytes):
                self._refuse_body(f"the request body is over this server's {limits.max_body_bytes}-byte limit.")
                return
            if self._in_body and cycle is not None and not cycle.more_body:  # the body is all in
                self._in_body = False
                self._disarm()
            if self in idle and self._raw_head > 2 * limits.max_head_bytes and not self.transport.is_closing():
                self._close(431, f"the request head is over {limits.max_head_bytes} bytes.")

        def _refuse_body(self, message: str) -> None:
            """413, then a lingering close (the client may still be sending)."""
            idle.pop(self, None)
            self._uncount()
            self.transport.write(_raw_answer(413, message))
            if self.cycle is not None:
                self.cycle.keep_alive = False
                self.cycle.disconnected = True
            self.transport.linger()  # the rest of the body is read and dropped, then closed

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._lingering:
                self._await_head()  # the next request's head (uvicorn's keep-alive timeout still applies)

        def connection_lost(self, exc: Exception | None) -> None:
            idle.pop(self, None)
            self._disarm()
            self._uncount()
            super().connection_lost(exc)

    Guarded.__name__ = f"Guarded{Base.__name__}"
    return Guarded


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit (every connection is a file); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 16 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def make_server(app: Any, graceful_timeout_s: float = 30.0, limits: ConnectionLimits = ConnectionLimits(),
                parser: str | None = None) -> Any:
    """A uvicorn server for ``app`` with ``limits`` (``.run(sockets=[sock])`` serves; ``should_exit`` stops);
    ``parser`` as in :func:`guarded_protocol`."""
    import uvicorn

    limits.check()
    files = raise_open_file_limit()
    if limits.max_connections > files - 64:  # leave room for models, logs and the listening socket
        limits = ConnectionLimits(limits.head_timeout_s, limits.body_timeout_s, limits.max_head_bytes,
                                  max(1, files - 64))
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                         timeout_graceful_shutdown=graceful_timeout_s,
                                         http=guarded_protocol(limits, parser),
                                         h11_max_incomplete_event_size=4 * limits.max_head_bytes))  # the guard's 431 comes first


def run_app(app: Any, sock: socket.socket, graceful_timeout_s: float,
            limits: ConnectionLimits = ConnectionLimits()) -> None:
    """Serve ``app`` on ``sock`` with ``limits`` until SIGINT/SIGTERM, then finish in-flight requests."""
    server = make_server(app, graceful_timeout_s, limits)
    # uvicorn finishes in-flight requests on SIGTERM, then raises the signal again with the handler
    # it found; a no-op one here makes a clean, graceful stop exit with status 0.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[sock])
