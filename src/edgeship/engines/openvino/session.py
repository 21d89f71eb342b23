"""OpenVINO on the device (``edgeship[openvino]``: openvino only).

:class:`OpenVINOSession` opens an IR with a
performance hint (latency or throughput) and an inference precision (f32 or bf16), and compiles
one static-shape model per input shape it sees ("static shapes where the data allows": the first
run at a shape reshapes and compiles, later runs at that shape reuse it). It answers like an ONNX
Runtime session (``run``, ``get_inputs``, ``get_outputs``), so every measurement in edgeship
times, scores and compares it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeship.core.errors import ConfigError, InvalidModelError
from edgeship.engines.base import SessionSpec

__all__ = ["OpenVINOSession", "OVSettings", "IR_SUFFIX", "ir_container", "split_container", "open_model"]

IR_SUFFIX = ".xml"
_MAGIC = b"EDGESHIP-OVIR1\n"  # a bundle's model member for OpenVINO: magic, xml length (u64 LE), xml, bin


def ir_container(xml: Path) -> bytes:
    """One blob holding an IR's .xml and .bin (what a bundle stores, signs and encrypts as its model)."""
    import struct

    text, weights = Path(xml).read_bytes(), Path(xml).with_suffix(".bin").read_bytes()
    return _MAGIC + struct.pack("<Q", len(text)) + text + weights


def split_container(blob: bytes | memoryview) -> tuple[bytes, memoryview]:
    """(xml, bin) of :func:`ir_container`'s blob, with its lengths checked against the blob."""
    import struct

    view = memoryview(blob)
    head = len(_MAGIC) + 8
    if len(view) < head or bytes(view[:len(_MAGIC)]) != _MAGIC:
        raise InvalidModelError("the model is not an OpenVINO IR container (bad magic); the bundle is damaged.")
    (n,) = struct.unpack("<Q", view[len(_MAGIC):head])
    if n > len(view) - head:
        raise InvalidModelError(f"the IR container claims a {n}-byte .xml in {len(view)} bytes; the bundle is damaged.")
    return bytes(view[head:head + n]), view[head + n:]


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("this model runs on OpenVINO: pip install 'edgeship[openvino]'.") from None
    return ov


@dataclass(frozen=True)
class OVSettings:
    """How the device compiles the model: OpenVINO's performance hint and inference precision."""

    hint: Literal["latency", "throughput"] = "latency"
    precision: Literal["f32", "bf16"] = "f32"

    def properties(self, threads: int) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        mode = hints.PerformanceMode.LATENCY if self.hint == "latency" else hints.PerformanceMode.THROUGHPUT
        return {hints.performance_mode: mode, hints.inference_precision: self.precision,
                props.inference_num_threads: int(threads)}


_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)",
             "u8": "tensor(uint8)", "i8": "tensor(int8)", "boolean": "tensor(bool)", "f64": "tensor(double)"}


class OpenVINOSession:
    """An IR on the CPU, with ONNX Runtime's session interface (see the module docstring)."""

    def __init__(self, xml: Path | str | bytes | memoryview, threads: int = 2, settings: OVSettings = OVSettings()) -> None:
        """``xml`` is an IR's .xml path (its .bin beside it), or the bytes of :func:`ir_container`
        (a bundle's model, read from memory, never written to disk)."""
        ov = _ov()
        self.core, self.settings, self.threads = ov.Core(), settings, threads
        try:
            if isinstance(xml, (bytes, bytearray, memoryview)):
                text, weights = split_container(xml)
                self.model = self.core.read_model(model=text.decode("utf-8"),
                                                  weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
            else:
                self.model = self.core.read_model(str(xml))
        except InvalidModelError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError for an unreadable IR
            raise InvalidModelError(f"OpenVINO cannot read the model: {str(exc).splitlines()[0]}") from None
        self._compiled: dict[tuple, Any] = {}
        self._inputs = [SessionSpec(p.get_any_name(), [d.get_length() if d.is_static else None for d in p.get_partial_shape()],
                              _OV_TYPES.get(p.get_element_type().get_type_name(), "tensor(float)"))
                        for p in self.model.inputs]
        self._outputs = [SessionSpec(p.get_any_name(), [], _OV_TYPES.get(p.get_element_type().get_type_name(),
                                                                   "tensor(float)")) for p in self.model.outputs]

    def get_inputs(self) -> list[SessionSpec]:
        return self._inputs

    def get_outputs(self) -> list[SessionSpec]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def _compiled_for(self, feeds: dict[str, np.ndarray]) -> Any:
        key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
        if key not in self._compiled:
            model = self.model.clone()
            model.reshape({name: list(array.shape) for name, array in feeds.items()})
            self._compiled[key] = self.core.compile_model(model, "CPU", self.settings.properties(self.threads))
        return self._compiled[key]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = self._compiled_for(feeds)
        result = compiled(feeds)
        by_name = {}
        for port, value in result.items():
            for name in port.get_names():
                by_name[name] = value
        wanted = output_names or [o.name for o in self._outputs]
        return [np.asarray(by_name[n]) for n in wanted]


def open_model(model: Path | str | bytes | memoryview, threads: int, options: dict[str, str],
               providers: list[str] | None = None) -> OpenVINOSession:
    """The engine's opener (see edgeship.engines.base): the CPU, with the measured hint and precision."""
    return OpenVINOSession(model, threads, OVSettings(**options))  # type: ignore[arg-type]
