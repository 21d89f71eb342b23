"""Benchmark: the budgeted search on MiniLM, with each executor.

Runs `optimize` on the bundled MiniLM (auto recipes, at least 6 candidates) against the
`raspberry-pi-5` profile with a latency and memory budget, once per executor: in this
process, a local process pool of 2 workers, and Ray tasks on a local 2-CPU Ray instance.
Writes benchmarks/results/search.json and prints a table.

    python benchmarks/bench_search.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import edgeship
from edgeship._workspace import scratch_dir
from edgeship.demo import prepare_demo
from edgeship.search.executors import LocalExecutor, ProcessExecutor, RayExecutor
from edgeship.search.pipeline import plan_optimization

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "search.json"


def main() -> None:
    import ray

    model, calib, evald, _ = prepare_demo("minilm", scratch_dir("bench"))
    budget = edgeship.Budget(max_accuracy_drop=0.01, max_latency_ms=50, max_memory_mb=512)
    rows = []
    executors = [("local", LocalExecutor), ("process pool, 2 workers", lambda: ProcessExecutor(workers=2)),
                 ("ray, local 2-CPU instance", lambda: RayExecutor(num_cpus=2))]
    for label, make in executors:
        started = time.perf_counter()
        plan = plan_optimization(model, data=calib, eval_data=evald, budget=budget, target="raspberry-pi-5",
                                 executor=make())
        setup = time.perf_counter() - started
        result = plan.run()
        seconds = time.perf_counter() - started
        rows.append({"executor": label, "seconds": seconds, "setup_seconds": setup,
                     "candidates": len(result.candidates), "best": result.best.recipe if result.best else None,
                     "statuses": {c.recipe: c.status for c in result.candidates}})
        print(f"{label}: {seconds:.1f} s for {len(result.candidates)} candidates, best {rows[-1]['best']}")
    ray.shutdown()
    pool = next(r for r in rows if r["executor"].startswith("process"))["seconds"]
    ray_s = next(r for r in rows if r["executor"].startswith("ray"))["seconds"]
    summary = {"minilm_search_seconds_max": max(r["seconds"] for r in rows),
               "ray_over_process_pool": ray_s / pool}
    write_results(RESULTS, "search", 2, [{"rows": rows, "summary": summary}])
    print("\n| executor | seconds | candidates | best |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['executor']} | {r['seconds']:.1f} | {r['candidates']} | {r['best']} |")
    print(f"\n{summary}\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
