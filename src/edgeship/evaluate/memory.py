"""Peak memory of an engine's session running a model, measured in a fresh child process.

See :mod:`edgeship._memprobe`: weights, arena and activations, without the interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["measure_peak_memory"]


def measure_peak_memory(model_path: Path, feeds: dict[str, np.ndarray], threads: int = 2,
                        engine: str = "onnxruntime", options: dict[str, str] | None = None) -> int:
    """Peak bytes the session adds to a fresh process, running ``feeds`` through the model
    (``model_path`` is an ONNX file, or the model file of another ``engine``: an IR .xml, a .tflite)."""
    with tempfile.TemporaryDirectory(prefix="edgeship-mem-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        proc = subprocess.run(
            [sys.executable, "-m", "edgeship._memprobe", *(["--engine", engine, json.dumps(options or {})] if engine != "onnxruntime" else []),
             str(model_path), str(feeds_path), str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {last}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_memory_bytes"])
