"""The :class:`Model` value that flows through the whole pipeline.

A Model is an ONNX file on disk plus what edgeship knows about it: its I/O signature,
where it came from (so text data can be tokenized with the model's own tokenizer) and
its lineage (which passes made it, with which configs, from which input hash).
Passes never modify a Model; they return a new one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.signature import numpy_dtype

__all__ = ["Model", "TensorSpec", "LineageStep"]



@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of one model input or output; a str dim is symbolic."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class LineageStep:
    """One transformation in a model's history."""

    pass_name: str
    config: dict[str, Any]
    input_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, **self.config, "input_sha256": self.input_sha256}


@dataclass(frozen=True)
class Model:
    """An ONNX model file plus its provenance.

    Attributes:
        path: the ONNX file (weights inline, or external data beside it).
        source: what the user handed in (file path, ``module:function``, HF directory).
        kind: ``onnx``, ``torch``, ``hf``, or ``tflite`` (a LiteRT file: then ``path`` and ``artifact``
            are that file, and there is no ONNX graph).
        tokenizer_dir: for Hugging Face text models, where the tokenizer lives.
        lineage: the passes applied since import, oldest first.
        float_parent: the float graph whose architecture this model has, when a pass (such
            as quantization) kept the architecture; params and MACs are counted on it.
        torch_module: the PyTorch module this file was exported from, while the two agree
            (PyTorch passes keep it; ONNX passes drop it). Not serialized.
        teacher_module: the float PyTorch module at import, the teacher for distillation.
        task: what the model does, for models that say (Hugging Face: ``text-classification``,
            ``token-classification``, ``question-answering``, ``fill-mask``, ``feature-extraction``,
            ``sentence-embedding``); None when unknown.
        labels: class names by class id (a classifier's ``id2label``), or empty.
        engine: what runs it (a name in ``edgeship.engines``): ``onnxruntime`` (the ONNX file
            itself), or another engine, whose model ``artifact`` was made from the ONNX file
            (an OpenVINO IR, a LiteRT flatbuffer), with ``engine_options`` the device's compile settings.
    """

    path: Path
    source: str
    kind: str = "onnx"
    tokenizer_dir: Path | None = None
    lineage: tuple[LineageStep, ...] = ()
    float_parent: Path | None = None
    task: str | None = None
    labels: tuple[str, ...] = ()
    torch_module: Any = field(default=None, repr=False, compare=False)
    export_inputs: Any = field(default=None, repr=False, compare=False)
    teacher_module: Any = field(default=None, repr=False, compare=False)
    engine: str = "onnxruntime"
    artifact: Path | None = None
    engine_options: tuple[tuple[str, str], ...] = ()

    # ---- facts about the file -------------------------------------------------------
    @cached_property
    def _session_meta(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        from edgeship.core.session import Optimization, open_session

        if self.kind == "tflite":  # no ONNX graph: the engine's own model is all there is
            sess = self.session(1)
        else:
            sess = open_session(self.path, threads=1, optimization=Optimization.NONE)

        def specs(args: list[Any]) -> list[TensorSpec]:
            return [
                TensorSpec(a.name, numpy_dtype(a.type), tuple(a.shape)) for a in args
            ]

        return specs(sess.get_inputs()), specs(sess.get_outputs())

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._session_meta[0]

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._session_meta[1]

    @property
    def files(self) -> list[Path]:
        """The files that ship: the ONNX file and any external data beside it, or the engine's own
        (an OpenVINO IR's .xml and .bin, a LiteRT .tflite)."""
        if self.artifact is not None:
            from edgeship.engines import get_engine

            return get_engine(self.engine).files(self.artifact)
        extra = sorted(p for p in self.path.parent.glob(self.path.name + ".data*") if p.is_file())
        return [self.path, *extra]

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.files)

    @cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for p in self.files:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    @property
    def has_batch_axis(self) -> bool:
        """True when every input's first dim is symbolic, so samples can be stacked."""
        return all(s.shape and not isinstance(s.shape[0], int) for s in self.inputs)

    def derive(self, path: Path, pass_name: str, config: dict[str, Any], keeps_arch: bool) -> "Model":
        """A new Model produced from this one by a pass."""
        step = LineageStep(pass_name, config, self.sha256)
        parent = (self.float_parent or self.path) if keeps_arch else None
        return replace(self, path=Path(path), lineage=(*self.lineage, step), float_parent=parent,
                       torch_module=None)

    def derive_from_module(self, module: Any, path: Path, pass_name: str, config: dict[str, Any]) -> "Model":
        """A new Model from a PyTorch pass: ``module`` was changed and exported to ``path``."""
        step = LineageStep(pass_name, config, self.sha256)
        return replace(self, path=Path(path), lineage=(*self.lineage, step), float_parent=None,
                       torch_module=module)

    def stats(self, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
        """Params and MACs per sample (batch 1) at ``shapes``; MACs are None (unknown) when a dynamic
        dim has no size in ``shapes`` or an op cannot be counted, and ``macs_unknown`` says why.

        A quantized model has its float parent's architecture, so it is counted there: the
        same MACs, done in int8.
        """
        from edgeship.evaluate.graph import graph_stats

        if self.kind == "tflite":
            return {"params": None, "macs": None, "macs_unknown": ["a .tflite model: edgeship counts on ONNX graphs"]}
        return graph_stats(self.float_parent or self.path, shapes)

    def session(self, threads: int = 2) -> Any:
        """A fresh session on this model's engine (edgeship.engines) with a fixed thread count; every
        engine answers with ONNX Runtime's session interface."""
        from edgeship.engines import get_engine

        return get_engine(self.engine).open(self.artifact or self.path, threads, dict(self.engine_options))

    def run(self, feeds: dict[str, np.ndarray], threads: int = 2) -> list[np.ndarray]:
        return self.session(threads).run(None, feeds)
