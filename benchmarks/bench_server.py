"""Benchmark: the bundle runtime and the Open Inference Protocol server against plain ONNX Runtime.

Measured in one run, on this machine:

- overhead: p50 latency of `edgeship serve` at concurrency 1 (digits CNN, batch 1, binary and
  JSON tensors) minus the p50 of a raw ``session.run`` on the same input;
- throughput: MiniLM int8 (edgeship's dynamic-int8-pc recipe, 64 tokens), batch-1 requests at
  concurrency 16, with dynamic batching and without, against raw ONNX Runtime at batch 16
  and at batch 1;
- load time: ``Runtime.open`` of an encrypted MiniLM bundle (verify + decrypt + load + self-test)
  against ``ort.InferenceSession(path)``, fp32 and int8; and each one's resident memory after
  one prediction, and peak, in a fresh process;
- footprint: the site-packages of a fresh venv with ``pip install edgeship[runtime]``.

The load generator (benchmarks/_loadgen.py) runs in its own process with pre-encoded requests,
so that it takes as little of the two shared cores as possible; the server parses and checks
every request in full. Writes benchmarks/results/server.json and prints a markdown table.

    python benchmarks/bench_server.py [--threads 2] [--parts overhead,throughput,load,footprint]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import edgeship
from edgeship._workspace import scratch_dir
from edgeship.bundle import generate_keys
from edgeship.bundle.pack import pack

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "server.json"
LOADGEN = Path(__file__).parent / "_loadgen.py"
REPO = Path(__file__).resolve().parent.parent


def _session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Server:
    """`edgeship serve` in a subprocess, on a free port."""

    def __init__(self, bundles: list[Path], keys: dict[str, Path], *extra: str) -> None:
        cmd = [sys.executable, "-m", "edgeship.cli", "serve", *map(str, bundles), "--trust", str(keys["public"]),
               "--decrypt-key", str(keys["content"]), "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the server did not start")
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def binary_request(feeds: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """An OIP request with binary tensors, as tritonclient sends by default."""
    header = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": {"float32": "FP32", "int64": "INT64"}[v.dtype.name],
                          "parameters": {"binary_data_size": v.nbytes}} for k, v in feeds.items()],
              "parameters": {"binary_data_output": True}}
    head = json.dumps(header).encode()
    return head + b"".join(np.ascontiguousarray(v).tobytes() for v in feeds.values()), len(head)


def json_request(feeds: dict[str, np.ndarray]) -> bytes:
    return json.dumps({"inputs": [{"name": k, "shape": list(v.shape),
                                   "datatype": {"float32": "FP32", "int64": "INT64"}[v.dtype.name],
                                   "data": v.reshape(-1).tolist()} for k, v in feeds.items()]}).encode()


def load(port: int, path: str, body: bytes, header_length: int | None, concurrency: int, seconds: float) -> dict:
    body_file = scratch_dir("loadgen") / "body.bin"
    body_file.write_bytes(body)
    out = subprocess.run([sys.executable, str(LOADGEN), str(port), path, str(body_file),
                          str(header_length) if header_length else "-", str(concurrency), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    lat = np.array(result["latencies_ms"])
    assert set(result["statuses"]) == {"200"}, result["statuses"]
    return {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "requests": len(lat), "per_second": len(lat) / seconds}


def raw_latency(session, feeds: dict[str, np.ndarray], seconds: float) -> dict:  # type: ignore[no-untyped-def]
    for _ in range(20):
        session.run(None, feeds)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    rows = next(iter(feeds.values())).shape[0]
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "rows_per_second": rows * len(times) / (sum(times) / 1000.0)}


def bench_overhead(keys: dict[str, Path], threads: int, rounds: int = 3, seconds: float = 3.0) -> dict:
    import torch

    from edgeship.demo import digits_model

    module, data = digits_model()
    model = edgeship.from_torch(module, torch.from_numpy(data["x_train"][:1]), input_names=["image"],
                                output_names=["logits"])
    bundle = pack(model.path, "digits", 1, keys["private"], scratch_dir("bundles") / "digits.edgeship")
    feeds = {"image": np.ascontiguousarray(data["x_test"][:1])}
    session = _session(model.path, threads)
    server = Server([bundle], keys, "--threads", str(threads))
    raw, binary, as_json = [], [], []
    body, head = binary_request(feeds)
    jbody = json_request(feeds)
    try:
        for _ in range(rounds):  # interleaved, so drift on the shared machine hits all three
            raw.append(raw_latency(session, feeds, seconds)["p50_ms"])
            binary.append(load(server.port, "/v2/models/digits/infer", body, head, 1, seconds)["p50_ms"])
            as_json.append(load(server.port, "/v2/models/digits/infer", jbody, None, 1, seconds)["p50_ms"])
    finally:
        server.stop()
    raw_p50, bin_p50, json_p50 = float(np.median(raw)), float(np.median(binary)), float(np.median(as_json))
    return {"model": "digits CNN (32x32, 12 M MACs), fp32, batch 1", "raw_ort_p50_ms": raw_p50,
            "served_binary_p50_ms": bin_p50, "served_json_p50_ms": json_p50,
            "overhead_binary_ms": bin_p50 - raw_p50, "overhead_json_ms": json_p50 - raw_p50,
            "rounds": {"raw": raw, "binary": binary, "json": as_json}}


def minilm_int8(workdir: Path) -> tuple[object, object]:
    from edgeship.demo import minilm_dir
    from edgeship.passes import PassContext
    from edgeship.recipes import presets

    fp32 = edgeship.load(minilm_dir())
    int8 = presets()["dynamic-int8-pc"].apply(fp32, PassContext(workdir))
    return fp32, int8


def minilm_feeds(model, batch: int, tokens: int = 64) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in model.inputs:
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(1000, 20000, (batch, tokens)).astype(np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((batch, tokens), np.int64)
        else:
            feeds[spec.name] = np.zeros((batch, tokens), np.int64)
    return feeds


def bench_throughput(keys: dict[str, Path], threads: int, int8, seconds: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    bundle = pack(int8.path, "minilm", 1, keys["private"], scratch_dir("bundles") / "minilm-int8.edgeship",
                  encrypt_key=keys["content"])
    session = _session(int8.path, threads)
    one, sixteen = minilm_feeds(int8, 1), minilm_feeds(int8, 16)
    raw16 = raw_latency(session, sixteen, seconds)
    raw1 = raw_latency(session, one, seconds)
    del session
    body, head = binary_request(one)
    served = {}
    for label, extra in [("dynamic batching (max 16, adaptive delay)", ["--max-batch-size", "16"]),
                         ("dynamic batching (max 16, delay 0)", ["--max-batch-size", "16", "--max-queue-delay-ms", "0"]),
                         ("dynamic batching (max 16, delay 2 ms)", ["--max-batch-size", "16", "--max-queue-delay-ms", "2"]),
                         ("no batching", ["--max-batch-size", "1"])]:
        server = Server([bundle], keys, "--threads", str(threads), *extra)
        try:
            served[label] = load(server.port, "/v2/models/minilm/infer", body, head, 16, seconds)
        finally:
            server.stop()
    return {"model": "all-MiniLM-L6-v2, dynamic-int8-pc, 64 tokens", "concurrency": 16,
            "raw_ort_batch16_rows_per_s": raw16["rows_per_second"], "raw_ort_batch1_rows_per_s": raw1["rows_per_second"],
            "served": served,
            "ratio_vs_raw_batch16": {k: v["per_second"] / raw16["rows_per_second"] for k, v in served.items()}}


_MEMORY_CHILD = """
import json, sys
import numpy as np
mode, target, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "runtime":
    from edgeship.runtime import Runtime
    r = Runtime.open(target, sys.argv[4], sys.argv[5], threads)
    r.predict({spec["name"]: np.ones([1, 64], np.int64) for spec in r.manifest["inputs"]})
else:
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    s = ort.InferenceSession(target, so, providers=["CPUExecutionProvider"])
    s.run(None, {i.name: np.ones([1, 64], np.int64) for i in s.get_inputs()})
import gc; gc.collect()
from edgeship._memprobe import _status_kib  # VmHWM starts afresh at exec; ru_maxrss would not
print(json.dumps({"rss_mb": _status_kib("VmRSS") / 1024, "peak_mb": _status_kib("VmHWM") / 1024}))
"""


def _memory(mode: str, target: Path, threads: int, *extra: str) -> dict[str, float]:
    """Resident memory of a fresh process after it opened the model and ran it once, and its peak."""
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, mode, str(target), str(threads), *extra],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_load(keys: dict[str, Path], threads: int, fp32, int8, repeats: int = 7) -> dict:  # type: ignore[no-untyped-def]
    from edgeship.bundle.keys import load_content_key, load_public_keys
    from edgeship.runtime import Runtime

    trusted, content = load_public_keys(keys["public"]), load_content_key(keys["content"])
    out = {}
    for label, model in [("fp32", fp32), ("int8", int8)]:
        bundle = pack(model.path, f"minilm-{label}", 1, keys["private"], scratch_dir("bundles") / f"load-{label}.edgeship",
                      encrypt_key=keys["content"])
        plain, opened = [], []
        for _ in range(repeats):  # interleaved; the file cache is warm for both after the first round
            start = time.perf_counter()
            _session(model.path, threads)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            Runtime.open(bundle, trusted, content, threads)
            opened.append(time.perf_counter() - start)
        out[label] = {"model_mb": model.path.stat().st_size / 1e6, "ort_session_s": float(np.median(plain)),
                      "runtime_open_s": float(np.median(opened)),
                      "ratio": float(np.median(opened) / np.median(plain)),
                      "memory_ort_session": _memory("ort", model.path, threads),
                      "memory_runtime_open": _memory("runtime", bundle, threads, str(keys["public"]), str(keys["content"]))}
    return out


def _site_packages_mb(site: Path) -> dict[str, float]:
    """MB per top-level entry of site-packages, leaving out the venv's own pip and setuptools."""
    sizes: dict[str, float] = {}
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower()
        if name in {"pip", "setuptools", "_distutils_hack", "distutils", "pkg_resources"}:
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else entry.stat().st_size
        sizes[name] = sizes.get(name, 0.0) + size / 1e6
    return sizes


def _venv_site_packages(spec: str) -> tuple[dict[str, float], Path]:
    """MB per package of a fresh venv after ``pip install --no-compile SPEC`` (the venv is returned)."""
    venv = scratch_dir("footprint-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", spec], check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    site = next((venv / "lib").glob("python3*/site-packages"))
    return _site_packages_mb(site), venv


def bench_footprint() -> dict:
    """site-packages of a device install against a venv with ONNX Runtime alone (both --no-compile)."""
    base, base_venv = _venv_site_packages("onnxruntime")
    shutil.rmtree(base_venv, ignore_errors=True)
    out: dict = {"onnxruntime_alone_mb": round(sum(base.values()), 1)}
    for label in ("runtime", "runtime,text", "runtime,text,fast"):
        sizes, venv = _venv_site_packages(f"{REPO}[{label}]")
        site = next((venv / "lib").glob("python3*/site-packages"))
        commands = subprocess.run([str(venv / "bin" / "edgeship"), "--help"], capture_output=True, text=True,
                                  env={**os.environ, "COLUMNS": "200"}).stdout
        added = {k: v for k, v in sizes.items() if k not in base}
        out[label] = {"site_packages_mb": round(sum(sizes.values()), 1),
                      "over_onnxruntime_alone_mb": round(sum(sizes.values()) - sum(base.values()), 1),
                      "heavy_packages_present": [p for p in ("torch", "transformers", "matplotlib", "sklearn", "onnx")
                                                 if (site / p).is_dir()],
                      "offers_optimize": " optimize " in commands,
                      "largest_added_mb": {k: round(v, 1) for k, v in sorted(added.items(), key=lambda kv: -kv[1])[:8]}}
        shutil.rmtree(venv, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="overhead,throughput,load,footprint")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    keys = generate_keys(scratch_dir("bench-keys") / f"k{os.getpid()}", content_key=True)
    results: dict = {}
    if "overhead" in parts:
        results["overhead"] = bench_overhead(keys, args.threads)
        print(json.dumps(results["overhead"], indent=1))
    if parts & {"throughput", "load"}:
        fp32, int8 = minilm_int8(scratch_dir("minilm-int8"))
        if "throughput" in parts:
            results["throughput"] = bench_throughput(keys, args.threads, int8)
            print(json.dumps(results["throughput"], indent=1))
        if "load" in parts:
            results["load"] = bench_load(keys, args.threads, fp32, int8)
            print(json.dumps(results["load"], indent=1))
    if "footprint" in parts:
        results["footprint"] = bench_footprint()
        print(json.dumps(results["footprint"], indent=1))
    previous = json.loads(RESULTS.read_text())["results"][0] if RESULTS.exists() else {}
    write_results(RESULTS, "server", args.threads, [{**previous, **results}])

    print("\n| measure | value | target |\n|---|---|---|")
    if "overhead" in results:
        o = results["overhead"]
        print(f"| server p50 overhead, digits CNN, c=1 (binary / JSON) | {o['overhead_binary_ms']:.2f} / "
              f"{o['overhead_json_ms']:.2f} ms over raw {o['raw_ort_p50_ms']:.2f} ms | <= 1 ms |")
    if "throughput" in results:
        t = results["throughput"]
        for label, ratio in t["ratio_vs_raw_batch16"].items():
            print(f"| MiniLM int8, c=16, {label} | {t['served'][label]['per_second']:.0f} req/s = {ratio:.2f}x raw batch-16 "
                  f"({t['raw_ort_batch16_rows_per_s']:.0f} rows/s) | >= 0.85x |")
    if "load" in results:
        for label, v in results["load"].items():
            print(f"| open MiniLM {label} bundle (verify+decrypt+load+self-test) | {v['runtime_open_s'] * 1000:.0f} ms = "
                  f"{v['ratio']:.2f}x ORT session ({v['ort_session_s'] * 1000:.0f} ms) | <= 1.3x |")
            m, o = v["memory_runtime_open"], v["memory_ort_session"]
            print(f"| MiniLM {label} resident after open + 1 prediction (peak) | runtime {m['rss_mb']:.0f} MB "
                  f"({m['peak_mb']:.0f}), ORT session {o['rss_mb']:.0f} MB ({o['peak_mb']:.0f}) | |")
    if "footprint" in results:
        f = results["footprint"]
        for label in ("runtime", "runtime,text", "runtime,text,fast"):
            print(f"| edgeship[{label}] --no-compile, site-packages | {f[label]['site_packages_mb']:.1f} MB = "
                  f"ONNX Runtime alone ({f['onnxruntime_alone_mb']:.1f} MB) + {f[label]['over_onnxruntime_alone_mb']:.1f} MB "
                  f"(heavy: {', '.join(f[label]['heavy_packages_present']) or 'none'}) | runtime: <= 40 MB over |")


if __name__ == "__main__":
    main()
