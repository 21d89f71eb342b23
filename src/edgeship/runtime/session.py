"""Runtime: a verified bundle running in ONNX Runtime, from memory.

A text model's bundle carries its tokenizer: :meth:`Runtime.predict` then also takes
``{"text": [...]}``, and :meth:`Runtime.classify` answers with labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeship.bundle.format import BundleError, matches_reference, verify_bundle
from edgeship.core.errors import DataMismatchError, EdgeshipError
from edgeship.core.rollback import record_accepted
from edgeship.core.signature import missing_and_extra, shape_fits

__all__ = ["Runtime", "RuntimeInputError", "TEXT_INPUT"]

#: the input name under which a text model takes strings (Open Inference Protocol datatype BYTES)
TEXT_INPUT = "text"


class RuntimeInputError(DataMismatchError):
    """Inputs that do not match the bundle's signature."""


def _keys(trusted_keys: Any) -> list[Any]:
    from edgeship.bundle.keys import load_public_keys

    if isinstance(trusted_keys, (str, Path)) or (isinstance(trusted_keys, list) and trusted_keys
                                                  and isinstance(trusted_keys[0], (str, Path))):
        return load_public_keys(trusted_keys)
    return list(trusted_keys)


def _check_feeds(specs: list[dict[str, Any]], inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The inputs as arrays, after checking names, dtypes and shapes against the manifest."""
    by_name = {s["name"]: s for s in specs}
    missing, extra = missing_and_extra(by_name, inputs)
    if missing or extra:
        raise RuntimeInputError(f"inputs {sorted(inputs)} do not match the model's {sorted(by_name)} "
                                f"(missing {missing}, unexpected {extra}).")
    feeds = {}
    for name, spec in by_name.items():
        array = np.asarray(inputs[name])
        if str(array.dtype) != spec["dtype"]:
            raise RuntimeInputError(f"input {name!r} has dtype {array.dtype}, the model wants {spec['dtype']}.")
        want = spec["shape"]
        if not shape_fits(want, array.shape):
            raise RuntimeInputError(f"input {name!r} has shape {list(array.shape)}, the model wants {want}.")
        feeds[name] = array
    return feeds


def _providers(manifest: dict[str, Any]) -> list[str]:
    listed = manifest.get("providers")
    return [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []


class Runtime:
    """Open with :meth:`open`; then :meth:`predict` (or :meth:`classify` for text classifiers)."""

    def __init__(self, bundle: Any, session: Any) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self._session = session
        self._head = None  # hybrid bundles: the session of the model up to the cut
        self.text = None
        if self.manifest.get("text"):
            from edgeship.runtime.text import TextEncoder

            self.text = TextEncoder(bundle.tokenizer_json, self.manifest["text"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @classmethod
    def open(
        cls,
        path: Path | str,
        trusted_keys: Any,
        decrypt_key: Any = None,
        threads: int = 2,
        state_dir: Path | str | None = None,
        allow_downgrade: bool = False,
        record: bool = True,
        providers: list[str] | None = None,
    ) -> "Runtime":
        """Verify (signature, digests, version, decryption), load from memory, run the self-test.

        With ``state_dir``, a version lower than the one accepted there is refused, and this one
        is recorded as accepted after its self-test (``record=False`` leaves recording to the
        caller: the update agent records a version only when it commits it). ``providers`` (default:
        the manifest's, from the device profile the bundle was packed for) are tried in order, the CPU last."""
        from edgeship.bundle.keys import load_content_key
        from edgeship.engines import get_engine

        key = load_content_key(decrypt_key) if isinstance(decrypt_key, (str, Path)) else decrypt_key
        bundle = verify_bundle(path, _keys(trusted_keys), key, state_dir, allow_downgrade, record=False)
        engine = get_engine(bundle.manifest.get("engine"))  # the device needs only this engine's extra
        options = bundle.manifest.get("engine_options")
        try:  # from memory; ONNX Runtime keeps no copy of the model bytes (see edgeship.core.session)
            session = engine.open(bundle.model_bytes, threads, options if isinstance(options, dict) else {},
                                  providers or _providers(bundle.manifest))
        except EdgeshipError as exc:  # the engine is missing, or refused the model with a reason
            raise BundleError(f"{bundle.name} v{bundle.version} is authentic but {exc}") from None
        except Exception as exc:  # verified, but this version of the engine cannot load it
            from importlib import import_module

            made_by = bundle.manifest.get("runtime", {}).get(engine.package, "?")
            here = getattr(import_module(engine.package), "__version__", "?")
            raise BundleError(
                f"{bundle.name} v{bundle.version} is authentic but {engine.label} {here} cannot load it "
                f"({str(exc).splitlines()[0][:200]}); it was packed with {engine.label} {made_by}: install that "
                "version or newer" + (", or repack with --no-preoptimize." if engine.name == "onnxruntime" else ".")
            ) from None
        head = None
        if bundle.head_bytes:
            from edgeship.core.session import open_session

            try:
                head = open_session(bundle.head_bytes, threads)
            except Exception as exc:
                raise BundleError(f"{bundle.name} v{bundle.version} is authentic but its head does not load: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        return cls._finish(bundle, session, state_dir, record, head)

    @classmethod
    def _finish(cls, bundle: Any, session: Any, state_dir: Path | str | None, record: bool,
                head: Any = None) -> "Runtime":
        runtime = cls(dataclasses.replace(bundle, model_bytes=b"", head_bytes=None), session)
        runtime._head = head
        runtime.self_test()
        if state_dir is not None and record:  # accepted only after the self-test passed
            record_accepted(state_dir, bundle.name, bundle.version)
        return runtime

    def self_test(self) -> None:
        inputs = {k.removeprefix("input."): v for k, v in self.bundle.selftest.items() if k.startswith("input.")}
        expected = self.bundle.selftest["expected"]
        got = self._session.run(None, inputs)[0]
        tol = self.manifest["selftest"]
        if not matches_reference(got, expected, tol):
            raise BundleError(
                f"{self.manifest['name']} v{self.manifest['version']} failed its self-test: the output differs from "
                f"the packed reference (max |diff| {float(np.abs(got - expected).max()):.3g}); not loading it."
            )
        if self.text is not None:
            try:
                self.text.check()
            except Exception as exc:
                raise BundleError(f"{self.manifest['name']} v{self.manifest['version']}: {exc}") from None

    def encode_text(self, texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
        """The model's token inputs for ``texts`` (text bundles only)."""
        if self.text is None:
            raise RuntimeInputError(f"{self.manifest['name']} takes tensors, not text: it was packed without a "
                                    "tokenizer (pack --tokenizer).")
        encoded = self.text.encode(texts)  # once: every input (ids, mask, types) comes from the same encodings
        return {s["name"]: encoded[s["name"]].astype(s["dtype"]) for s in self.manifest["inputs"]}

    def predict(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes against the manifest, then run. A text bundle also takes
        ``{"text": [str, ...]}`` and tokenizes it on the device."""
        if self.text is not None and set(inputs) == {TEXT_INPUT}:
            inputs = self.encode_text(list(np.asarray(inputs[TEXT_INPUT], dtype=object).reshape(-1)))
        outputs = self._session.run(None, _check_feeds(self.manifest["inputs"], inputs))
        return {spec["name"]: out for spec, out in zip(self.manifest["outputs"], outputs)}

    @property
    def hybrid(self) -> dict[str, Any] | None:
        """A hybrid bundle's plan (cut tensors, wire encoding, the upstream's tail model), else None."""
        plan = self.manifest.get("hybrid")
        return plan if isinstance(plan, dict) else None

    def run_head(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """A hybrid bundle: the tensors at the cut (the inputs themselves when the cut is before
        the first layer), to send upstream."""
        feeds = _check_feeds(self.manifest["inputs"], inputs)
        if self.hybrid is None:
            raise RuntimeInputError(f"{self.manifest['name']} is not a hybrid bundle (pack --split).")
        if self._head is None:
            return feeds
        outputs = self._head.run(None, feeds)
        return {o.name: out for o, out in zip(self._head.get_outputs(), outputs)}

    def classify(self, texts: Sequence[str], top: int = 1, output: str | None = None) -> list[list[tuple[str, float]]]:
        """For each text, the ``top`` (label, score) pairs of the classifier's scores, best first."""
        name = output or self.manifest["outputs"][0]["name"]
        return self.rank(self.predict({TEXT_INPUT: list(texts)})[name], top)

    def rank(self, scores: np.ndarray, top: int = 1) -> list[list[tuple[str, float]]]:
        """For each row of [batch, classes] scores, the ``top`` (label, score) pairs, best first (the
        class index stands in for a label the bundle does not have)."""
        from edgeship.runtime.text import top_classes

        labels = self.labels
        return [[(labels[i] if i < len(labels) else str(i), float(row[i])) for i in indices]
                for row, indices in zip(scores, top_classes(scores, top))]
