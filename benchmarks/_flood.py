"""The attacker for the flood benchmark (runs in its own process, all from 127.0.0.1).

For ``seconds`` it keeps ``idle`` connections open that send nothing (reopening each one the
server closes), ``slow`` connections that trickle a request head a byte every 0.5 s, and
``oversize`` clients that send over-limit requests, ``rate`` per second in all (0: as fast as
they can): half announce a 64 MiB body, half stream one in 256 KiB chunks without a length.
Prints one JSON line of what the server answered.

    python _flood.py PORT IDLE SLOW OVERSIZE SECONDS [RATE]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def _idle(port: int, stop_at: float, stats: dict[str, int]) -> None:
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.05)
            continue
        stats["idle_opened"] += 1
        try:
            await asyncio.wait_for(reader.read(), timeout=max(0.0, stop_at - time.monotonic()))
            stats["idle_closed_by_server"] += 1
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()


async def _slow(port: int, stop_at: float, stats: dict[str, int]) -> None:
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while time.monotonic() < stop_at and not reader.at_eof():
                writer.write(b"a")
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1024), timeout=0.5):
                        stats["slow_answered"] += 1
                        break
                except asyncio.TimeoutError:
                    continue
            writer.close()
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.05)


async def _oversize(port: int, stop_at: float, stats: dict[str, int], chunked: bool, every_s: float) -> None:
    chunk = b"x" * (256 << 10)
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        if every_s:  # paced: one request per period, whatever the answers take
            next_at += every_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            if chunked:
                writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
                for _ in range(256):  # 64 MiB at most, until the server answers
                    writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    await writer.drain()
                    if reader.at_eof() or len(reader._buffer):  # noqa: SLF001 - an answer arrived
                        break
            else:
                writer.write(head + b"Content-Length: %d\r\n\r\n" % (64 << 20) + chunk)
                await writer.drain()
            status = (await asyncio.wait_for(reader.readline(), timeout=30)).split(b" ")[1:2]
            stats[f"oversize_{status[0].decode() if status else 'none'}"] += 1
            writer.close()
        except (OSError, asyncio.TimeoutError, IndexError):
            stats["oversize_reset"] += 1


async def main() -> None:
    port, idle, slow, oversize, seconds = map(float, sys.argv[1:6])
    rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    every_s = oversize / rate if rate else 0.0
    stop_at = time.monotonic() + seconds
    stats: dict[str, int] = {k: 0 for k in ("idle_opened", "idle_closed_by_server", "slow_answered",
                                            "connect_failed", "oversize_reset")}
    stats = _Counts(stats)
    tasks = [_idle(int(port), stop_at, stats) for _ in range(int(idle))]
    tasks += [_slow(int(port), stop_at, stats) for _ in range(int(slow))]
    tasks += [_oversize(int(port), stop_at, stats, i % 2 == 1, every_s) for i in range(int(oversize))]
    await asyncio.gather(*tasks)
    stats["attacker_cpu_s"] = round(time.process_time(), 2)
    print(json.dumps(dict(stats)))


class _Counts(dict):
    def __missing__(self, key: str) -> int:
        return 0


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
