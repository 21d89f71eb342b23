"""Child-process probe: peak memory an engine's session adds to a fresh process.

Imports only numpy and the engine's library. It reads the resident set before the session, then
creates the session and runs the feeds; the high-water mark ``VmHWM`` (which, unlike
``ru_maxrss``, starts afresh at ``execve``) minus the resident set before is the result.
Usage: ``python -m edgeship._memprobe MODEL.onnx FEEDS.npz THREADS`` -> one JSON line.
A generative model: ``python -m edgeship._memprobe --llm FOLDER CONTEXT`` fills ``CONTEXT`` tokens
(a prompt, then 16 generated) through ONNX Runtime GenAI; another engine (edgeship.engines):
``python -m edgeship._memprobe --engine NAME OPTIONS_JSON MODEL FEEDS.npz THREADS``.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def probe(model_path: str, feeds_path: str, threads: int, engine: str = "onnxruntime",
          options: dict[str, str] | None = None) -> dict[str, int]:
    with np.load(feeds_path, allow_pickle=False) as archive:
        feeds = {k: archive[k] for k in archive.files}
    from importlib import import_module

    from edgeship.engines import get_engine

    chosen = get_engine(engine)
    import_module(chosen.package)  # imported before the baseline: the library is not the model's memory
    before = _status_kib("VmRSS") * 1024
    session = chosen.open(model_path, threads, options)
    for _ in range(3):
        session.run(None, feeds)
    peak = _status_kib("VmHWM") * 1024
    return {"peak_memory_bytes": max(0, peak - before), "process_peak_rss_bytes": peak}


def probe_llm(folder: str, context: int) -> dict[str, int]:
    import onnxruntime_genai  # noqa: F401 - the library is not the model's memory

    from edgeship.engines.ort_genai import GenAIModel

    before = _status_kib("VmRSS") * 1024
    model = GenAIModel(folder)
    context = min(context, model.context_length)
    prompt = (model.encode("The quick brown fox jumps over the lazy dog. ") * context)[: max(1, context - 16)]
    model.timed(prompt, context - len(prompt))
    peak = _status_kib("VmHWM") * 1024
    return {"peak_memory_bytes": max(0, peak - before), "process_peak_rss_bytes": peak, "context": context}


if __name__ == "__main__":
    if sys.argv[1] == "--llm":
        print(json.dumps(probe_llm(sys.argv[2], int(sys.argv[3]))))
    elif sys.argv[1] == "--engine":
        print(json.dumps(probe(sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[2], json.loads(sys.argv[3]))))
    else:
        print(json.dumps(probe(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
