"""Benchmark: PyTorch eager vs ONNX Runtime fp32 vs plain quantize_dynamic vs edgeship's choice.

Measured in one run, on this machine, at a fixed thread count and batch 1; the ONNX Runtime
sessions are timed interleaved (round-robin) so that load on a shared machine hits them
equally, and PyTorch eager after them (its spinning OpenMP workers would slow the next session).
Writes benchmarks/results/quantization.json and prints a markdown table for the README.

    python benchmarks/bench_quantization.py [--threads 2] [--models digits,minilm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import edgeship
from edgeship._workspace import scratch_dir
from edgeship.demo import prepare_demo
from edgeship.evaluate import measure_peak_memory, run_outputs
from edgeship.search.pipeline import plan_optimization

sys.path.insert(0, str(Path(__file__).parent))
from _common import TorchSession, time_sessions, write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "quantization.json"


def bench(name: str, threads: int, max_drop: float) -> dict:
    from onnxruntime.quantization import quantize_dynamic

    model, calib, evald, _ = prepare_demo(name, scratch_dir("bench"))
    settings = edgeship.EvalSettings(threads=threads)
    plan = plan_optimization(model, data=calib, eval_data=evald, settings=settings,
                             budget=edgeship.Budget(max_accuracy_drop=max_drop))
    started = time.perf_counter()
    result = plan.run()
    optimize_seconds = time.perf_counter() - started

    peer_path = scratch_dir("peer") / "dynamic_defaults.onnx"
    quantize_dynamic(str(model.path), str(peer_path))  # ONNX Runtime's defaults, nothing else
    peer = edgeship.load(peer_path)

    evaluation, metric = plan.evaluation, plan.metric
    names = [s.name for s in model.inputs]
    feeds = {k: np.ascontiguousarray(v[:1]) for k, v in evaluation.inputs.items()}
    torch_session = TorchSession(model.torch_module, names, threads, [s.name for s in model.outputs])
    entries = {
        "onnxruntime_fp32": (model.session(threads), model),
        "ort_quantize_dynamic_defaults": (peer.session(threads), peer),
    }
    if result.best is not None:
        entries[f"edgeship_best ({result.best.recipe})"] = (result.best.model.session(threads), result.best.model)
    entries.update(_openvino_peers(model, plan, threads))

    reference = run_outputs(entries["onnxruntime_fp32"][0], evaluation.batches(1))
    ort_timings, eager = time_sessions([s for s, _ in entries.values()], torch_session, feeds, warmup=10,
                                       runs=200, rounds=5, min_seconds=2.0)
    entries = {"pytorch_eager": (torch_session, None), **entries}
    timings = [eager, *ort_timings]
    rows = {}
    fp32_size = model.size_bytes
    for (label, (session, m)), timing in zip(entries.items(), timings):
        outputs = run_outputs(session, evaluation.batches(1))
        row = {
            metric.name: metric.score(outputs, reference, evaluation.labels),
            "latency_ms_p50": timing["latency_ms_p50"],
            "latency_ms_p95": timing["latency_ms_p95"],
        }
        if m is not None:
            row["size_bytes"] = m.size_bytes
            row["size_ratio_vs_fp32"] = fp32_size / m.size_bytes
            row["peak_memory_bytes"] = measure_peak_memory(m.artifact or m.path, feeds, threads, m.engine)
        rows[label] = row
    ort_p50 = rows["onnxruntime_fp32"]["latency_ms_p50"]
    for row in rows.values():
        row["speedup_vs_ort_fp32"] = ort_p50 / row["latency_ms_p50"]
    return {
        "model": name,
        "metric": metric.name,
        "max_drop": max_drop,
        "eval_samples": len(evaluation),
        "optimize_seconds": optimize_seconds,
        "best": result.best.recipe if result.best else None,
        "candidates": {c.recipe: {"status": c.status, "reason": c.reason} for c in result.candidates},
        "rows": rows,
    }


def _openvino_peers(model, plan, threads: int) -> dict:  # type: ignore[no-untyped-def]
    """What a user who knows OpenVINO would run instead: its fp32 IR (static shapes at run time) and
    NNCF int8 (the transformer model type with SmoothQuant for text models), straight from their APIs."""
    import importlib.util
    from types import SimpleNamespace

    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        return {}
    import nncf
    import openvino as ov

    from edgeship.engines.openvino.session import OpenVINOSession

    work = scratch_dir("peer-ov")
    calibration = list(plan.calibration.batches(1))[:300]
    text = any(s.name == "input_ids" for s in model.inputs)
    fp32 = ov.convert_model(str(model.path))
    ov.save_model(fp32, str(work / "fp32.xml"), compress_to_fp16=False)
    options = {"model_type": nncf.ModelType.TRANSFORMER} if text else {}
    int8 = nncf.quantize(ov.convert_model(str(model.path)), nncf.Dataset(calibration), subset_size=len(calibration),
                         **options)
    ov.save_model(int8, str(work / "int8.xml"), compress_to_fp16=False)
    peers = {}
    for label, xml in (("openvino_fp32", work / "fp32.xml"), ("openvino_nncf_int8", work / "int8.xml")):
        size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        peers[label] = (OpenVINOSession(xml, threads), SimpleNamespace(size_bytes=size, artifact=xml, path=xml,
                                                                        engine="openvino"))
    return peers


def markdown(results: list[dict]) -> str:
    lines = ["| model | runtime | quality | p50 ms | speedup vs ORT fp32 | size | smaller than fp32 | peak mem |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for label, row in r["rows"].items():
            size = f"{row['size_bytes'] / 2**20:.2f} MiB" if "size_bytes" in row else "-"
            ratio = f"{row['size_ratio_vs_fp32']:.2f}x" if "size_ratio_vs_fp32" in row else "-"
            mem = f"{row['peak_memory_bytes'] / 2**20:.1f} MiB" if "peak_memory_bytes" in row else "not measured"
            lines.append(
                f"| {r['model']} | {label} | {r['metric']} {row[r['metric']]:.4f} | {row['latency_ms_p50']:.3f} | "
                f"{row['speedup_vs_ort_fp32']:.2f}x | {size} | {ratio} | {mem} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="digits,minilm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    drops = {"digits": 0.005, "minilm": 0.01}
    results = [bench(name, args.threads, drops[name]) for name in args.models.split(",")]
    write_results(args.out, "quantization", args.threads, results)
    print(markdown(results))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
