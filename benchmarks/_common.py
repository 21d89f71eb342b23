"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


class TorchSession:
    """Gives a torch module the ``run(None, feeds)`` shape of an ORT session, for timing."""

    def __init__(self, module: Any, input_names: list[str], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.module, self.names, self.torch = module.eval(), input_names, torch

    def run(self, _outputs: Any, feeds: dict) -> list:
        with self.torch.inference_mode():
            out = self.module(*[self.torch.from_numpy(feeds[n]) for n in self.names])
        return [out.numpy()]


def write_results(path: Path, name: str, threads: int, results: list[dict]) -> None:
    payload = {
        "benchmark": name,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": threads},
        "batch_size": 1,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def time_sessions(ort_sessions: list, torch_session: Any, feeds: dict, **kwargs: Any) -> tuple[list[dict], dict]:
    """Latency of ONNX Runtime sessions, interleaved among themselves, then PyTorch eager alone.

    PyTorch's OpenMP workers busy-wait after each call and take the cores from whatever runs
    next, so timing it in the same rounds would slow the ONNX Runtime sessions measured after it.
    """
    from edgeship.evaluate import measure_latencies

    ort = measure_latencies(ort_sessions, feeds, **kwargs)
    (eager,) = measure_latencies([torch_session], feeds, **kwargs)
    return ort, eager
