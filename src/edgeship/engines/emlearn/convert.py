"""scikit-learn trees and MLPs to C through emlearn, checked by compiling that C here.

- :func:`to_c` turns a fitted estimator into emlearn's C (trees inline, in float; MLPs as
  ``eml_net`` layers) with one entry point, ``<name>_predict(const float *features, int32_t n)``.
- :class:`HostBuild` compiles that C with gcc into a shared library and runs it through ctypes:
  the accuracy it gives is the firmware code's, not scikit-learn's.
- :func:`c_footprint` compiles it with ``-Os`` and reads the object's sections: flash is code and
  constants, RAM its static buffers (plus the caller's feature array). The host is x86-64; a
  Cortex-M's Thumb-2 code differs in size, the constants (thresholds, weights) do not.
- :func:`export_classic` writes the header, the emlearn headers it includes and a minimal
  ``main.c``, and checks the result against every microcontroller profile.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import ConfigError, InvalidModelError
from edgeship.core.files import atomic_write_text

__all__ = ["MODELS", "CModel", "to_c", "HostBuild", "c_footprint", "classic_fit", "export_classic",
           "export_function", "CYCLES_PER_NODE"]

#: estimators emlearn converts that edgeship takes, and how
MODELS = {"DecisionTreeClassifier": "trees", "RandomForestClassifier": "trees", "ExtraTreesClassifier": "trees",
          "MLPClassifier": "net"}
_ACTIVATIONS = {"relu", "tanh", "logistic", "identity"}  # eml_net's (emlearn/net.py)
#: cycles per tree node visited (load a feature, compare, branch): an assumption, not a measurement
CYCLES_PER_NODE = 5
_CWD_LOCK = threading.Lock()  # the working directory is the process's: one conversion at a time
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _emlearn() -> Any:
    """emlearn, imported without its side effect: it sets numpy to raise on every floating-point
    error (np.seterr(all='raise')), which would break unrelated code in this process."""
    saved = np.geterr()
    try:
        import emlearn
    except ImportError:
        raise ConfigError("converting scikit-learn models to C needs emlearn: pip install 'edgeship[emlearn]'.") from None
    finally:
        np.seterr(**saved)
    return emlearn


def _gcc() -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise ConfigError("checking the generated C needs a C compiler: install gcc (Debian: apt-get install gcc).")
    return gcc


@dataclass(frozen=True)
class CModel:
    """A fitted estimator as emlearn C: ``header`` defines ``<name>_predict``."""

    name: str
    kind: str  # "trees" or "net"
    header: str
    n_features: int
    classes: tuple[Any, ...]
    work: int  # per inference: multiply-accumulates (net) or nodes visited on the deepest paths (trees)


def to_c(estimator: Any, name: str = "model") -> CModel:
    """emlearn's C for a fitted scikit-learn classifier; anything else is refused with what is taken."""
    kind = MODELS.get(type(estimator).__name__)
    if kind is None:
        raise InvalidModelError(f"{type(estimator).__name__} is not converted to C here; give one of "
                                f"{sorted(MODELS)} (fitted).")
    if not _NAME.match(name):
        raise ConfigError(f"the C name {name!r} must be a C identifier (letters, digits, _), e.g. 'model'.")
    if not hasattr(estimator, "n_features_in_") or not hasattr(estimator, "classes_"):
        raise InvalidModelError(f"the {type(estimator).__name__} is not fitted: call fit(X, y) first.")
    if kind == "net" and estimator.activation not in _ACTIVATIONS:
        raise InvalidModelError(f"emlearn's MLP supports activations {sorted(_ACTIVATIONS)}, got "
                                f"{estimator.activation!r}.")
    emlearn = _emlearn()
    with tempfile.TemporaryDirectory(prefix="edgeship-emlearn-") as tmp, _CWD_LOCK, contextlib.chdir(tmp):
        # emlearn compiles a test program into ./tmp of the working directory: keep that in a scratch folder
        converted = (emlearn.convert(estimator, method="inline", dtype="float") if kind == "trees"
                     else emlearn.convert(estimator))
        header_path = Path(tmp) / f"{name}.h"
        converted.save(file=str(header_path), name=name)
        header = header_path.read_text(encoding="utf-8")
    if kind == "trees":
        trees = getattr(estimator, "estimators_", [estimator])
        work = sum(int(t.get_depth()) for t in trees)
    else:
        work = sum(int(w.size) for w in estimator.coefs_)
    return CModel(name, kind, header, int(estimator.n_features_in_), tuple(estimator.classes_), work)


def _include_dir() -> Path:
    return Path(_emlearn().includedir)


class HostBuild:
    """The model's C compiled with gcc into a shared library, called through ctypes."""

    def __init__(self, model: CModel) -> None:
        self.model = model
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeship-emlearn-build-")
        root = Path(self._tmp.name)
        (root / f"{model.name}.h").write_text(model.header, encoding="utf-8")
        (root / "harness.c").write_text(
            f'#include <stdint.h>\n#include "{model.name}.h"\n'
            "int32_t edgeship_predict_rows(const float *x, int32_t rows, int32_t n, int32_t *out) {\n"
            f"  for (int32_t r = 0; r < rows; ++r) out[r] = {model.name}_predict(x + (long)r * n, n);\n"
            "  return 0;\n}\n", encoding="utf-8")
        library = root / "model.so"
        done = subprocess.run([_gcc(), "-O2", "-shared", "-fPIC", "-I", str(_include_dir()), "-o", str(library),
                               str(root / "harness.c"), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise InvalidModelError(f"emlearn's C does not compile: {done.stderr.strip().splitlines()[0]}")
        self._lib = ctypes.CDLL(str(library))
        self._lib.edgeship_predict_rows.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class labels for the rows of ``x`` (n_samples x n_features), computed by the C code."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.model.n_features:
            raise ConfigError(f"the model takes rows of {self.model.n_features} features, got shape {list(x.shape)}.")
        out = np.zeros(len(x), dtype=np.int32)
        self._lib.edgeship_predict_rows(x.ctypes.data, len(x), x.shape[1], out.ctypes.data)
        if len(out) and (out.min() < 0 or out.max() >= len(self.model.classes)):
            raise InvalidModelError(f"the C model returned class index {int(out.min())}..{int(out.max())}, outside "
                                    f"0..{len(self.model.classes) - 1}.")
        return np.asarray(self.model.classes)[out]


def c_footprint(model: CModel) -> dict[str, int]:
    """Bytes of the compiled model (``gcc -Os`` on this host): flash = code + constants + initialized
    data, RAM = initialized + zeroed data (static buffers)."""
    with tempfile.TemporaryDirectory(prefix="edgeship-emlearn-size-") as tmp:
        root = Path(tmp)
        (root / f"{model.name}.h").write_text(model.header, encoding="utf-8")
        (root / "unit.c").write_text(  # one non-static caller keeps exactly what predict uses
            f'#include <stdint.h>\n#include "{model.name}.h"\n'
            f"int32_t edgeship_entry(const float *f, int32_t n) {{ return {model.name}_predict(f, n); }}\n",
            encoding="utf-8")
        obj = root / "unit.o"
        done = subprocess.run([_gcc(), "-Os", "-c", "-fno-asynchronous-unwind-tables", "-I", str(_include_dir()),
                               "-o", str(obj), str(root / "unit.c")], capture_output=True, text=True)
        if done.returncode != 0:
            raise InvalidModelError(f"emlearn's C does not compile: {done.stderr.strip().splitlines()[0]}")
        sections = _sections(obj)
    code = sum(v for k, v in sections.items() if k.startswith(".text"))
    constants = sum(v for k, v in sections.items() if k.startswith(".rodata"))
    data = sum(v for k, v in sections.items() if k.startswith(".data"))
    zeroed = sum(v for k, v in sections.items() if k.startswith(".bss"))
    return {"code": code, "constants": constants, "data": data, "bss": zeroed}


def _sections(obj: Path) -> dict[str, int]:
    size = shutil.which("size")
    if not size:
        raise ConfigError("reading the compiled model's sections needs binutils' `size` (apt-get install binutils).")
    done = subprocess.run([size, "-A", str(obj)], capture_output=True, text=True, check=True)
    sections: dict[str, int] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = sections.get(parts[0], 0) + int(parts[1])
    return sections


def classic_fit(model: CModel, profile: Any, footprint: dict[str, int] | None = None) -> dict[str, Any]:
    """The microcontroller fit report (the same as a TFLite Micro model's) of an emlearn model."""
    from edgeship.targets.mcu_fit import device_fit

    size = footprint or c_footprint(model)
    if model.kind == "net":  # eml_net computes in float
        cycles = model.work / profile.fp32_macs_per_cycle
    else:
        cycles = model.work * CYCLES_PER_NODE
    fit = device_fit(profile, {"static buffers": size["data"] + size["bss"], "features": 4 * model.n_features},
                     {"code": size["code"], "constants": size["constants"] + size["data"]}, cycles)
    fit.update({"runs": True, "kind": model.kind, "work": model.work,
                "flash_note": "code compiled -Os for this host (x86-64); Thumb-2 code differs, constants do not"})
    return fit


@dataclass(frozen=True)
class ClassicExport:
    files: list[Path]
    fits: list[dict[str, Any]]
    accuracy: dict[str, float] | None  # on (x, y): scikit-learn's, the compiled C's, and their agreement


def export_classic(estimator: Any, out_dir: Path | str, name: str = "model", x: Any = None,
                   y: Any = None) -> ClassicExport:
    """Write ``<name>.h`` (emlearn's C), the emlearn headers it includes, and ``main.c``; with
    evaluation data ``x``, ``y``, measure the compiled C's accuracy beside scikit-learn's."""
    from edgeship.targets.mcu_fit import mcu_profiles

    model = to_c(estimator, name)
    accuracy = None
    if x is not None and y is not None:
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y)
        if len(x) != len(y) or len(x) == 0:
            raise ConfigError(f"evaluation data needs as many labels as rows, got {len(x)} rows and {len(y)} labels.")
        ours = HostBuild(model).predict(x)
        theirs = np.asarray(estimator.predict(x))
        accuracy = {"sklearn": float((theirs == y).mean()), "c": float((ours == y).mean()),
                    "agreement": float((ours == theirs).mean())}
    footprint = c_footprint(model)
    fits = [classic_fit(model, p, footprint) for p in mcu_profiles()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {f"{name}.h": model.header,
             "main.c": (f"/* Generated by edgeship export: a minimal emlearn inference. */\n#include <stdint.h>\n"
                        f'#include "{name}.h"\n\nint main(void) {{\n'
                        f"  float features[{model.n_features}] = {{0}};  /* your sensor features */\n"
                        f"  int32_t label = {name}_predict(features, {model.n_features});\n"
                        "  return label < 0;\n}\n")}
    for header in _included_headers(model.header):
        files[header] = (_include_dir() / header).read_text(encoding="utf-8")
    written = []
    for file_name, text in files.items():
        atomic_write_text(out / file_name, text)
        written.append(out / file_name)
    return ClassicExport(written, fits, accuracy)


def _included_headers(text: str) -> list[str]:
    """emlearn's own headers that ``text`` includes, transitively, so the export builds on its own."""
    root, seen, todo = _include_dir(), [], re.findall(r'#include [<"](eml_[a-z0-9_]+\.h)[>"]', text)
    while todo:
        header = todo.pop()
        if header in seen or not (root / header).is_file():
            continue
        seen.append(header)
        todo += re.findall(r'#include [<"](eml_[a-z0-9_]+\.h)[>"]', (root / header).read_text(encoding="utf-8"))
    return sorted(seen)


def export_function(spec: str, out_dir: Path | str, name: str = "model") -> ClassicExport:
    """``edgeship export MODULE:FUNCTION``: the function (the user's own code: nothing is unpickled)
    returns a fitted estimator, or ``(estimator, x_eval, y_eval)`` to measure the C's accuracy."""
    from edgeship.core.usercode import load_callable

    result = load_callable(spec, "model function", InvalidModelError)()
    if isinstance(result, tuple):
        if len(result) != 3:
            raise InvalidModelError(f"{spec} must return an estimator or (estimator, x_eval, y_eval), got a "
                                    f"{len(result)}-tuple.")
        return export_classic(result[0], out_dir, name, result[1], result[2])
    return export_classic(result, out_dir, name)
