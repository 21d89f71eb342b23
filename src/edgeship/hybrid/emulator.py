"""A network link between a device and its upstream, emulated in user space: a TCP proxy on
127.0.0.1 that delays, rate-limits, loses and cuts what passes through it.

``tc netem`` does this in the kernel, but needs root and NET_ADMIN, which neither CI nor most
laptops give a test. The proxy works at the level the hybrid runtime sees (a TCP stream), so:

- **delay**: every chunk arrives half the round trip after it left, in each direction (opening a
  connection is not delayed: the proxy accepts it at once, so keep connections alive as the
  hybrid runtime does);
- **bandwidth**: each direction is a queue; a chunk leaves when the link is free, and occupies it
  for ``8 * bytes / bandwidth`` seconds (serialisation; TCP's slow start is not modelled);
- **loss**: TCP never loses bytes, it resends them, so a lost segment (of ``mss`` bytes, each lost
  with probability ``loss``, from a seeded generator) costs its stream one retransmission timeout,
  ``max(200 ms, round trip)`` (Linux's minimum RTO);
- **outage**: ``"refuse"`` resets every connection and refuses new ones (the server is down);
  ``"blackhole"`` accepts and forwards nothing (the link is dead: the client times out).

The link can be changed while connections are open; the next chunk follows the new one.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from typing import Any

from edgeship.core.errors import ConfigError
from edgeship.hybrid.split import Link

__all__ = ["LinkEmulator", "LinkStats"]

_CHUNK = 64 << 10
_MIN_RTO_S = 0.2
_OUTAGES = (None, "refuse", "blackhole")


@dataclass
class LinkStats:
    connections: int = 0
    bytes_up: int = 0  # device -> upstream
    bytes_down: int = 0
    lost_segments: int = 0
    refused: int = 0
    resets: int = 0  # connections cut because one side reset or failed


class LinkEmulator:
    """``with LinkEmulator(("127.0.0.1", port), Link.parse("10mbit,40ms")) as emu:`` then send to
    ``emu.url``; ``emu.set(link=..., loss=..., outage=...)`` changes it on the fly."""

    def __init__(self, target: tuple[str, int], link: Link | str, loss: float = 0.0, seed: int = 0,
                 mss: int = 1448) -> None:
        self.target = target
        self.stats = LinkStats()
        self._rng = random.Random(seed)
        self._mss = mss
        self._lock = threading.Lock()
        self._link, self._loss, self._outage = Link.parse("1gbit,0ms"), 0.0, None
        self.set(link=link, loss=loss)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    # -- configuration -------------------------------------------------------------------------
    def set(self, link: Link | str | None = None, loss: float | None = None, outage: Any = "keep") -> None:
        """Change the link, the loss rate and/or the outage (None ends it) from now on."""
        if link is not None:
            link = link if isinstance(link, Link) else Link.parse(link)
        if loss is not None and not 0.0 <= loss < 1.0:
            raise ConfigError(f"loss must be in [0, 1), got {loss}.")
        if outage != "keep" and outage not in _OUTAGES:
            raise ConfigError(f"outage must be one of refuse, blackhole or None, got {outage!r}.")
        with self._lock:
            self._link = link or self._link
            self._loss = self._loss if loss is None else loss
            if outage != "keep":
                self._outage = outage
        if outage == "refuse" and self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_all)

    @property
    def link(self) -> Link:
        return self._link

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> "LinkEmulator":
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="link-emulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def close(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            self._reset_all()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shut()))
        self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> "LinkEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the proxy -----------------------------------------------------------------------------
    def _reset_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # closing: asyncio's callback would re-raise a cancelled task's error
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self._outage == "refuse":
            self.stats.refused += 1
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self._outage == "blackhole":
            while await reader.read(_CHUNK):  # hold the connection, forward nothing, until the client gives up
                pass
            self._writers.discard(writer)
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, "up")),
                 asyncio.ensure_future(self._pump(up_reader, writer, "down"))]
        # an end of stream passes on (half-close); a reset on either side resets both
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        if any(not t.cancelled() and t.exception() is not None for t in done):
            self.stats.resets += 1
            for w in (writer, up_writer):
                w.transport.abort()
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            if not w.transport.is_closing():
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        free_at = 0.0

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if self._outage == "refuse":
                    writer.transport.abort()
                    return
                if self._outage == "blackhole":
                    continue  # the link died while this was in flight
                writer.write(data)
                await writer.drain()

        sender = loop.create_task(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                with self._lock:
                    link, loss = self._link, self._loss
                now = loop.time()
                if not data:
                    queue.put_nowait((max(now, free_at) + link.rtt_s / 2, None))
                    break
                lost = sum(self._rng.random() < loss for _ in range(-(-len(data) // self._mss))) if loss else 0
                self.stats.lost_segments += lost
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                free_at = max(now, free_at) + 8 * len(data) / link.bandwidth_bps + lost * max(_MIN_RTO_S, link.rtt_s)
                queue.put_nowait((free_at + link.rtt_s / 2, data))
            await sender
        finally:
            sender.cancel()
