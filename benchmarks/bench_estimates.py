"""Benchmark: the offline estimators against measurements on this host.

For every candidate of the digits and MiniLM demos (the same models as the other
benchmarks), the `host` estimate of peak memory and latency is divided by what the
pipeline measured (peak memory in a fresh process; latency p50, timed interleaved).
Writes benchmarks/results/estimates.json and prints a markdown table for the README.

    python benchmarks/bench_estimates.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import edgeship
from edgeship._workspace import scratch_dir
from edgeship.demo import prepare_demo
from edgeship.search.pipeline import plan_optimization
from edgeship.targets import load_profile
from edgeship.targets.estimate import estimate

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "estimates.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    host = load_profile("host")
    rows = []
    for name in ("digits", "minilm"):
        model, calib, evald, train = prepare_demo(name, scratch_dir("bench"))
        plan = plan_optimization(model, data=calib, eval_data=evald, train_data=train,
                                 settings=edgeship.EvalSettings(threads=args.threads))
        result = plan.run()
        shapes = {k: v[:1].shape for k, v in plan.evaluation.inputs.items()}
        for cand in [result.baseline, *result.candidates]:
            if cand.model is None:
                continue
            est = estimate(cand.model, host, shapes, threads=args.threads)
            m = cand.metrics
            rows.append({
                "model": name, "candidate": cand.recipe,
                "latency_ms_estimate": est["latency_ms"], "latency_ms_measured": m["latency_ms_p50"],
                "latency_ratio": est["latency_ms"] / m["latency_ms_p50"],
                "memory_bytes_estimate": est["peak_memory_bytes"], "memory_bytes_measured": m["peak_memory_bytes"],
                "memory_ratio": est["peak_memory_bytes"] / m["peak_memory_bytes"],
            })
    lat = np.array([r["latency_ratio"] for r in rows])
    mem = np.array([r["memory_ratio"] for r in rows])
    summary = {
        "models": len(rows),
        "memory_within_35_percent": int(np.sum(np.abs(mem - 1) <= 0.35)),
        "memory_ratio_min": float(mem.min()), "memory_ratio_max": float(mem.max()),
        "latency_within_2x": int(np.sum((lat >= 0.5) & (lat <= 2.0))),
        "latency_ratio_min": float(lat.min()), "latency_ratio_max": float(lat.max()),
        "latency_ratio_geomean": float(np.exp(np.mean(np.log(lat)))),
    }
    write_results(args.out, "estimates", args.threads, [{"rows": rows, "summary": summary}])
    print("| model | candidate | latency est / measured (ms) | ratio | peak memory est / measured (MiB) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['candidate']} | {r['latency_ms_estimate']:.3f} / {r['latency_ms_measured']:.3f} | "
              f"{r['latency_ratio']:.2f} | {r['memory_bytes_estimate'] / 2**20:.1f} / "
              f"{r['memory_bytes_measured'] / 2**20:.1f} | {r['memory_ratio']:.2f} |")
    print(f"\n{summary}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
