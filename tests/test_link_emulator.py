"""The link emulator between a device and its upstream: a real HTTP server behind it, a real client.
Every timing check is a lower bound that the emulator's own scheduling guarantees (the link can
only add time), never a ceiling that a busy machine could break."""

from __future__ import annotations

import http.client
import http.server
import threading
import time

import pytest

from edgeship.core.errors import ConfigError
from edgeship.hybrid.emulator import LinkEmulator


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def echo():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def _post(port: int, size: int, timeout: float = 30.0, conn: http.client.HTTPConnection | None = None) -> float:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    conn.request("POST", "/", body=b"x" * size)
    response = conn.getresponse()
    assert response.status == 200 and len(response.read()) == size
    return time.perf_counter() - started


def test_a_round_trip_costs_at_least_the_rtt_and_the_bytes_over_the_bandwidth(echo):
    with LinkEmulator(echo, "4mbit,60ms") as emu:
        conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=30)
        small = _post(emu.port, 10, conn=conn)
        big = _post(emu.port, 200_000, conn=conn)  # 200 kB up and back: 0.8 s of serialisation
        assert small >= 0.060
        assert big >= 0.060 + 2 * 8 * 200_000 / 4e6
        assert emu.stats.bytes_up >= 200_010 and emu.stats.bytes_down >= 200_010
        assert emu.stats.connections == 1  # kept alive


def test_the_link_changes_while_the_connection_stays_open(echo):
    with LinkEmulator(echo, "1gbit,0ms") as emu:
        conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=30)
        _post(emu.port, 10, conn=conn)
        emu.set(link="1gbit,150ms")
        assert _post(emu.port, 10, conn=conn) >= 0.150


def test_loss_is_seeded_and_each_lost_segment_costs_a_retransmission_timeout(echo):
    counts = []
    for _ in range(2):
        with LinkEmulator(echo, "1gbit,0ms", loss=0.02, seed=7) as emu:
            elapsed = _post(emu.port, 100_000)
            counts.append(emu.stats.lost_segments)
            assert elapsed >= 0.2 * emu.stats.lost_segments
    assert counts[0] == counts[1] > 0  # same seed, same losses


def test_an_outage_refuses_or_swallows_and_then_ends(echo):
    with LinkEmulator(echo, "1gbit,1ms") as emu:
        emu.set(outage="refuse")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _post(emu.port, 10)
        assert emu.stats.refused == 1
        emu.set(outage="blackhole")
        with pytest.raises(TimeoutError):  # the client's own timeout decides
            _post(emu.port, 10, timeout=0.3)
        emu.set(outage=None)
        assert _post(emu.port, 10) >= 0.001


def test_a_refusal_cuts_open_connections(echo):
    with LinkEmulator(echo, "1gbit,0ms") as emu:
        conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=30)
        _post(emu.port, 10, conn=conn)
        emu.set(outage="refuse")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _post(emu.port, 10, conn=conn)


@pytest.mark.parametrize("change", [{"loss": 1.0}, {"loss": -0.1}, {"outage": "sometimes"}, {"link": "fast"}])
def test_nonsense_settings_are_refused(echo, change):
    with pytest.raises(ConfigError):
        LinkEmulator(echo, "1gbit,0ms").set(**change)
