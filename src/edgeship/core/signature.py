"""A model's I/O signature: how ONNX Runtime's types map to numpy, and when an array fits a spec.

The data loader (build side), the runtime and the Open Inference Protocol parser (device side)
all decide "does this input fit the model" here; each words its own error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["ORT_TYPES", "numpy_dtype", "shape_fits", "shown_shape", "missing_and_extra"]

#: ONNX Runtime's type strings -> numpy dtype names (the types models use as inputs and outputs)
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def numpy_dtype(ort_type: str) -> str:
    """The numpy dtype name of an ONNX Runtime type; other types (sequences, maps) keep their name."""
    return ORT_TYPES.get(ort_type, ort_type)


def shape_fits(want: Sequence[Any], got: Sequence[int], free_first: bool = False) -> bool:
    """Same rank, and every fixed dim of ``want`` equal to ``got``'s (symbolic dims take any size).
    ``free_first`` lets axis 0 differ too (data files: axis 0 counts samples)."""
    if len(want) != len(got):
        return False
    return all(not isinstance(w, int) or w == g or (free_first and i == 0)
               for i, (w, g) in enumerate(zip(want, got)))


def shown_shape(want: Sequence[Any]) -> list[int]:
    """A spec's shape as the protocol shows it: symbolic dims are -1."""
    return [w if isinstance(w, int) else -1 for w in want]


def missing_and_extra(want: Iterable[str], got: Iterable[str]) -> tuple[list[str], list[str]]:
    want, got = set(want), set(got)
    return sorted(want - got), sorted(got - want)
