"""Benchmark: a fleet of simulated agents updating from one TUF repository.

One run, on this machine:

- burst: N agents (processes, each with its own state directory and device id) all on the
  current version, warm as a polling daemon is (each has checked once); a new version is
  published and every agent checks at once. Measured: time until the last agent committed,
  against one agent alone (the median of ``--repeats`` bursts each); CPU per agent; bytes and
  requests the repository served.
- polling fleet: N agents polling every ``--interval`` seconds (+-10% jitter, random phase),
  as a fleet runs; measured: time from publish to the last commit.
- during both, agent 0's state directory is served by `edgeship serve` under steady load,
  and agent 0 health-checks it: failed inferences are counted.

The repository is served by a plain static HTTP server that counts bytes. Writes
benchmarks/results/ota.json and prints a markdown table.

    python benchmarks/bench_ota.py [--agents 50] [--interval 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import http.server
import json
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import edgeship
from edgeship._workspace import scratch_dir
from edgeship.bundle import generate_keys, load_public_keys
from edgeship.bundle.keys import load_content_key
from edgeship.bundle.pack import pack
from edgeship.ota.agent import Agent, AgentConfig
from edgeship.ota.repository import init_repo, publish

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ota.json"


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    counter: dict[str, int] = {"bytes": 0, "requests": 0}
    lock = threading.Lock()
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per agent, not one per file

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = source.read()
        outputfile.write(data)
        with self.lock:
            self.counter["bytes"] += len(data)
            self.counter["requests"] += 1


class RepositoryServer(http.server.ThreadingHTTPServer):
    """A static file server as a CDN edge or nginx would be set up: a listen backlog that holds a
    fleet's simultaneous connections (http.server's default of 5 drops SYNs, which clients only
    retry after 1 s, then 3 s), and HTTP/1.1 keep-alive (set on the handler)."""

    request_queue_size = 1024


def serve_repository(public: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = RepositoryServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(public)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


class Traffic:
    """`edgeship serve STATE_DIR` under a steady request stream; counts what fails."""

    def __init__(self, state: Path, keys: dict[str, Path], image: np.ndarray) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeship.cli", "serve", str(state), "--trust",
                                      str(keys["public"]), "--decrypt-key", str(keys["content"]), "--port", "0",
                                      "--threads", "1"], stdout=subprocess.PIPE, text=True)
        while True:
            found = re.search(r"127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                break
        time.sleep(0.5)
        self.body = json.dumps({"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                                            "data": image.reshape(-1).tolist()}]}).encode()
        self.ok = self.failed = 0
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(f"{self.url}/v2/models/digits/infer", data=self.body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    self.versions.add(json.loads(response.read())["model_version"])
                    self.ok += 1
            except (urllib.error.URLError, OSError):
                self.failed += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def make_agent(root: Path, url: str, repo: Path, i: int, keys: dict[str, Path], health_url: str | None) -> Agent:
    """Device ``i``: its own state directory and id; only device 0 health-checks the served model."""
    return Agent(AgentConfig(url, repo / "root.json", root / f"agent-{i:03d}", "digits", load_public_keys(keys["public"]),
                             load_content_key(keys["content"]), device_id=f"device-{i:03d}",
                             health_url=health_url if i == 0 else None))


def make_agents(root: Path, url: str, repo: Path, n: int, keys: dict[str, Path], health_url: str | None) -> list[Agent]:
    return [make_agent(root, url, repo, i, keys, health_url) for i in range(n)]


def _burst_worker(args: tuple, ready: Any, go: Any, results: Any) -> None:
    """One simulated device in its own process: imports done and agent built before the start signal."""
    agent = make_agent(*args)
    import onnxruntime  # noqa: F401  (what the self-test needs, loaded before the clock starts)

    agent.check_once()  # a device's agent is a daemon that has polled before: one check warms it up
    ready.release()
    go.wait()
    cpu = time.process_time()
    result = agent.check_once()
    results.put((agent.device_id, time.time(), time.process_time() - cpu, result.status, agent.active_version))


def burst(root: Path, url: str, repo: Path, n: int, keys: dict[str, Path], health_url: str | None,
          publish_fn: Any) -> dict:
    """N agent processes, all checking the moment the new version is published."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_burst_worker, args=((root, url, repo, i, keys, health_url), ready, go, results))
             for i in range(n)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    publish_fn()
    start = time.time()
    go.set()
    rows = []
    while len(rows) < len(procs):
        try:
            rows.append(results.get(timeout=1))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"{len(dead)} agent process(es) failed (exit code {dead[0].exitcode}); see above")
    for p in procs:
        p.join(60)
    return {"seconds": max(r[1] for r in rows) - start, "cpu_seconds_per_agent": float(np.mean([r[2] for r in rows])),
            "statuses": sorted({r[3] for r in rows}), "all_on_new_version": len({r[4] for r in rows}) == 1}


def polling(agents: list[Agent], interval: float, publish_fn, target: int) -> dict:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    committed: dict[int, float] = {}

    def loop(i: int, agent: Agent) -> None:
        time.sleep(random.uniform(0, interval))
        while not stop.is_set():
            agent.check_once()
            if agent.active_version == target and i not in committed:
                committed[i] = time.perf_counter()
            stop.wait(interval * random.uniform(0.9, 1.1))

    threads = [threading.Thread(target=loop, args=(i, a), daemon=True) for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    time.sleep(interval * 1.5)  # the fleet is polling, in random phases
    published = time.perf_counter()
    publish_fn()
    deadline = published + interval * 10
    while len(committed) < len(agents) and time.perf_counter() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(60)
    return {"seconds": max(committed.values()) - published if committed else None, "converged": len(committed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="bursts per fleet size (the median is reported)")
    args = parser.parse_args()
    import torch

    from edgeship.demo import digits_model

    work = scratch_dir("ota-bench")
    keys = generate_keys(work / "keys", content_key=True)
    module, data = digits_model()
    model = edgeship.from_torch(module, torch.from_numpy(data["x_train"][:1]), input_names=["image"])
    bundles = {v: pack(model.path, "digits", v, keys["private"], work / f"digits-{v}.edgeship",
                       encrypt_key=keys["content"]) for v in range(1, args.repeats + 3)}
    results: dict = {"agents": args.agents, "bundle_bytes": bundles[1].stat().st_size}

    for label, n in (("single", 1), ("fleet", args.agents)):
        root = work / label
        repo = root / "repo"
        init_repo(repo)
        publish(repo, bundles[1])
        httpd, url = serve_repository(repo / "public")
        first = make_agents(root, url, repo, n, keys, None)
        for agent in first:  # every device starts on v1; then the burst's processes take the state directories
            agent.check_once()
            agent.close()
        traffic = Traffic(root / "agent-000", keys, data["x_test"][:1])

        runs = []
        for version in range(2, args.repeats + 2):  # each burst updates the whole fleet to a new version
            def publish_next(version: int = version) -> None:
                publish(repo, bundles[version])
                CountingHandler.counter.update(bytes=0, requests=0)

            run = burst(root, url, repo, n, keys, traffic.url, publish_next)
            run.update(bytes_served=CountingHandler.counter["bytes"], requests=CountingHandler.counter["requests"])
            runs.append(run)
        result = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median burst
        result["all_runs_seconds"] = [r["seconds"] for r in runs]
        if label == "fleet":
            last = args.repeats + 2
            result["polling"] = polling(make_agents(root, url, repo, n, keys, traffic.url), args.interval,
                                        lambda: publish(repo, bundles[last]), last)
            result["polling"]["interval_s"] = args.interval
        traffic.stop()
        result.update(inferences_ok=traffic.ok, inferences_failed=traffic.failed, served_versions=sorted(traffic.versions))
        results[label] = result
        httpd.shutdown()
        print(label, json.dumps(result, default=str))

    single, fleet = results["single"], results["fleet"]
    results["burst_ratio"] = fleet["seconds"] / single["seconds"]
    write_results(RESULTS, "ota", 2, [results])
    print("\n| measure | value | target |\n|---|---|---|")
    print(f"| one agent, publish -> committed | {single['seconds'] * 1000:.0f} ms "
          f"({single['cpu_seconds_per_agent'] * 1000:.0f} ms CPU) | |")
    print(f"| {args.agents} agents at once (processes, 2 shared cores) -> all committed | {fleet['seconds']:.2f} s = "
          f"{results['burst_ratio']:.0f}x one agent; {fleet['cpu_seconds_per_agent'] * 1000:.0f} ms CPU per agent | <= 2x |")
    p = fleet["polling"]
    print(f"| {args.agents} agents polling every {p['interval_s']:g} s -> all committed | {p['seconds']:.2f} s "
          f"({p['converged']}/{args.agents}) | |")
    print(f"| bytes served for the burst ({args.agents} agents) | {fleet['bytes_served'] / 1e6:.2f} MB in "
          f"{fleet['requests']} requests ({fleet['bytes_served'] / args.agents / 1e3:.0f} kB per agent; bundle "
          f"{results['bundle_bytes'] / 1e3:.0f} kB) | |")
    print(f"| failed inferences during the updates | {single['inferences_failed'] + fleet['inferences_failed']} of "
          f"{single['inferences_ok'] + fleet['inferences_ok'] + single['inferences_failed'] + fleet['inferences_failed']} | 0 |")


if __name__ == "__main__":
    main()
