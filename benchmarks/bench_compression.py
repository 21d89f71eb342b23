"""Benchmark: pruning, distillation and clustering chains on a CNN where compute dominates.

The digits CNN at width 32 (32x32 input, ~48 M MACs), trained here. In one run at batch 1
(ONNX Runtime sessions timed interleaved, PyTorch eager after them): PyTorch eager fp32, ONNX Runtime fp32, static int8 of the same
unpruned model, structured pruning to <= 50% MACs + distillation + int8, and 80%
unstructured sparsity + 16-value clustering + int8 (whose saving is the zipped size).
Writes benchmarks/results/compression.json and prints a markdown table for the README.

    python benchmarks/bench_compression.py [--threads 2] [--width 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import edgeship
from edgeship._workspace import scratch_dir
from edgeship.demo import prepare_demo
from edgeship.search.pipeline import plan_optimization

sys.path.insert(0, str(Path(__file__).parent))
from _common import TorchSession, time_sessions, write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "compression.json"
RECIPES = "static-int8-minmax,structured-50-distill-int8,sparse80-cluster16-int8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    started = time.perf_counter()
    model, calib, evald, train = prepare_demo("digits", scratch_dir("bench"), width=args.width)
    train_seconds = time.perf_counter() - started
    plan = plan_optimization(model, data=calib, eval_data=evald, train_data=train, recipes=RECIPES,
                             settings=edgeship.EvalSettings(threads=args.threads),
                             budget=edgeship.Budget(max_accuracy_drop=0.015))
    started = time.perf_counter()
    result = plan.run()
    optimize_seconds = time.perf_counter() - started

    by_name = {c.recipe: c for c in result.candidates}
    failed = {n: c.reason for n, c in by_name.items() if c.status == "failed"}
    if failed:
        raise SystemExit(f"recipes failed: {failed}")
    # time everything once more (ONNX Runtime interleaved, then PyTorch eager) for the ratios below
    feeds = {k: v[:1] for k, v in plan.evaluation.inputs.items()}
    rows = [("pytorch_eager_fp32", None), ("onnxruntime_fp32", result.baseline)] + [
        (name, by_name[name]) for name in RECIPES.split(",")
    ]
    ort_timings, eager = time_sessions(
        [c.model.session(args.threads) for _, c in rows[1:]], TorchSession(model.torch_module, ["image"], args.threads, ["logits"]),
        feeds, warmup=20, runs=500, rounds=5, min_seconds=3.0,
    )
    timings = [eager, *ort_timings]

    base = result.baseline.metrics
    table = {}
    for (label, cand), timing in zip(rows, timings):
        entry = {"latency_ms_p50": timing["latency_ms_p50"], "latency_ms_p95": timing["latency_ms_p95"]}
        if cand is not None:
            m = cand.metrics
            entry.update(
                accuracy=m["accuracy"],
                accuracy_drop_points=100 * (base["accuracy"] - m["accuracy"]),
                macs=m["macs"], params=m["params"], sparsity=m["sparsity"],
                size_bytes=m["size_bytes"], compressed_size_bytes=m["compressed_size_bytes"],
                size_ratio_vs_fp32=base["size_bytes"] / m["size_bytes"],
                compressed_ratio_vs_fp32=base["size_bytes"] / m["compressed_size_bytes"],
                status=cand.status, reason=cand.reason,
            )
        table[label] = entry
    int8_p50 = table["static-int8-minmax"]["latency_ms_p50"]
    for entry in table.values():
        entry["speedup_vs_ort_fp32"] = table["onnxruntime_fp32"]["latency_ms_p50"] / entry["latency_ms_p50"]
        entry["speedup_vs_unpruned_int8"] = int8_p50 / entry["latency_ms_p50"]
    structured, sparse = table["structured-50-distill-int8"], table["sparse80-cluster16-int8"]
    targets = {
        "structured: MACs <= 50% of fp32": structured["macs"] <= 0.5 * base["macs"],
        "structured: accuracy drop <= 1 point": structured["accuracy_drop_points"] <= 1.0,
        "structured: >= 1.3x faster than unpruned int8": structured["speedup_vs_unpruned_int8"] >= 1.3,
        "structured: >= 6x smaller than fp32": structured["size_ratio_vs_fp32"] >= 6.0,
        "sparse+cluster: zipped >= 8x smaller than fp32": sparse["compressed_ratio_vs_fp32"] >= 8.0,
        "sparse+cluster: accuracy drop <= 1.5 points": sparse["accuracy_drop_points"] <= 1.5,
    }
    results = [{
        "model": f"digits_cnn(width={args.width}), 32x32", "eval_samples": len(plan.evaluation),
        "train_seconds": train_seconds, "optimize_seconds": optimize_seconds, "rows": table, "targets": targets,
    }]
    write_results(args.out, "compression", args.threads, results)

    print("| runtime / recipe | accuracy (drop, points) | p50 ms | vs ORT fp32 | vs unpruned int8 | MACs | size (x smaller) | zipped (x smaller) | sparsity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, e in table.items():
        if "accuracy" not in e:
            print(f"| {label} | - | {e['latency_ms_p50']:.3f} | {e['speedup_vs_ort_fp32']:.2f}x | "
                  f"{e['speedup_vs_unpruned_int8']:.2f}x | - | - | - | - |")
            continue
        print(f"| {label} | {e['accuracy']:.4f} ({e['accuracy_drop_points']:+.2f}) | {e['latency_ms_p50']:.3f} | "
              f"{e['speedup_vs_ort_fp32']:.2f}x | {e['speedup_vs_unpruned_int8']:.2f}x | {e['macs'] / 1e6:.1f}M | "
              f"{e['size_bytes'] / 1024:.0f} KiB ({e['size_ratio_vs_fp32']:.2f}x) | "
              f"{e['compressed_size_bytes'] / 1024:.0f} KiB ({e['compressed_ratio_vs_fp32']:.2f}x) | {e['sparsity']:.2f} |")
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
