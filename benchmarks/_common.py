"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeship.core.cpu import machine  # noqa: F401 - the benchmarks record the CPU through it


class TorchSession:
    """Gives a torch module the ``run(None, feeds)`` shape of an ORT session, for timing."""

    def __init__(self, module: Any, input_names: list[str], threads: int, output_names: list[str]) -> None:
        import torch

        torch.set_num_threads(threads)
        self.module, self.names, self.torch = module.eval(), input_names, torch
        self.output_names = output_names

    def get_outputs(self) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(name=n, type="tensor(float)") for n in self.output_names]

    def run(self, _outputs: Any, feeds: dict) -> list:
        with self.torch.inference_mode():
            out = self.module(*[self.torch.from_numpy(feeds[n]) for n in self.names])
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


def write_results(path: Path, name: str, threads: int, results: list[dict]) -> None:
    payload = {
        "benchmark": name,
        "machine": machine(threads),
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
