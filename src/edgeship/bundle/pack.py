"""Pack a model (or an `optimize` output folder) into a signed, optionally encrypted bundle."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.bundle.format import FORMAT, FORMAT_VERSION, NONCE_BYTES, aad
from edgeship.bundle.keys import load_content_key, load_private_key
from edgeship.core.files import atomic_writer
from edgeship.errors import ConfigError, InvalidModelError

__all__ = ["pack", "reference_input"]


def reference_input(inputs: list[Any], seq_len: int = 8) -> dict[str, np.ndarray]:
    """A deterministic input for the self-test: batch 1, other dynamic dims ``seq_len``."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in inputs:
        dims = [d if isinstance(d, int) else (1 if i == 0 else seq_len) for i, d in enumerate(spec.shape)]
        if spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        else:
            feeds[spec.name] = np.ones(dims, dtype=spec.dtype)
    return feeds


def _source(model: Any) -> tuple[Path, dict[str, Any]]:
    """(the .onnx to pack, facts from an optimize report: lineage and metrics)."""
    path = Path(model)
    if path.is_dir():
        report_file, best = path / "report.json", path / "best.onnx"
        if not report_file.is_file():
            raise InvalidModelError(f"{str(path)!r} is not an optimize output folder (needs report.json and best.onnx).")
        if not best.is_file():
            raise InvalidModelError(
                f"no candidate in {str(path)!r} passed the gate, so it has no best.onnx (its report says why each "
                "lost); pack the model you optimized instead, or re-run optimize with a looser budget.")
        report = json.loads(report_file.read_text())
        chosen = next((c for c in report["candidates"] if c["recipe"] == report["best"]), None)
        return best, {"recipe": report["best"], "lineage": chosen["lineage"] if chosen else [],
                      "metrics": chosen["metrics"] if chosen else {}, "source_model": report.get("model")}
    if not path.is_file():
        raise InvalidModelError(f"model not found: {str(path)!r}; give an .onnx file or an optimize output folder.")
    return path, {"recipe": None, "lineage": [], "metrics": {}}


def _preoptimize(onnx_path: Path, feeds: dict[str, np.ndarray], expected: np.ndarray,
                 tolerance: dict[str, float]) -> tuple[bytes | None, str]:
    """The model with ONNX Runtime's portable (extended) graph optimizations already applied.

    Loading it on the device then skips most of the graph rewriting (MiniLM int8: 36 ms instead
    of 58 ms to create the session here). Layout optimizations, which depend on the device's
    CPU, are left to the device. Returns (bytes, note), or (None, why not).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeship-preopt-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            data = Path(so.optimized_model_filepath).read_bytes()
            if len(list(Path(tmp).iterdir())) > 1:
                return None, "not pre-optimized: the optimized graph needs external data files"
            got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        except Exception as exc:  # ONNX Runtime could not optimize or reload it: pack the model as given
            return None, f"not pre-optimized: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=tolerance["rtol"], atol=tolerance["atol"]):
        return None, "not pre-optimized: the optimized graph's output differed from the model's"
    return data, "extended"


def pack(
    model: Any,
    name: str,
    version: int,
    sign_key: Path | str,
    out: Path | str,
    encrypt_key: Path | str | None = None,
    target: str | None = None,
    labels: list[str] | None = None,
    preoptimize: bool = True,
) -> Path:
    """Write a .edgeship bundle; returns its path. The file appears only when complete.

    With ``preoptimize`` (the default) the bundle holds the graph after ONNX Runtime's portable
    optimizations, checked against the model on the self-test input; the manifest records the
    ONNX Runtime version that made it.
    """
    import onnxruntime as ort
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from edgeship.importers.onnx_file import load_onnx

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bundle name {name!r} must be a plain non-empty name, e.g. digits-cnn.")
    if int(version) != version or version < 1:
        raise ConfigError(f"--version must be a whole number >= 1 that only ever increases, got {version!r}.")
    key = load_private_key(sign_key)
    content_key = load_content_key(encrypt_key) if encrypt_key else None
    onnx_path, facts = _source(model)
    loaded = load_onnx(onnx_path)  # checked like any import
    source_bytes = onnx_path.read_bytes()
    if len(loaded.files) > 1:
        raise InvalidModelError("models with external data files cannot be bundled yet; save the weights inline.")
    feeds = reference_input(loaded.inputs)
    expected = loaded.session(1).run(None, feeds)[0]
    tolerance = {"rtol": 1e-3, "atol": float(1e-3 * np.abs(expected).max() + 1e-5)}
    model_bytes, optimization = None, "none (--no-preoptimize)"
    if preoptimize:
        model_bytes, optimization = _preoptimize(onnx_path, feeds, expected, tolerance)
    model_bytes = model_bytes if model_bytes is not None else source_bytes
    selftest = io.BytesIO()
    np.savez(selftest, **{f"input.{k}": v for k, v in feeds.items()}, expected=expected)
    members = {"selftest.npz": selftest.getvalue()}
    encryption = None
    if content_key is not None:
        nonce = os.urandom(NONCE_BYTES)  # fresh for every bundle
        members["model.onnx.enc"] = AESGCM(content_key).encrypt(nonce, model_bytes, aad(name, version))
        encryption = {"alg": "AES-256-GCM", "nonce": nonce.hex(), "aad": "name+version"}
    else:
        members["model.onnx"] = model_bytes
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": int(version),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [s.to_dict() for s in loaded.inputs],
        "outputs": [s.to_dict() for s in loaded.outputs],
        "labels": labels or [],
        "target": target,
        "recipe": facts["recipe"],
        "lineage": facts["lineage"],
        "metrics": facts["metrics"],
        "selftest": tolerance,
        "encryption": encryption,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "source_model_sha256": hashlib.sha256(source_bytes).hexdigest(),
        "runtime": {"onnxruntime": ort.__version__, "graph_optimization": optimization},
        "members": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in members.items()},
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    out = Path(out)
    with atomic_writer(out) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.json", manifest_bytes)
        archive.writestr("manifest.sig", key.sign(manifest_bytes))
        for member, data in members.items():
            archive.writestr(member, data)
    return out
