"""The Open Inference Protocol v2 binary tensor data extension (HTTP): pure functions, no Ray.

A request may carry tensors as raw bytes after its JSON header: the header
``Inference-Header-Content-Length`` gives the JSON header's length in bytes, and each input sent
so has ``parameters.binary_data_size`` (its bytes, in input order) instead of ``data``. Bytes are
little-endian, row-major, unpadded; BOOL is one byte (0 or 1); BYTES is, per element, a 4-byte
little-endian length and then that many bytes. A response carries ``predictions`` as raw bytes when
the request asks (``parameters.binary_data_output``, or ``parameters.binary_data`` on the requested
output, which wins), with ``Inference-Header-Content-Length`` and ``parameters.binary_data_size``.

Binary inputs are decoded into the ``data`` lists the JSON form has, so that one validator
(:func:`mlplat.serving.request.parse_v2`) checks both forms. Every framing error is a 400 that
names the input; nothing is read past the body.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from starlette.responses import Response

from mlplat.serving.request import RequestError, parse_json_body

__all__ = ["HEADER_LENGTH", "decode_request", "decode_tensor", "encode_tensor", "binary_output_requested", "encode_response",
           "binary_response"]

#: The request and response header giving the JSON header's length in bytes (lower case: as
#: Starlette's headers are looked up).
HEADER_LENGTH = "inference-header-content-length"
_HEADER_NAME = "Inference-Header-Content-Length"

#: Fixed-size datatypes: the little-endian numpy dtype of each element.
_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(code) for name, code in {
    "BOOL": "u1", "UINT8": "u1", "INT8": "i1", "UINT16": "<u2", "INT16": "<i2", "FP16": "<f2", "UINT32": "<u4",
    "INT32": "<i4", "FP32": "<f4", "UINT64": "<u8", "INT64": "<i8", "FP64": "<f8"}.items()}
_LENGTH_PREFIX = struct.Struct("<I")
_MAX_RANK, _MAX_DIM = 8, 2**31 - 1


def _header_length(value: str, body_bytes: int) -> int:
    """The JSON header's length from the ``Inference-Header-Content-Length`` value: a decimal
    integer in 1..body length."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise RequestError(400, f"{_HEADER_NAME} must be the JSON header's length in bytes (a non-negative integer), "
                                f"got {text[:32]!r}", _HEADER_NAME)
    length = int(text)
    if length > body_bytes:
        raise RequestError(400, f"{_HEADER_NAME} is {length} bytes but the body has only {body_bytes} bytes",
                           _HEADER_NAME)
    if length == 0:
        raise RequestError(400, f"{_HEADER_NAME} is 0: the body must start with the JSON inference request",
                           _HEADER_NAME)
    return length


def _label(tensor: dict[str, Any], index: int) -> str:
    name = tensor.get("name")
    return name[:64] if isinstance(name, str) and name else f"inputs[{index}]"


def _element_count(tensor: dict[str, Any], label: str) -> int:
    """Elements in the tensor's shape (checked as parse_v2 checks it: 422 when it is not a shape)."""
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or len(shape) > _MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_DIM for d in shape):
        raise RequestError(422, f"{label}.shape must be a list of 1 to {_MAX_RANK} integers in 0..{_MAX_DIM}",
                           f"{label}.shape")
    return math.prod(shape)


def _decode_bytes(raw: bytes, count: int, label: str) -> list[str]:
    """BYTES elements: a 4-byte little-endian length, then the UTF-8 text, ``count`` times,
    filling ``raw`` exactly."""
    where, size, prefix = f"{label}.parameters.binary_data_size", len(raw), _LENGTH_PREFIX.size
    if count * prefix > size:
        raise RequestError(400, f"{label}: {count} BYTES elements need at least {count * prefix} bytes "
                                f"(a 4-byte length each); binary_data_size is {size}", where)
    out: list[str] = []
    unpack, append, offset, j = _LENGTH_PREFIX.unpack_from, out.append, 0, 0
    try:
        for j in range(count):
            if offset + prefix > size:
                raise RequestError(400, f"{label}: element {j} has no room for its 4-byte length in the "
                                        f"{size} bytes of binary data", where)
            (length,) = unpack(raw, offset)
            offset += prefix
            if length > size - offset:
                raise RequestError(400, f"{label}: element {j} declares {length} bytes but only {size - offset} "
                                        "remain in its binary data", where)
            append(raw[offset:offset + length].decode("utf-8"))
            offset += length
    except UnicodeDecodeError:
        raise RequestError(400, f"{label}: element {j} is not UTF-8 text", f"{label}[{j}]") from None
    if offset != size:
        raise RequestError(400, f"{label}: {size - offset} bytes follow its {count} BYTES elements; "
                                f"binary_data_size must be exactly their encoded size ({offset})", where)
    return out


def decode_tensor(raw: bytes, tensor: dict[str, Any], label: str) -> list[Any]:
    """One input's binary data -> the flat ``data`` list of the JSON form."""
    count = _element_count(tensor, label)
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        return _decode_bytes(raw, count, label)
    dtype = _DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise RequestError(422, f"{label}.datatype {str(datatype)[:32]!r} is not an OIP v2 datatype "
                                f"({sorted([*_DTYPES, 'BYTES'])})", f"{label}.datatype")
    if count * dtype.itemsize != len(raw):
        raise RequestError(400, f"{label}: shape {tensor['shape']} of {datatype} is {count * dtype.itemsize} bytes, "
                                f"but binary_data_size is {len(raw)}", f"{label}.parameters.binary_data_size")
    values = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL":
        if values.size and int(values.max()) > 1:
            raise RequestError(400, f"{label}: BOOL elements must be bytes 0 or 1", label)
        return values.astype(bool).tolist()
    return values.tolist()


def decode_request(body: bytes, header_length: str, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """A binary-extension body -> the JSON request, each binary input's bytes decoded into its
    ``data``. ``header_length``: the ``Inference-Header-Content-Length`` value. Raises only
    :class:`RequestError` (400 for framing, 413/422 as the JSON parser and shape checks answer)."""
    split = _header_length(header_length, len(body))
    payload = parse_json_body(body[:split], max_bytes=max_bytes, max_depth=max_depth)
    inputs = payload.get("inputs")
    offset = split
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if params is None:
            continue  # a JSON input (or not a tensor at all: parse_v2 names it)
        label = _label(tensor, i)
        if not isinstance(params, dict):
            raise RequestError(422, f"{label}.parameters must be an object", f"{label}.parameters")
        if "binary_data_size" not in params:
            continue
        size = params["binary_data_size"]
        where = f"{label}.parameters.binary_data_size"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RequestError(400, f"{where} must be a non-negative integer (bytes)", where)
        if "data" in tensor:
            raise RequestError(400, f"{label} has both 'data' and binary_data_size: send one", where)
        if size > len(body) - offset:
            raise RequestError(400, f"{where} is {size} but only {len(body) - offset} bytes of binary data remain "
                                    "after the JSON header and the inputs before it", where)
        tensor["data"] = decode_tensor(body[offset:offset + size], tensor, label)
        offset += size
    if offset != len(body):
        raise RequestError(400, f"{len(body) - offset} bytes after the JSON header belong to no input: the inputs' "
                                f"binary_data_size must add up to the {len(body) - split} bytes that follow it",
                           _HEADER_NAME)
    return payload


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(422, f"{where} must be true or false", where)
    return value


def binary_output_requested(payload: dict[str, Any], output: str = "predictions") -> bool:
    """Whether ``output`` goes back as binary data: the requested output's own
    ``parameters.binary_data`` when given, else the request's ``parameters.binary_data_output``.
    Call it on a payload that parse_v2 accepted (``parameters`` an object, ``outputs`` a list)."""
    outputs = payload.get("outputs")
    if outputs:
        for i, requested in enumerate(outputs):
            if isinstance(requested, dict) and requested.get("name") == output:
                params = requested.get("parameters")
                if isinstance(params, dict) and "binary_data" in params:
                    return _flag(params["binary_data"], f"outputs[{i}].parameters.binary_data")
    params = payload.get("parameters")
    if params and "binary_data_output" in params:
        return _flag(params["binary_data_output"], "parameters.binary_data_output")
    return False


def encode_tensor(data: list[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in data:
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts += [_LENGTH_PREFIX.pack(len(raw)), raw]
        return b"".join(parts)
    return np.asarray(data, dtype=_DTYPES[datatype]).tobytes()


def encode_response(document: dict[str, Any]) -> tuple[bytes, int]:
    """A v2 response document -> (body, JSON header length): each output's ``data`` moved into
    the bytes after the JSON header, with ``parameters.binary_data_size``."""
    tails = []
    for output in document["outputs"]:
        raw = encode_tensor(output.pop("data"), output["datatype"])
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
        tails.append(raw)
    header = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return b"".join([header, *tails]), len(header)


def binary_response(document: dict[str, Any], headers: dict[str, str]) -> Response:
    """The v2 response with its outputs as binary data (``application/octet-stream``)."""
    body, split = encode_response(document)
    return Response(body, media_type="application/octet-stream", headers={**headers, _HEADER_NAME: str(split)})
