"""Connection limits shared by every edgeship server (core.http): slow or silent clients are
closed, oversize heads refused, and a flood of idle connections does not lock anyone out.
A real uvicorn server on 127.0.0.1 and real sockets; the timeouts are short, and every wait
is for the server's own action (a close), bounded only to fail instead of hanging."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from edgeship.core.http import BodyLimit, ConnectionLimits, bind, make_server

FAIL_AFTER_S = 30.0  # a socket wait longer than this means the server never acted


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(BodyLimit, limit=1 << 16)
    return app


@pytest.fixture(params=["httptools", "h11"])
def parser(request) -> str:
    """Both of uvicorn's HTTP parsers: httptools with the `fast` extra, h11 without."""
    if request.param == "httptools":
        pytest.importorskip("httptools")
    return request.param


@contextlib.contextmanager
def guarded(limits: ConnectionLimits, parser: str) -> Iterator[int]:
    sock = bind("127.0.0.1", 0)
    server = make_server(_app(), 5.0, limits, parser)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(60)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(FAIL_AFTER_S)
    return s


def _until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


SHORT = ConnectionLimits(head_timeout_s=0.5, body_timeout_s=0.5, max_head_bytes=4096, max_connections=1000)


def test_a_connection_that_sends_nothing_is_closed(parser):
    with guarded(SHORT, parser) as port, _connect(port) as s:
        assert _until_closed(s).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_request_that_trickles_in_is_closed_however_the_bytes_arrive(where, parser):
    """A byte every 0.1 s keeps the connection busy but never finishes the request."""
    request = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" if where == "body"
               else b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    with guarded(SHORT, parser) as port, _connect(port) as s:
        s.sendall(request)
        closed = threading.Event()

        def trickle() -> None:
            while not closed.wait(0.1):
                try:
                    s.send(b"a")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            answer = _until_closed(s)
        finally:
            closed.set()
            sender.join(10)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in answer


@pytest.mark.parametrize("end", [b"\r\n\r\n", b""])  # a whole head, and one that never ends
def test_an_oversize_head_gets_431(end, parser):
    with guarded(SHORT, parser) as port, _connect(port) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + end)
        assert _until_closed(s).startswith(b"HTTP/1.1 431")


def test_keep_alive_requests_still_work_under_the_guard(parser):
    with guarded(SHORT, parser) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for size in (0, 10, 60000):
            assert client.post("/echo", content=b"x" * size).json() == {"bytes": size}
        assert client.post("/echo", content=b"x" * 70000).status_code == 413


def test_a_flood_of_idle_connections_does_not_lock_clients_out(parser):
    """All from 127.0.0.1, like the flood: past the cap, the oldest idle connections make way."""
    limits = ConnectionLimits(head_timeout_s=60, body_timeout_s=60, max_head_bytes=4096, max_connections=50)
    with guarded(limits, parser) as port:
        flood = [_connect(port) for _ in range(300)]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=FAIL_AFTER_S) as client:
                for _ in range(5):
                    assert client.get("/ok").json() == {"status": "ok"}
            first = flood[0]
            assert _until_closed(first).startswith(b"HTTP/1.1 503")  # the oldest idle one was let go
        finally:
            for s in flood:
                s.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversize_body_is_refused_before_the_app_runs(chunked, parser):
    """The guard's body limit (4 KiB) is below the app's (64 KiB): a 413 here can only be the guard's."""
    limits = ConnectionLimits(head_timeout_s=5, body_timeout_s=5, max_head_bytes=4096, max_body_bytes=4096)
    body = b"x" * 20000
    with guarded(limits, parser) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                                       timeout=FAIL_AFTER_S) as client:
        got = client.post("/echo", content=iter([body[i:i + 1000] for i in range(0, len(body), 1000)])
                          if chunked else body)
        assert got.status_code == 413 and "4096-byte limit" in got.json()["error"]
        assert client.post("/echo", content=b"x" * 4000).json() == {"bytes": 4000}  # within it: served
