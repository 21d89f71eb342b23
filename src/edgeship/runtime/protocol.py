"""The Open Inference Protocol (KServe v2) REST encoding: requests in, responses out.

Pure numpy, no web framework: the server calls :func:`parse_infer_request` on the raw body
and :func:`encode_infer_response` on the outputs. Both JSON tensors and Triton's binary
tensor data extension are supported (``tritonclient`` uses the latter by default): the body
is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors, each
``binary_data_size`` bytes, little-endian, row major.

Every check that can fail on a client's input raises :class:`ProtocolError` with an HTTP
status and a message that names the value received and what the model wants.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.core.errors import EdgeshipError, ProtocolError
from edgeship.core.signature import shape_fits, shown_shape

__all__ = [
    "ProtocolError",
    "InferRequest",
    "RequestLimits",
    "DATATYPES",
    "oip_datatype",
    "tensor_metadata",
    "parse_infer_request",
    "encode_infer_response",
    "HEADER_LENGTH",
]

HEADER_LENGTH = "inference-header-content-length"

# OIP datatype <-> numpy dtype name (the manifest records numpy names).
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",  # strings (text models): JSON strings, or 4-byte little-endian length + bytes each
}
#: bounds on what one request may ask for
MAX_CLASSIFICATION = 1000
_TO_OIP = {v: k for k, v in DATATYPES.items()}


@dataclass(frozen=True)
class RequestLimits:
    """What one inference request may cost, checked before any work starts.

    ``json.loads`` holds the GIL (a thread would not take it off the event loop), so the JSON part
    of a request is bounded before it is parsed: about 15 ms of parsing per MiB here. Tensors
    larger than that travel as binary data (Triton's extension, tritonclient's default)."""

    max_json_bytes: int = 1 << 20
    max_rows: int | None = None  # the batch axis; None: no batch axis to bound
    max_elements: int = 1 << 24  # per input
    max_output_bytes: int = 64 << 20  # the answer's tensors

    def check_output(self, outputs: dict[str, np.ndarray]) -> None:
        total = sum(int(a.nbytes) for a in outputs.values())
        if total > self.max_output_bytes:
            raise ProtocolError(f"the answer would hold {total} bytes of tensors, over this server's "
                                f"{self.max_output_bytes}-byte limit; send fewer rows per request.", 413)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (send finite numbers)")


def _ascii_int(text: str, what: str) -> int:
    """A non-negative integer written in ASCII digits ("١٢" or "²" are digits to Python, not to HTTP)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ProtocolError(f"{what} must be a whole number in ASCII digits, got {text[:40]!r}.")
    return int(text)


def oip_datatype(numpy_name: str) -> str:
    try:
        return _TO_OIP[numpy_name]
    except KeyError:
        raise ProtocolError(f"tensors of dtype {numpy_name} cannot be served over the protocol", 500) from None


def tensor_metadata(spec: dict[str, Any]) -> dict[str, Any]:
    """A manifest I/O entry as OIP ``$metadata_tensor``: symbolic dims become -1."""
    return {"name": spec["name"], "datatype": oip_datatype(spec["dtype"]), "shape": shown_shape(spec["shape"])}


@dataclass
class InferRequest:
    """A parsed, validated request: arrays that match the model's inputs."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # requested outputs; None means all
    binary_outputs: set[str] = field(default_factory=set)
    id: str | None = None
    #: outputs asked for as classification results: name -> how many top classes
    classification: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Size of the batch axis (1 for a model without one)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


def _split_body(body: bytes, header_length: str | None, max_json_bytes: int) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        n = _ascii_int(header_length, "Inference-Header-Content-Length")
        if not 0 < n <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes.")
        json_part, binary = body[:n], memoryview(body)[n:]
    if len(json_part) > max_json_bytes:
        raise ProtocolError(f"the request's JSON is {len(json_part)} bytes, over this server's {max_json_bytes}-byte "
                            "limit for JSON; send large tensors as binary data (tritonclient does by default).", 413)
    try:
        header = json.loads(json_part, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON ({exc}); send an OIP inference request.") from None
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply; an OIP request is a few levels deep.") from None
    if not isinstance(header, dict):
        raise ProtocolError("the request body must be a JSON object with an \"inputs\" list.")
    return header, binary


def _shape(value: Any, name: str, limits: RequestLimits) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 32 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"input {name!r}: \"shape\" must be a list of at most 32 non-negative integers, got "
                            f"{str(value)[:80]}.")
    if 0 in value:
        raise ProtocolError(f"input {name!r} has shape {value}: a dimension of size 0 holds no data; send at least "
                            "one element per dimension.")
    count = math.prod(value)
    if count > limits.max_elements:
        raise ProtocolError(f"input {name!r} has {count} elements, over this server's {limits.max_elements} per "
                            "input; split the request.", 413)
    if limits.max_rows is not None and value and value[0] > limits.max_rows:
        raise ProtocolError(f"input {name!r} has {value[0]} rows; this server takes at most {limits.max_rows} per "
                            "request (--max-batch-size): split the request.", 413)
    return tuple(value)


def _check_against_spec(name: str, datatype: Any, shape: tuple[int, ...], spec: dict[str, Any]) -> np.dtype:
    want_type = oip_datatype(spec["dtype"])
    if datatype != want_type:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; the model wants {want_type}.")
    if not shape_fits(spec["shape"], shape):
        raise ProtocolError(f"input {name!r} has shape {list(shape)}; the model wants {shown_shape(spec['shape'])} "
                            "(-1: any size).")
    return np.dtype(spec["dtype"])


def _strings_from_json(name: str, data: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if len(data) != count or not all(isinstance(x, str) for x in data):
        raise ProtocolError(f"input {name!r}: BYTES \"data\" must be a flat list of {count} strings for shape "
                            f"{list(shape)}.")
    array = np.empty(count, dtype=object)
    array[:] = data
    return array.reshape(shape)


def _strings_from_binary(name: str, blob: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Triton's BYTES layout: each element a 4-byte little-endian length, then that many bytes."""
    count, items, at = math.prod(shape), [], 0
    while at < len(blob) and len(items) < count:
        if at + 4 > len(blob):
            raise ProtocolError(f"input {name!r}: BYTES data ends inside an element's length.")
        (length,) = struct.unpack_from("<I", blob, at)
        if at + 4 + length > len(blob):
            raise ProtocolError(f"input {name!r}: a BYTES element claims {length} bytes past the end of its data.")
        items.append(bytes(blob[at + 4:at + 4 + length]))
        at += 4 + length
    if len(items) != count or at != len(blob):
        raise ProtocolError(f"input {name!r}: BYTES data holds {len(items)} elements in {len(blob)} bytes; shape "
                            f"{list(shape)} needs {count}.")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _from_json(name: str, data: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: \"data\" must be a list (flat, row major), got {type(data).__name__}.")
    if dtype == np.dtype(object):
        return _strings_from_json(name, data, shape)
    try:
        raw = np.asarray(data)
    except ValueError:
        raise ProtocolError(f"input {name!r}: \"data\" is a ragged nested list; send it flat, row major.") from None
    count = math.prod(shape)
    if raw.size != count:
        raise ProtocolError(f"input {name!r}: \"data\" holds {raw.size} values but shape {list(shape)} needs {count}.")
    if count == 0:
        return np.zeros(shape, dtype)
    kind = raw.dtype.kind
    allowed = {"b": "b", "f": "iuf", "i": "iu", "u": "iu"}[dtype.kind]
    if kind not in allowed:
        raise ProtocolError(f"input {name!r}: \"data\" holds {raw.dtype} values, which are not {_TO_OIP[dtype.name]}.")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ProtocolError(f"input {name!r}: values outside the range of {_TO_OIP[dtype.name]}.")
    elif dtype.kind == "f" and not (np.abs(raw) <= np.finfo(dtype).max).all():  # 1e400 parses as inf
        raise ProtocolError(f"input {name!r}: values outside the finite range of {_TO_OIP[dtype.name]}.")
    return raw.astype(dtype, copy=False).reshape(shape)


def _from_binary(name: str, size: Any, binary: memoryview, offset: int, shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}.")
    if dtype == np.dtype(object):
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: the body ends before its {size} bytes of binary data.")
        return _strings_from_binary(name, binary[offset:offset + size], shape)
    need = math.prod(shape) * dtype.itemsize
    if size != need:
        raise ProtocolError(f"input {name!r}: binary_data_size is {size} bytes but shape {list(shape)} of "
                            f"{_TO_OIP[dtype.name]} needs {need}.")
    if offset + size > len(binary):
        raise ProtocolError(f"input {name!r}: the body ends before its {size} bytes of binary data.")
    return np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def parse_infer_request(body: bytes, header_length: str | None, input_specs: list[dict[str, Any]],
                        output_names: list[str], text_input: dict[str, Any] | None = None,
                        limits: RequestLimits = RequestLimits()) -> InferRequest:
    """Parse and validate an inference request against the model's I/O signature and ``limits``.

    ``text_input`` (a text model's BYTES input spec) may stand in for all of ``input_specs``."""
    header, binary = _split_body(body, header_length, limits.max_json_bytes)
    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("the request needs an \"inputs\" list with one entry per model input.")
    specs = {s["name"]: s for s in input_specs}
    if text_input is not None and all(isinstance(e, dict) and e.get("name") == text_input["name"] for e in entries):
        specs = {text_input["name"]: text_input}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError("each input needs a \"name\", \"shape\", \"datatype\" and \"data\".")
        name = entry["name"]
        if name not in specs:
            raise ProtocolError(f"unknown input {name!r}; the model's inputs are {sorted(specs)}.")
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice.")
        shape = _shape(entry.get("shape"), name, limits)
        dtype = _check_against_spec(name, entry.get("datatype"), shape, specs[name])
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input {name!r}: \"parameters\" must be an object.")
        if "binary_data_size" in params:
            inputs[name] = _from_binary(name, params["binary_data_size"], binary, offset, shape, dtype)
            offset += params["binary_data_size"]
        else:
            inputs[name] = _from_json(name, entry.get("data"), shape, dtype)
    if offset != len(binary):
        raise ProtocolError(f"the body carries {len(binary) - offset} bytes of binary data that no input claims.")
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise ProtocolError(f"missing input(s) {missing}; the model's inputs are {sorted(specs)}.")
    batch_sizes = {a.shape[0] for a in inputs.values() if a.ndim}
    if len(batch_sizes) > 1:
        raise ProtocolError(f"inputs disagree on the batch size: {sorted(batch_sizes)}.")

    params = header.get("parameters") or {}
    all_binary = bool(isinstance(params, dict) and params.get("binary_data_output"))
    wanted, binary_outputs = None, set(output_names) if all_binary else set()
    classes: dict[str, int] = {}
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise ProtocolError("\"outputs\" must be a list of {\"name\": ...} objects.")
        wanted = []
        for out in header["outputs"]:
            name = out.get("name") if isinstance(out, dict) else None
            if name not in output_names:
                raise ProtocolError(f"unknown output {name!r}; the model's outputs are {output_names}.")
            wanted.append(name)
            out_params = out.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise ProtocolError(f"output {name!r}: \"parameters\" must be an object.")
            if "binary_data" in out_params:
                (binary_outputs.add if out_params["binary_data"] else binary_outputs.discard)(name)
            if "classification" in out_params:
                classes[name] = _class_count(name, out_params["classification"])
    request_id = header.get("id")
    return InferRequest(inputs, wanted, binary_outputs, str(request_id) if request_id is not None else None,
                        classes)


def _class_count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CLASSIFICATION:
        raise ProtocolError(f"output {name!r}: \"classification\" must be a whole number of classes from 1 to "
                            f"{MAX_CLASSIFICATION}, got {value!r}.")
    return value


def _binary(array: np.ndarray) -> bytes:
    if array.dtype == np.dtype(object):
        encoded = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
        return b"".join(struct.pack("<I", len(x)) + x for x in encoded)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    if array.dtype == np.dtype(object):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # JSON has no NaN/Inf: send them as strings
        return [x if math.isfinite(x) else str(x) for x in array.reshape(-1).tolist()]
    return array.reshape(-1).tolist()


def encode_infer_response(model_name: str, model_version: int, outputs: dict[str, np.ndarray],
                          request: InferRequest, labels: list[str] | None = None,
                          parameters: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) for an inference response, JSON or JSON + binary tensors. Outputs asked
    for with ``classification`` are answered as ``"score:index:label"`` strings (BYTES), best first."""
    from edgeship.runtime.text import classify

    names = request.outputs if request.outputs is not None else list(outputs)
    entries, blobs = [], []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        if name in request.classification:
            try:
                array = classify(array, labels or [], request.classification[name])
            except EdgeshipError as exc:
                raise ProtocolError(f"output {name!r} cannot be classified: {exc}") from None
        datatype = "BYTES" if array.dtype == np.dtype(object) else oip_datatype(array.dtype.name)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary_outputs:
            blob = _binary(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version), "outputs": entries}
    if parameters:
        response["parameters"] = parameters
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}
