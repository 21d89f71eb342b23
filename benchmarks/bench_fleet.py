"""Benchmark: thousands of devices reporting to the fleet service at once, SQLite against PostgreSQL.

For each store, `edgeship fleet serve` runs in its own process; N devices are enrolled, then
report R rounds each (every report carries its device, round and a version of its own) from
C concurrent connections in this process. Afterwards every row is read back through the
operator's API: a row must exist for every device, hold that device's last round and nothing
of another device's (no lost rows, no mixed rows). Reported: reports per second and p95
latency per store, and PostgreSQL's rate as a ratio of SQLite's. Writes
benchmarks/results/fleet.json and prints a table.

    python benchmarks/bench_fleet.py [--devices 2000] [--rounds 3] [--concurrency 64] [--postgres URL]

Without --postgres, $EDGESHIP_TEST_POSTGRES is used (.ci/run sets it); without either, SQLite only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fleet.json"


def _serve(db: str, token_file: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeship.cli", "fleet", "serve", "--db", db, "--port", "0",
                             "--operator-token-file", str(token_file)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        found = re.search(r"(http://127\.0\.0\.1:\d+)/v1/devices", line)
        if found:
            return proc, found.group(1)
    raise RuntimeError("the fleet service did not start")


async def _report_all(url: str, tokens: dict[str, str], rounds: int, concurrency: int) -> tuple[list[float], int]:
    import httpx

    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue = asyncio.Queue()
    for r in range(1, rounds + 1):
        for device in tokens:
            queue.put_nowait((device, r))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while not queue.empty():
            device, r = queue.get_nowait()
            body = {"device_id": device, "model": "digits", "version": r, "slot": "ab"[r % 2], "health": "ok",
                    "message": f"{device} round {r}"}
            start = time.perf_counter()
            answer = await client.post(url + "/v1/reports", json=body,
                                       headers={"Authorization": f"Bearer {tokens[device]}"})
            latencies.append((time.perf_counter() - start) * 1000)
            failures += answer.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    return latencies, failures


def bench_store(kind: str, db: str, devices: int, rounds: int, concurrency: int, workdir: Path) -> dict:
    from edgeship.ota.fleet_client import fetch_status
    from edgeship.ota.fleet_store import open_store

    store = open_store(db)
    if kind == "postgresql":
        with store._tx() as cur:  # noqa: SLF001 - an empty fleet for the run
            cur.execute("DELETE FROM devices")
            cur.execute("DELETE FROM credentials")
    tokens = {f"dev-{i:05}": store.enroll(f"dev-{i:05}") for i in range(devices)}
    store.close()
    token_file = workdir / f"{kind}.operator"
    proc, url = _serve(db, token_file)
    try:
        start = time.perf_counter()
        latencies, failures = asyncio.run(_report_all(url, tokens, rounds, concurrency))
        seconds = time.perf_counter() - start
        rows = fetch_status(url, token_file.read_text().strip(), "digits")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    by_device = {r["device_id"]: r for r in rows}
    lost = sorted(set(tokens) - set(by_device))
    mixed = [d for d, r in by_device.items() if r["message"] != f"{d} round {rounds}" or r["version"] != rounds]
    return {"store": kind, "devices": devices, "reports": len(latencies), "failed_reports": failures,
            "seconds": seconds, "reports_per_second": len(latencies) / seconds,
            "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "rows": len(rows), "lost_rows": len(lost), "mixed_rows": len(mixed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--postgres", default=os.environ.get("EDGESHIP_TEST_POSTGRES"))
    args = parser.parse_args()
    from edgeship._workspace import scratch_dir

    workdir = scratch_dir("fleet-bench")
    sqlite_db = workdir / "fleet.sqlite"
    sqlite_db.unlink(missing_ok=True)
    results = [bench_store("sqlite", str(sqlite_db), args.devices, args.rounds, args.concurrency, workdir)]
    if args.postgres:
        results.append(bench_store("postgresql", args.postgres, args.devices, args.rounds, args.concurrency, workdir))
    if len(results) == 2:
        results.append({"postgresql_vs_sqlite_rate": results[1]["reports_per_second"] / results[0]["reports_per_second"]})
    write_results(RESULTS, "fleet", 1, results)
    print("| store | devices | reports | reports/s | p50 ms | p95 ms | failed | lost rows | mixed rows |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "store" in r:
            print(f"| {r['store']} | {r['devices']} | {r['reports']} | {r['reports_per_second']:.0f} | "
                  f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['failed_reports']} | {r['lost_rows']} | "
                  f"{r['mixed_rows']} |")
    if len(results) == 3:
        print(f"\nPostgreSQL / SQLite report rate: {results[2]['postgresql_vs_sqlite_rate']:.2f}")


if __name__ == "__main__":
    main()
