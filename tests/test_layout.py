"""The build side and the device side meet only in edgeship.core: an import-graph check."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeship"
#: what runs on a device (edgeship[runtime]); bundle/pack.py is the build side's bundle writer
DEVICE = [*sorted((SRC / "runtime").glob("*.py")), *sorted((SRC / "ota").glob("*.py")),
          *sorted((SRC / "engines").glob("*.py")),
          SRC / "bundle" / "format.py", SRC / "bundle" / "keys.py", SRC / "bundle" / "__init__.py"]
DEVICE_MAY_IMPORT = ("edgeship.core", "edgeship.bundle.format", "edgeship.bundle.keys", "edgeship.bundle",
                     "edgeship.runtime", "edgeship.ota", "edgeship.engines", "edgeship.errors")
CORE_MAY_IMPORT = ("edgeship.core",)


def _edgeship_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeship"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("edgeship"))
    return names


def _outside(path: Path, allowed: tuple[str, ...]) -> set[str]:
    """Imports outside ``allowed``; the package root itself (``edgeship.__version__``) is light and allowed."""
    return {m for m in _edgeship_imports(path)
            if m != "edgeship" and not any(m == a or m.startswith(a + ".") for a in allowed)}


def test_device_side_imports_only_core_and_device_modules():
    bad = {str(p.relative_to(SRC)): sorted(_outside(p, DEVICE_MAY_IMPORT)) for p in DEVICE}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_core_imports_nothing_but_core():
    bad = {str(p.relative_to(SRC)): sorted(_outside(p, CORE_MAY_IMPORT)) for p in (SRC / "core").glob("*.py")}
    assert not {k: v for k, v in bad.items() if v}, bad
