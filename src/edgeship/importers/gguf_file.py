"""Read a GGUF file's header, metadata and tensor table, and refuse a corrupt or hostile one first.

GGUF (llama.cpp's format) is a header, key/value metadata, a tensor table, then aligned tensor
data. Every count and size in it comes from the file, so nothing is trusted before it is checked
against the bytes that are left: a string or array that claims more than the rest of the file,
a tensor count or shape that cannot fit, a tensor whose data runs past the end, an unknown value
or tensor type, a bad magic or version. The file is read through a bounded cursor (no mmap, no
allocation sized by the file's claims), and only then may a full reader (gguf-py's, transformers')
touch it. The format's constants come from gguf-py (``gguf.constants``), the spec in one place.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgeship.errors import InvalidModelError

__all__ = ["GGUFTensor", "GGUFInfo", "read_gguf", "LIMITS"]

#: bounds on what one file may claim, far above real models (SmolLM2: 273 tensors, 36 keys, 49k tokens)
LIMITS = {"tensors": 1 << 16, "keys": 1 << 16, "string_bytes": 1 << 24, "array_items": 1 << 26,
          "dims": 4, "elements": 1 << 40, "alignment": 1 << 16}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type: str  # a GGMLQuantizationType name: F32, F16, Q4_1, Q8_0, ...
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dim first
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFInfo:
    """What the file says about itself, every figure checked against the file's size."""

    path: Path
    version: int
    file_size: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensor, ...] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value; ``{arch}`` in ``key`` stands for the architecture (``{arch}.block_count``)."""
        return self.metadata.get(key.replace("{arch}", str(self.architecture)), default)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def params(self) -> int:
        total = 0
        for t in self.tensors:
            count = 1
            for d in t.shape:
                count *= d
            total += count
        return total

    @property
    def tensor_types(self) -> dict[str, int]:
        return dict(Counter(t.type for t in self.tensors).most_common())

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int | None:
        """Keys and values of one token over all layers: layers x KV heads x head dim x 2 x bytes."""
        layers, heads = self.get("{arch}.block_count"), self.get("{arch}.attention.head_count")
        kv_heads = self.get("{arch}.attention.head_count_kv", heads)
        width = self.get("{arch}.embedding_length")
        if not all(isinstance(v, int) and v > 0 for v in (layers, heads, kv_heads, width)):
            return None
        head_dim = self.get("{arch}.attention.key_length", width // heads)
        return int(layers * kv_heads * head_dim * 2 * bytes_per_value)

    def summary(self) -> dict[str, Any]:
        """The facts ``edgeship inspect`` shows (no token lists or templates in full)."""
        return {
            "format": "gguf",
            "path": str(self.path),
            "version": self.version,
            "architecture": self.architecture,
            "name": self.metadata.get("general.name"),
            "params": self.params,
            "size_bytes": self.file_size,
            "tensors": len(self.tensors),
            "tensor_types": self.tensor_types,
            "layers": self.get("{arch}.block_count"),
            "embedding_length": self.get("{arch}.embedding_length"),
            "heads": self.get("{arch}.attention.head_count"),
            "kv_heads": self.get("{arch}.attention.head_count_kv"),
            "context_length": self.get("{arch}.context_length"),
            "vocab_size": len(self.metadata.get("tokenizer.ggml.tokens", ())) or None,
            "tokenizer": self.metadata.get("tokenizer.ggml.model"),
            "chat_template": "tokenizer.chat_template" in self.metadata,
            "kv_cache_bytes_per_token_fp16": self.kv_cache_bytes_per_token(2),
        }


class _Cursor:
    """Sequential reads that never go past the file's end or ask for more than it holds."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def fail(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"{str(self.path)!r} is not a usable GGUF file: {what} (at byte {self.pos}).")

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} needs {n} bytes, but the file ends {self.size - self.pos} bytes later "
                            "(truncated or corrupt)")
        data = self.f.read(n)
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        (value,) = struct.unpack("<" + fmt, self.read(struct.calcsize(fmt), what))
        return value

    def count(self, what: str, limit: int, min_item_bytes: int) -> int:
        """A count from the file, refused when over ``limit`` or when its items cannot fit in the rest."""
        n = self.unpack("Q", what)
        if n > limit or n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what} is {n}, more than {'the limit ' + str(limit) if n > limit else 'the file holds'}")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"the length of {what}", LIMITS["string_bytes"], 1)
        return self.read(n, what).decode("utf-8", errors="replace")


def _value(cur: _Cursor, kind: int, key: str) -> Any:
    from gguf.constants import GGUFValueType

    scalars = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
               GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
               GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
               GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}
    try:
        kind = GGUFValueType(kind)
    except ValueError:
        raise cur.fail(f"key {key!r} has unknown value type {kind}") from None
    if kind in scalars:
        return cur.unpack(scalars[kind], f"the value of {key!r}")
    if kind == GGUFValueType.STRING:
        return cur.string(f"the value of {key!r}")
    item_kind = cur.unpack("I", f"the item type of {key!r}")
    if item_kind == GGUFValueType.ARRAY:
        raise cur.fail(f"key {key!r} nests arrays, which edgeship does not read")
    item_bytes = struct.calcsize(scalars[GGUFValueType(item_kind)]) if item_kind in scalars.keys() else 8
    n = cur.count(f"the item count of {key!r}", LIMITS["array_items"], item_bytes)
    if item_kind in scalars.keys():
        fmt = scalars[GGUFValueType(item_kind)]
        return list(struct.unpack(f"<{n}{fmt}", cur.read(n * item_bytes, f"the items of {key!r}")))
    return [_value(cur, item_kind, key) for _ in range(n)]


def _tensor(cur: _Cursor, index: int) -> tuple[str, int, tuple[int, ...], int]:
    from gguf.constants import GGMLQuantizationType

    name = cur.string(f"the name of tensor {index}")
    n_dims = cur.unpack("I", f"the rank of tensor {name!r}")
    if not 1 <= n_dims <= LIMITS["dims"]:
        raise cur.fail(f"tensor {name!r} has {n_dims} dims; GGUF tensors have 1 to {LIMITS['dims']}")
    shape = tuple(cur.unpack("Q", f"a dim of tensor {name!r}") for _ in range(n_dims))
    elements = 1
    for d in shape:
        elements *= d
        if d == 0 or elements > LIMITS["elements"]:
            raise cur.fail(f"tensor {name!r} has shape {list(shape)}, which no model holds")
    kind = cur.unpack("I", f"the type of tensor {name!r}")
    try:
        GGMLQuantizationType(kind)
    except ValueError:
        raise cur.fail(f"tensor {name!r} has unknown type {kind}") from None
    return name, kind, shape, cur.unpack("Q", f"the offset of tensor {name!r}")


def read_gguf(path: Path | str) -> GGUFInfo:
    """The checked header, metadata and tensor table of a GGUF file; InvalidModelError otherwise."""
    from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType

    path = Path(path)
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as exc:
        raise InvalidModelError(f"cannot read {str(path)!r}: {exc.strerror}.") from None
    with f:
        cur = _Cursor(f, size, path)
        if cur.unpack("I", "the magic number") != GGUF_MAGIC:
            raise cur.fail("the magic number is not GGUF's")
        version = cur.unpack("I", "the version")
        if version not in (2, 3):
            raise cur.fail(f"GGUF version {version} is not one edgeship reads (2 or 3)")
        n_tensors = cur.count("the tensor count", LIMITS["tensors"], 8 + 4 + 8 + 4 + 8)
        n_keys = cur.count("the key count", LIMITS["keys"], 8 + 4)
        metadata: dict[str, Any] = {}
        for i in range(n_keys):
            key = cur.string(f"key {i}")
            metadata[key] = _value(cur, cur.unpack("I", f"the value type of {key!r}"), key)
        raw = [_tensor(cur, i) for i in range(n_tensors)]
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or not 0 < alignment <= LIMITS["alignment"] or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment {alignment!r} is not a power of two up to {LIMITS['alignment']}")
        data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, kind, shape, offset in raw:
        block, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        if shape[0] % block:
            raise InvalidModelError(f"{str(path)!r}: tensor {name!r} has {shape[0]} values per row, not a multiple "
                                    f"of its type's block of {block}.")
        elements = 1
        for d in shape:
            elements *= d
        nbytes = elements // block * type_bytes
        if offset % alignment or data_offset + offset + nbytes > size:
            raise InvalidModelError(f"{str(path)!r}: tensor {name!r} claims bytes {data_offset + offset} to "
                                    f"{data_offset + offset + nbytes} of a {size}-byte file (truncated or corrupt).")
        tensors.append(GGUFTensor(name, GGMLQuantizationType(kind).name, shape, offset, nbytes))
    return GGUFInfo(path, version, size, data_offset, metadata, tuple(tensors))
