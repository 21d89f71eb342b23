"""Pack a model (or an `optimize` output folder) into a signed, optionally encrypted bundle.

A text model's bundle also carries its tokenizer (``tokenizer.json``) and class labels, so the
device takes text in and answers with labels using only the ``tokenizers`` library.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.bundle.format import FORMAT, FORMAT_VERSION, NONCE_BYTES, aad, matches_reference, selftest_tolerance
from edgeship.bundle.keys import load_content_key, load_private_key
from edgeship.core.files import atomic_writer
from edgeship.core.names import Bundle, check_name
from edgeship.core.report import ModelInfo, ReportHead
from edgeship.core.session import Optimization, open_session
from edgeship.errors import ConfigError, InvalidModelError

__all__ = ["pack", "reference_input", "tail_bundle_path"]


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


@dataclass(frozen=True)
class _Source:
    """The .onnx to pack and what is known about it (from an optimize report, or nothing)."""

    path: Path
    recipe: str | None = None
    lineage: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    info: ModelInfo = ModelInfo()
    engine: str = "onnxruntime"
    artifact: Path | None = None  # another engine's model made from ``path`` (an IR, a .tflite): the model that ships


def _source(model: Any) -> _Source:
    path = Path(model)
    if path.is_dir():
        report_file, best = path / "report.json", path / "best.onnx"
        if not report_file.is_file():
            raise InvalidModelError(f"{str(path)!r} is not an optimize output folder (needs report.json and best.onnx).")
        if not best.is_file():
            raise InvalidModelError(
                f"no candidate in {str(path)!r} passed the gate, so it has no best.onnx (its report says why each "
                "lost); pack the model you optimized instead, or re-run optimize with a looser budget.")
        from edgeship.engines import DEFAULT_ENGINE, ENGINES

        head = ReportHead.from_file(report_file)
        engine = next((s["pass"] for s in reversed(head.lineage) if s.get("pass") in ENGINES), DEFAULT_ENGINE)
        artifact = path / f"best{ENGINES[engine].suffix}"  # best.onnx is the graph another engine's model came from
        if engine != DEFAULT_ENGINE and not artifact.is_file():
            raise InvalidModelError(f"{str(path)!r}: the best runs on {ENGINES[engine].label} but {artifact.name} "
                                    "is missing; re-run optimize.")
        return _Source(best, head.best, head.lineage, head.metrics, head.model_info, engine,
                       artifact if engine != DEFAULT_ENGINE else None)
    if not path.is_file():
        raise InvalidModelError(f"model not found: {str(path)!r}; give an .onnx or .tflite file or an optimize "
                                "output folder.")
    if path.suffix.lower() == ".tflite":  # already LiteRT's model: it ships as it is
        return _Source(path, engine="litert", artifact=path)
    return _Source(path)


_ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
SELFTEST_TEXT = "edgeship checks that the device tokenizes as the build did."


def text_settings(tokenizer: Path, inputs: list[Any], max_length: int) -> tuple[bytes, dict[str, Any]]:
    """(tokenizer.json bytes, the manifest's ``text`` entry) for a model whose inputs are token ids.

    ``tokenizer`` is a Hugging Face model directory (its fast tokenizer is exported) or a
    ``tokenizer.json``. The device pads and truncates every text to ``max_length`` tokens, so
    requests batch together. The manifest keeps one text and its ids: the device checks that
    its ``tokenizers`` library reproduces them before it serves text.
    """
    from tokenizers import Tokenizer

    names = [s.name for s in inputs]
    unknown = [n for n in names if n not in _ENCODING_FIELDS]
    if unknown:
        raise ConfigError(f"--tokenizer: the model takes {unknown}, which a tokenizer does not produce; "
                          f"text input needs inputs among {sorted(_ENCODING_FIELDS)}.")
    if not 1 <= max_length <= 8192:
        raise ConfigError(f"--max-length must be 1..8192 tokens, got {max_length}.")
    path = Path(tokenizer)
    if path.is_dir():
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise ConfigError(f"the tokenizer in {str(path)!r} has no fast (tokenizers) version to ship.")
        data, pad_token, pad_id = hf.backend_tokenizer.to_str().encode(), hf.pad_token, hf.pad_token_id
    elif path.is_file():
        data = path.read_bytes()
        parsed = Tokenizer.from_str(data.decode())
        pad_token = next((t for t in ("[PAD]", "<pad>") if parsed.token_to_id(t) is not None), None)
        pad_id = parsed.token_to_id(pad_token) if pad_token else None
    else:
        raise ConfigError(f"--tokenizer {str(path)!r} is neither a Hugging Face directory nor a tokenizer.json.")
    if pad_id is None:
        raise ConfigError(f"the tokenizer {str(path)!r} has no padding token; texts in one batch cannot be padded.")
    settings = {"max_length": int(max_length), "pad_id": int(pad_id), "pad_token": str(pad_token),
                "inputs": {n: _ENCODING_FIELDS[n] for n in names}}
    from edgeship.runtime.text import TextEncoder  # the device's own encoder checks itself against it

    ids = TextEncoder(data, settings).encode([SELFTEST_TEXT])["input_ids"][0]
    settings["selftest"] = {"text": SELFTEST_TEXT, "input_ids": ids.tolist()}
    return data, settings


def _hf_info(model_dir: Path) -> ModelInfo:
    """Task and class names from a Hugging Face directory's config.json (its head and id2label)."""
    from edgeship.importers.huggingface import head_for

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelInfo()
    try:
        _, head = head_for(config.get("architectures"), model_dir)
    except InvalidModelError:
        return ModelInfo()
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()} if head.labelled else {}
    return ModelInfo(head.task, tuple(id2label[i] for i in sorted(id2label)))


def _selftest(loaded: Any, text: dict[str, Any] | None, tokenizer_json: bytes | None) -> dict[str, np.ndarray]:
    """The self-test input: tokens of a real text for text models, else a deterministic tensor."""
    if text is None:
        return reference_input(loaded.inputs)
    from edgeship.runtime.text import TextEncoder

    feeds = TextEncoder(tokenizer_json, text).encode([SELFTEST_TEXT])
    return {s.name: feeds[s.name].astype(s.dtype) for s in loaded.inputs}


def _preoptimize(onnx_path: Path, feeds: dict[str, np.ndarray], expected: np.ndarray,
                 tolerance: dict[str, float]) -> tuple[bytes | None, str]:
    """The model with ONNX Runtime's portable (extended) graph optimizations already applied.

    Loading it on the device then skips most of the graph rewriting (MiniLM int8: 36 ms instead
    of 58 ms to create the session here). Layout optimizations, which depend on the device's
    CPU, are left to the device. Returns (bytes, note), or (None, why not).
    """
    with tempfile.TemporaryDirectory(prefix="edgeship-preopt-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        try:
            open_session(onnx_path, threads=1, optimization=Optimization.EXTENDED, optimized_model_path=optimized)
            data = optimized.read_bytes()
            if len(list(Path(tmp).iterdir())) > 1:
                return None, "not pre-optimized: the optimized graph needs external data files"
            got = open_session(data, threads=1).run(None, feeds)[0]
        except Exception as exc:  # ONNX Runtime could not optimize or reload it: pack the model as given
            return None, f"not pre-optimized: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if not matches_reference(got, expected, tolerance):
        return None, "not pre-optimized: the optimized graph's output differed from the model's"
    return data, "extended"


def _version(package: str) -> str:
    from importlib import import_module

    return str(getattr(import_module(package), "__version__", "?"))


def _check_name_version(name: str, version: int) -> None:
    check_name(name, "bundle name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"--version must be a whole number >= 1 that only ever increases, got {version!r}.")


def _write(out: Path, manifest: dict[str, Any], members: dict[str, bytes], key: Any) -> None:
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    with atomic_writer(out) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(Bundle.MANIFEST, manifest_bytes)
        archive.writestr(Bundle.SIGNATURE, key.sign(manifest_bytes))
        for member, data in members.items():
            archive.writestr(member, data)


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
    tokenizer: Path | str | None = None,
    max_length: int | None = None,
    split: Path | str | None = None,
) -> Path:
    """Write a .edgeship bundle; returns its path. The file appears only when complete.

    With ``preoptimize`` (the default) the bundle holds the graph after ONNX Runtime's portable
    optimizations, checked against the model on the self-test input; the manifest records the
    ONNX Runtime version that made it. ``labels`` (else the model's id2label, from an optimize
    folder) name the classes. ``tokenizer`` (a Hugging Face directory or tokenizer.json; from an
    optimize folder of a Hugging Face model, its own) lets the device take text, padded or cut
    to ``max_length`` tokens (default: the length the model was evaluated at, else 128).

    ``split`` (a folder from ``edgeship split --out``) makes a hybrid bundle: the whole model (the
    device's fallback), its head and the plan; the tail is packed beside it as
    ``<out>-tail.edgeship`` (model name ``<name>-tail``), for the upstream server.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from edgeship.engines import get_engine
    from edgeship.importers.onnx_file import load_onnx
    from edgeship.importers.tflite_file import load_tflite

    _check_name_version(name, version)
    providers: list[str] = []
    if target is not None and target != "host":
        from edgeship.targets import load_profile

        profile = load_profile(target)  # a typo is refused here, not shipped in the manifest
        target, providers = profile.id, list(profile.providers)
    key = load_private_key(sign_key)
    content_key = load_content_key(encrypt_key) if encrypt_key else None
    source = _source(model)
    loaded = load_tflite(source.path) if source.path.suffix.lower() == ".tflite" else load_onnx(source.path)
    source_bytes = source.path.read_bytes()
    if len(loaded.files) > 1:
        raise InvalidModelError("models with external data files cannot be bundled yet; save the weights inline.")
    tokenizer = tokenizer or source.info.tokenizer_dir
    tokenizer_json, text, info = None, None, source.info
    if tokenizer is not None and not info.task and Path(tokenizer).is_dir():
        info = _hf_info(Path(tokenizer))
    if tokenizer is not None:
        tokenizer_json, text = text_settings(Path(tokenizer), loaded.inputs,
                                             max_length or source.info.text_max_length or 128)
    feeds = _selftest(loaded, text, tokenizer_json)
    engine = get_engine(source.engine)
    options = engine.options_from(source.lineage)
    if source.artifact is not None:
        expected = engine.open(source.artifact, 1, options).run(None, feeds)[0]
    else:
        expected = loaded.session(1).run(None, feeds)[0]
    tolerance = selftest_tolerance(expected)
    model_bytes, optimization = None, "none (--no-preoptimize)"
    if source.artifact is not None:
        model_bytes, optimization = engine.model_bytes(source.artifact), f"{engine.label} (the engine's own format)"
    elif preoptimize:
        model_bytes, optimization = _preoptimize(source.path, feeds, expected, tolerance)
    model_bytes = model_bytes if model_bytes is not None else source_bytes
    selftest = io.BytesIO()
    np.savez(selftest, **{f"input.{k}": v for k, v in feeds.items()}, expected=expected)
    members = {Bundle.SELFTEST: selftest.getvalue()}
    if tokenizer_json is not None:
        members[Bundle.TOKENIZER] = tokenizer_json
    encryption = None
    if content_key is not None:
        nonce = os.urandom(NONCE_BYTES)  # fresh for every bundle
        members[Bundle.model_member(True, engine.member)] = AESGCM(content_key).encrypt(nonce, model_bytes, aad(name, version))
        encryption = {"alg": "AES-256-GCM", "nonce": nonce.hex(), "aad": "name+version"}
    else:
        members[Bundle.model_member(False, engine.member)] = model_bytes
    hybrid = None
    if split is not None:
        if source.artifact is not None or engine.name != "onnxruntime":
            raise ConfigError("a hybrid bundle splits an ONNX model for ONNX Runtime; pack the .onnx that was split.")
        hybrid, head_member, head_bytes = _hybrid(Path(split), name, loaded)
        if content_key is not None:
            head_nonce = os.urandom(NONCE_BYTES)
            hybrid["head_nonce"] = head_nonce.hex()
            head_bytes = AESGCM(content_key).encrypt(head_nonce, head_bytes, aad(name, version))
        if head_member:
            members[Bundle.model_member(content_key is not None, Bundle.HEAD)] = head_bytes
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": int(version),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [s.to_dict() for s in loaded.inputs],
        "outputs": [s.to_dict() for s in loaded.outputs],
        "task": info.task,
        "labels": list(labels) if labels else list(info.labels),
        "text": text,
        "target": target,
        "providers": providers,  # the device's execution providers, in order (the runtime falls back to the CPU)
        "recipe": source.recipe,
        "lineage": source.lineage,
        "metrics": source.metrics,
        "selftest": tolerance,
        "encryption": encryption,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "source_model_sha256": hashlib.sha256(source_bytes).hexdigest(),
        "engine": engine.name,
        "engine_options": options,
        "runtime": {engine.package: _version(engine.package), "graph_optimization": optimization},
        "members": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in members.items()},
    }
    if hybrid is not None:
        manifest["hybrid"] = hybrid
    out = Path(out)
    if hybrid is not None:  # the tail first: the device bundle appears only with its upstream half
        pack(Path(split) / "tail.onnx", hybrid["tail_model"], version, sign_key, tail_bundle_path(out), encrypt_key,
             preoptimize=preoptimize)
    _write(out, manifest, members, key)
    return out


def tail_bundle_path(out: Path | str) -> Path:
    """Where :func:`pack` writes a hybrid bundle's tail: beside it, ``<stem>-tail.edgeship``."""
    out = Path(out)
    return out.with_name(out.stem + "-tail" + out.suffix)


def _total_ms(plan: dict[str, Any], row: str) -> float | None:
    value = (plan.get(row) or {}).get("total_ms")
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def _hybrid(folder: Path, name: str, loaded: Any) -> tuple[dict[str, Any], bool, bytes]:
    """(the manifest's hybrid plan, whether there is a head, its bytes) from an ``edgeship split`` folder."""
    plan_file = folder / "split.json"
    if not plan_file.is_file() or not (folder / "tail.onnx").is_file():
        raise ConfigError(f"{str(folder)!r} is not an `edgeship split --out` folder (split.json and tail.onnx); "
                          "run edgeship split first.")
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        chosen, wire = plan["chosen"], str(plan["wire"])
        position, cut = int(chosen["position"]), [str(t) for t in chosen["tensors"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{str(plan_file)!r} is not a split plan ({type(exc).__name__}: {exc}).") from None
    if chosen.get("where") == "device":
        raise ConfigError("the split plan runs everything on the device: pack the model alone, without --split.")
    head = folder / "head.onnx"
    head_bytes = head.read_bytes() if position > 0 else b""
    if position > 0:
        session = open_session(head_bytes, threads=1)
        if [i.name for i in session.get_inputs()] != [s.name for s in loaded.inputs] or \
                sorted(o.name for o in session.get_outputs()) != sorted(cut):
            raise ConfigError(f"{str(head)!r} does not take the model's inputs and give the plan's cut {cut}; "
                              "split this model again.")
    hybrid = {"position": position, "cut": cut, "wire": wire, "tail_model": f"{name}-tail",
              "device": plan.get("device"), "link": plan.get("link"),
              "estimate_ms": {k: chosen.get(k) for k in ("head_ms", "transfer_ms", "tail_ms", "total_ms")},
              # where the device starts before it has measured anything (runtime.hybrid.RoutePolicy)
              "estimates_ms": {"device": _total_ms(plan, "device_only"), "upstream": _total_ms(plan, "cloud_only")}}
    return hybrid, position > 0, head_bytes
