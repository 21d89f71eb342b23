"""Runtime: a verified bundle running in ONNX Runtime, from memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.bundle.format import BundleError, verify_bundle
from edgeship.errors import DataMismatchError

__all__ = ["Runtime", "RuntimeInputError"]


class RuntimeInputError(DataMismatchError):
    """Inputs that do not match the bundle's signature."""


def _keys(trusted_keys: Any) -> list[Any]:
    from edgeship.bundle.keys import load_public_keys

    if isinstance(trusted_keys, (str, Path)) or (isinstance(trusted_keys, list) and trusted_keys
                                                  and isinstance(trusted_keys[0], (str, Path))):
        return load_public_keys(trusted_keys)
    return list(trusted_keys)


class Runtime:
    """Open with :meth:`open`; then :meth:`predict`."""

    def __init__(self, bundle: Any, session: Any) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self._session = session

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
    ) -> "Runtime":
        """Verify (signature, digests, version, decryption), load from memory, run the self-test.

        With ``state_dir``, a version lower than the one accepted there is refused, and this one
        is recorded as accepted after its self-test (``record=False`` leaves recording to the
        caller: the update agent records a version only when it commits it)."""
        import onnxruntime as ort

        from edgeship.bundle.keys import load_content_key

        key = load_content_key(decrypt_key) if isinstance(decrypt_key, (str, Path)) else decrypt_key
        bundle = verify_bundle(path, _keys(trusted_keys), key, state_dir, allow_downgrade, record=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(bundle.model_bytes, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # verified, but this ONNX Runtime cannot load it
            made_by = bundle.manifest.get("runtime", {}).get("onnxruntime", "?")
            raise BundleError(
                f"{bundle.name} v{bundle.version} is authentic but ONNX Runtime {ort.__version__} cannot load it "
                f"({str(exc).splitlines()[0][:200]}); it was packed with ONNX Runtime {made_by}: install that "
                "version or newer, or repack with --no-preoptimize."
            ) from None
        # The model bytes are not needed once the session exists. onnxruntime's Python session keeps
        # them only to re-create itself for a provider fallback, which a CPU-only session without
        # fallback never does (its source marks holding them as a TODO): release both references,
        # so the decrypted model does not stay in memory beside the session (MiniLM fp32: 90 MB).
        session.disable_fallback()
        session._model_bytes = None
        bundle = dataclasses.replace(bundle, model_bytes=b"")
        runtime = cls(bundle, session)
        runtime.self_test()
        if state_dir is not None and record:  # accepted only after the self-test passed
            from edgeship.bundle.format import record_accepted

            record_accepted(state_dir, bundle.name, bundle.version)
        return runtime

    def self_test(self) -> None:
        inputs = {k.removeprefix("input."): v for k, v in self.bundle.selftest.items() if k.startswith("input.")}
        expected = self.bundle.selftest["expected"]
        got = self._session.run(None, inputs)[0]
        tol = self.manifest["selftest"]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=tol["rtol"], atol=tol["atol"]):
            raise BundleError(
                f"{self.manifest['name']} v{self.manifest['version']} failed its self-test: the output differs from "
                f"the packed reference (max |diff| {float(np.abs(got - expected).max()):.3g}); not loading it."
            )

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes against the manifest, then run."""
        specs = {s["name"]: s for s in self.manifest["inputs"]}
        missing, extra = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
        if missing or extra:
            raise RuntimeInputError(f"inputs {sorted(inputs)} do not match the model's {sorted(specs)} "
                                    f"(missing {missing}, unexpected {extra}).")
        feeds = {}
        for name, spec in specs.items():
            array = np.asarray(inputs[name])
            if str(array.dtype) != spec["dtype"]:
                raise RuntimeInputError(f"input {name!r} has dtype {array.dtype}, the model wants {spec['dtype']}.")
            want = spec["shape"]
            if len(array.shape) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, array.shape)):
                raise RuntimeInputError(f"input {name!r} has shape {list(array.shape)}, the model wants {want}.")
            feeds[name] = array
        outputs = self._session.run(None, feeds)
        return {spec["name"]: out for spec, out in zip(self.manifest["outputs"], outputs)}
