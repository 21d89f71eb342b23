"""`import edgeship` and the measurement probe stay free of heavy frameworks."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "matplotlib", "sklearn", "onnx", "typer", "rich"]


def _modules_after(code: str) -> set[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_edgeship_is_light():
    loaded = _modules_after("import edgeship")
    assert not [m for m in HEAVY if m in loaded]


def test_memory_probe_imports_only_numpy_and_onnxruntime():
    loaded = _modules_after("import edgeship._memprobe")
    assert not [m for m in HEAVY if m in loaded]
    assert "onnxruntime" not in loaded  # imported only when the probe runs


def test_server_and_cli_import_no_training_frameworks():
    loaded = _modules_after("import edgeship.runtime.server, edgeship.cli")
    assert "fastapi" in loaded  # the check below is about the real server module
    assert not [m for m in ["torch", "transformers", "matplotlib", "sklearn", "onnx", "ray"] if m in loaded]
