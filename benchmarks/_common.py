"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


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


def machine(threads: int) -> dict:
    """The CPU a result was measured on: model, ISA flags that decide int8/bf16 kernels, threads."""
    from edgeship.core.cpu import cpu_flags, u8s8_saturates

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    flags = cpu_flags()
    wanted = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}
    return {"platform": platform.platform(), "cpu": model, "cpu_flags": sorted(flags & wanted),
            "int8_u8s8_saturates": u8s8_saturates(flags), "cores": os.cpu_count(), "threads": threads}


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
