"""A lean HTTP/1.1 load generator for the server benchmark (runs in its own process).

Keeps ``concurrency`` keep-alive connections, each sending the same pre-encoded request as
soon as the previous answer arrived, for ``seconds``. Parsing is minimal (status line,
Content-Length, body) so that the client costs the shared CPU as little as possible; the
server still parses and validates every request in full. Prints one JSON line:
``{"latencies_ms": [...], "statuses": {...}, "seconds": ...}``.

    python _loadgen.py PORT PATH BODY_FILE HEADER_LENGTH CONCURRENCY SECONDS [WARMUP_S]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def _worker(port: int, request: bytes, stop_at: float, warm_until: float, out: list[float],
                  statuses: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            end = time.perf_counter()
            if start >= warm_until:
                out.append((end - start) * 1000.0)
                code = status_line.split(b" ", 2)[1].decode()
                statuses[code] = statuses.get(code, 0) + 1
    finally:
        writer.close()


async def main() -> None:
    port, path, body_file, header_length = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    concurrency, seconds = int(sys.argv[5]), float(sys.argv[6])
    warmup = float(sys.argv[7]) if len(sys.argv) > 7 else 1.0
    body = open(body_file, "rb").read()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    if header_length != "-":
        head += f"Inference-Header-Content-Length: {header_length}\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + seconds
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    await asyncio.gather(*[_worker(port, request, stop_at, warm_until, latencies, statuses)
                           for _ in range(concurrency)])
    print(json.dumps({"latencies_ms": latencies, "statuses": statuses, "seconds": seconds}))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
