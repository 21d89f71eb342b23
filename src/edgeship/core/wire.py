"""The cut tensor on the wire: float32 as is, float16, or int8 with one symmetric scale per tensor.

An int8 tensor travels as its int8 values plus its float32 scale (``value = q * scale``); the
bytes a plan counts are the values' (the scale is 4 bytes per tensor). The tail model takes what
travels: ``edgeship.hybrid.wire.adapt_tail`` gives it a float16 or int8 input (and an int8 tensor's scale as a
second input) that it casts back to float32, so any Open Inference Protocol server runs it.

This is the contract between a hybrid device (edgeship.runtime.hybrid) and the tail it calls
(edgeship.hybrid.wire.adapt_tail): the names and encodings live here, in one place."""

from __future__ import annotations

import numpy as np

from edgeship.core.errors import ConfigError

__all__ = ["WIRE_BYTES", "WIRE_SUFFIX", "SCALE_SUFFIX", "encode", "decode", "check_wire", "wire_inputs"]

#: bytes per value on the wire
WIRE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
#: the tail's input names for a cut tensor NAME sent as fp16/int8, and for an int8 tensor's scale
WIRE_SUFFIX, SCALE_SUFFIX = ".wire", ".scale"


def check_wire(wire: str) -> str:
    if wire not in WIRE_BYTES:
        raise ConfigError(f"unknown wire encoding {wire!r}; choose from {sorted(WIRE_BYTES)}.")
    return wire


def encode(tensor: np.ndarray, wire: str) -> tuple[np.ndarray, float]:
    """(the values to send, the int8 scale, or 1.0 for the float encodings)."""
    check_wire(wire)
    tensor = np.asarray(tensor, dtype=np.float32)
    if wire == "fp32":
        return tensor, 1.0
    if wire == "fp16":
        return tensor.astype(np.float16), 1.0
    peak = float(np.max(np.abs(tensor))) if tensor.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.rint(tensor / scale), -127, 127).astype(np.int8), scale


def decode(values: np.ndarray, scale: float) -> np.ndarray:
    """float32 values back from what :func:`encode` sent."""
    return np.asarray(values).astype(np.float32) * np.float32(scale)


def wire_inputs(tensors: dict[str, np.ndarray], wire: str) -> dict[str, np.ndarray]:
    """The tail's inputs for the cut tensors: ``NAME`` (fp32), or ``NAME.wire`` in fp16 or int8 plus
    ``NAME.scale`` (int8)."""
    out = {}
    for name, tensor in tensors.items():
        values, scale = encode(tensor, wire)
        out[name if wire == "fp32" else name + WIRE_SUFFIX] = values
        if wire == "int8":
            out[name + SCALE_SUFFIX] = np.array([scale], dtype=np.float32)
    return out
