"""Benchmark: what each engine costs a device to install and to load.

For each engine's device package (the versions installed here), ``pip install --target`` into an
empty folder with its dependencies, and measure the bytes on disk, with and without numpy (which
every engine and edgeship itself need). Then, in a fresh process, the resident memory that
importing the engine adds (before any model). Writes benchmarks/results/footprint.json and prints
a markdown table for the README.

    python benchmarks/bench_footprint.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

from edgeship.engines import ENGINES  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "footprint.json"
DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai-edge-litert"}
_IMPORT_RSS = """
import sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
import numpy
before = rss()
import {module}
print(rss() - before)
"""


def _tree_bytes(root: Path) -> dict[str, int]:
    """Bytes on disk per top-level entry (a package or its .dist-info)."""
    sizes: dict[str, int] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(root).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
    return sizes


def measure(engine: str) -> dict:
    dist = DISTRIBUTIONS[engine]
    pinned = f"{dist}=={version(dist)}"
    with tempfile.TemporaryDirectory(prefix="edgeship-footprint-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", tmp, pinned],
                       check=True, capture_output=True, text=True)
        sizes = _tree_bytes(Path(tmp))
    numpy_bytes = sum(v for k, v in sizes.items() if k.split("-")[0].split(".")[0] in ("numpy", "numpy.libs"))
    total = sum(sizes.values())
    rss = int(subprocess.run([sys.executable, "-c", _IMPORT_RSS.format(module=ENGINES[engine].package)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:4]
    return {"engine": engine, "distribution": pinned, "install_bytes": total, "install_bytes_without_numpy": total - numpy_bytes,
            "import_rss_bytes": rss, "largest": {k: v for k, v in largest}}


def main() -> None:
    results = [measure(engine) for engine in DISTRIBUTIONS]
    ort = next(r for r in results if r["engine"] == "onnxruntime")
    for r in results:
        r["install_ratio_vs_onnxruntime"] = r["install_bytes_without_numpy"] / ort["install_bytes_without_numpy"]
    write_results(RESULTS, "footprint", 1, results)
    print("| engine | device package | install (without numpy) | vs ONNX Runtime | import adds (RSS) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {ENGINES[r['engine']].label} | {r['distribution']} | {r['install_bytes_without_numpy'] / 2**20:.0f} MiB | "
              f"{r['install_ratio_vs_onnxruntime']:.2f}x | {r['import_rss_bytes'] / 2**20:.0f} MiB |")
    print(f"\nwritten: {RESULTS}")
    print(json.dumps({r["engine"]: r["largest"] for r in results}))


if __name__ == "__main__":
    main()
