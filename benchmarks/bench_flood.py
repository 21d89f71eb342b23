"""Benchmark: legitimate requests under a flood of idle, slow and oversize connections.

`edgeship serve` (digits CNN, binary tensors, 2 threads) is driven by the lean load generator
(_loadgen.py, 4 keep-alive connections) alone, then while _flood.py holds 1000 idle connections
that send nothing, 50 slowloris connections trickling a head, and 8 clients sending 100
over-limit requests a second (64 MiB announced, or streamed in 256 KiB chunks; --rate 0 sends
them flat out), all from 127.0.0.1 like the legitimate client. The attacker shares the machine's
two cores; its CPU time and the server's are recorded. Rounds alternate (unloaded, flooded) so that drift on the shared machine hits
both. The goal is a flooded rate of at least 80% of the unloaded one. Writes
benchmarks/results/flood.json and prints a table.

    python benchmarks/bench_flood.py [--rounds 3] [--seconds 8] [--idle 1000] [--rate 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402
from bench_server import Server, binary_request, load  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "flood.json"
FLOOD = Path(__file__).parent / "_flood.py"


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _phase(server: "Server", path: str, body: bytes, head: int, seconds: float) -> dict:
    """One load run, with the server's CPU seconds spent per legitimate request."""
    before = _cpu_s(server.proc.pid)
    result = load(server.port, path, body, head, 4, seconds)
    result["server_cpu_s"] = _cpu_s(server.proc.pid) - before
    return result


def main() -> None:
    import torch

    import edgeship
    from edgeship._workspace import scratch_dir
    from edgeship.bundle import generate_keys
    from edgeship.bundle.pack import pack
    from edgeship.demo import digits_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--oversize", type=int, default=8, help="clients sending over-limit requests")
    parser.add_argument("--rate", type=float, default=100.0, help="over-limit requests per second in all (0: flat out)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    keys = generate_keys(scratch_dir("flood-keys"), content_key=True)
    module, data = digits_model()
    model = edgeship.from_torch(module, torch.from_numpy(data["x_train"][:1]), input_names=["image"],
                                output_names=["logits"])
    bundle = pack(model.path, "digits", 1, keys["private"], scratch_dir("flood-bundles") / "digits.edgeship")
    body, head = binary_request({"image": np.ascontiguousarray(data["x_test"][:1])})
    server = Server([bundle], keys, "--threads", str(args.threads), "--max-request-mb", "1")
    path = "/v2/models/digits/infer"
    unloaded, flooded, floods = [], [], []
    try:
        load(server.port, path, body, head, 4, 2.0)  # warm up
        for r in range(args.rounds):
            unloaded.append(_phase(server, path, body, head, args.seconds))
            attacker = subprocess.Popen([sys.executable, str(FLOOD), str(server.port), str(args.idle), str(args.slow),
                                         str(args.oversize), str(args.seconds + 4), str(args.rate)],
                                        stdout=subprocess.PIPE, text=True)
            try:
                # the flood builds up for a second (_loadgen warms up for one), then both run
                flooded.append(_phase(server, path, body, head, args.seconds))
            finally:
                floods.append(json.loads(attacker.communicate(timeout=120)[0]))
            print(f"round {r + 1}: {unloaded[-1]['per_second']:.0f} req/s unloaded, "
                  f"{flooded[-1]['per_second']:.0f} flooded", flush=True)
    finally:
        server.stop()
    ratios = [f["per_second"] / u["per_second"] for u, f in zip(unloaded, flooded)]
    result = {
        "model": "digits CNN, fp32, batch 1, binary tensors; 4 keep-alive clients",
        "flood": {"idle_connections": args.idle, "slowloris_connections": args.slow,
                  "oversize_clients": args.oversize, "oversize_per_second": args.rate or "flat out"},
        "server_cpu_s_unloaded": [u["server_cpu_s"] for u in unloaded],
        "server_cpu_s_flooded": [f["server_cpu_s"] for f in flooded],
        "unloaded_per_second": [u["per_second"] for u in unloaded],
        "flooded_per_second": [f["per_second"] for f in flooded],
        "unloaded_p95_ms": [u["p95_ms"] for u in unloaded], "flooded_p95_ms": [f["p95_ms"] for f in flooded],
        "ratio_per_round": ratios, "ratio_median": float(np.median(ratios)), "goal": 0.8,
        "server_answers_to_the_flood": floods,
    }
    write_results(RESULTS, "flood", args.threads, [result])
    print("\n| round | unloaded req/s | flooded req/s | ratio | p95 unloaded / flooded (ms) |")
    print("|---|---|---|---|---|")
    for i, (u, f, q) in enumerate(zip(unloaded, flooded, ratios), 1):
        print(f"| {i} | {u['per_second']:.0f} | {f['per_second']:.0f} | {q:.2f} | "
              f"{u['p95_ms']:.1f} / {f['p95_ms']:.1f} |")
    print(f"\nmedian ratio {result['ratio_median']:.2f} (goal >= 0.80); flood answers: {floods[-1]}")
    print(f"server CPU s per phase, unloaded / flooded: {result['server_cpu_s_unloaded']} / "
          f"{result['server_cpu_s_flooded']}; the attacker's CPU s: {[f['attacker_cpu_s'] for f in floods]}")


if __name__ == "__main__":
    main()
