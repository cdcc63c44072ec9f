"""Parsing and validating inference requests: pure functions, no Ray, no HTTP framework.

Everything a client can get wrong is caught here and turned into a :class:`RequestError`
with the HTTP status, a message naming the offending field, and the field itself.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RequestError", "InputSchema", "parse_json_body", "parse_v1", "parse_v2", "ParsedRequest",
           "MAX_ABS_NUMBER"]

#: Numbers a client sends must lie within +-MAX_ABS_NUMBER, the largest float32: models compute in
#: float32, where a larger value is infinite. (Microsecond and nanosecond epoch timestamps, or
#: amounts in minor units, are far below it and pass.)
MAX_ABS_NUMBER = 3.4028234663852886e38


class RequestError(Exception):
    """A client error: ``status`` (400/401/404/413/422...), message and offending field."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class InputSchema:
    """What a model version accepts: raw feature columns with a kind each.

    kind: ``number`` (finite int/float), ``number_or_null`` (imputed), ``category``
    (string, int, bool or null). ``input_dim`` is the width of the encoded tensor that the
    v2 ``input`` form takes directly.
    """

    columns: dict[str, str]
    input_dim: int
    feature_columns: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_encoder(cls, encoder: Any, input_dim: int) -> InputSchema:
        """Build from a fitted :class:`mlplat.features.FeatureEncoder` (or None: raw numeric inputs)."""
        from mlplat.features import NumericEncoder
        from mlplat.features.encoders import Impute, Passthrough

        if encoder is None:
            return cls(columns={}, input_dim=input_dim)
        columns: dict[str, str] = {}
        for enc in encoder.encoders:
            if isinstance(enc, Impute):
                kind = "number_or_null"
            elif isinstance(enc, NumericEncoder):
                kind = "number"
            elif isinstance(enc, Passthrough):
                kind = "any"
            else:
                kind = "category"
            # One column can feed several encoders; the strictest kind wins.
            if columns.get(enc.column) not in ("number",):
                columns[enc.column] = kind
        return cls(columns=columns, input_dim=input_dim, feature_columns=tuple(encoder.feature_columns))


@dataclass(frozen=True)
class ParsedRequest:
    """Either raw feature rows (to be encoded by the model's encoder) or an encoded matrix."""

    rows: list[dict[str, Any]] | None = None
    matrix: np.ndarray | None = None
    request_id: str | None = None

    @property
    def num_rows(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        if self.matrix is None:
            raise ValueError("ParsedRequest has neither rows nor a matrix")
        return int(self.matrix.shape[0])


def _depth_exceeds(obj: Any, max_depth: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _path_key(name: str) -> str:
    """A client's key as a segment of an error's ``field`` path: ``.name`` when it is plain, else
    JSON-quoted in brackets, so the path stays one short line whatever the key holds.

    >>> _path_key("amount"), _path_key("a\\nb"), _path_key("x.y")
    ('.amount', '["a\\\\nb"]', '["x.y"]')
    """
    if name and name.isprintable() and len(name) <= 64 and not any(c in name for c in '.[]"'):
        return f".{name}"
    return f"[{_short(json.dumps(name))}]"


def _join(where: str, key: str) -> str:
    """``where`` and a key: ``instances[0].amount``; a top-level plain key is bare (``amount``)."""
    segment = _path_key(key)
    if where:
        return where + segment
    return segment[1:] if segment.startswith(".") else segment


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the dict, or a 400 naming a key that appears twice (JSON parsers
    disagree on which one wins, so the request is ambiguous)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RequestError(400, f"duplicate key {_short(key)!r} in a JSON object: send each key once",
                                   _short(key))
            seen.add(key)
    return out


#: ``json.loads(..., object_pairs_hook=_unique_keys)`` builds a decoder on every call; this one is shared.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


class _LongInt:
    """Stands in for an integer literal too long to convert, so that its place can be named."""

    def __init__(self, digits: int):
        self.digits = digits


def _int_or_marker(literal: str) -> int | _LongInt:
    try:
        return int(literal)
    except ValueError:
        return _LongInt(len(literal.lstrip("-")))


def _find(value: Any, kind: type, path: str = "") -> tuple[str, Any] | None:
    """The path (``instances[0].amount``) and value of the first ``kind`` instance in ``value``."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, kind):
            return where or "body", node
        if isinstance(node, dict):
            stack.extend((v, _join(where, str(k))) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None


def _long_int_error(body: bytes) -> RequestError:
    """The error for an integer literal longer than Python converts: re-parse (only on this
    error path) with a marker for such literals, and name where the first one is."""
    limit = sys.get_int_max_str_digits()
    found = _find(json.loads(body, object_pairs_hook=_unique_keys, parse_int=_int_or_marker), _LongInt)
    where, marker = found if found is not None else ("body", _LongInt(0))
    return RequestError(400, f"{where} is an integer of {marker.digits} digits; numbers must have at most {limit} "
                             f"digits and lie within +-{MAX_ABS_NUMBER:g}: send a smaller value", where)


def parse_json_body(body: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Bytes -> JSON value. 413 when too large or too deeply nested, 400 when malformed or when
    an object repeats a key.

    NaN/Infinity literals parse to floats here so that validation can name the field."""
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes} bytes: send fewer rows per request")
    if not body:
        raise RequestError(400, "request body is empty: expected a JSON object")
    try:
        value = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))  # json.loads(body), one decoder
    except RecursionError:
        raise RequestError(413, f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from None
    except ValueError:  # an integer literal longer than int() converts (sys.get_int_max_str_digits)
        try:
            error = _long_int_error(body)
        except (ValueError, RecursionError):
            error = RequestError(400, "malformed JSON: a number cannot be read")
        raise error from None
    # A value nested d deep has at least d opening brackets in its text: a body with no more
    # than max_depth of them (every one-row request) skips the walk.
    if body.count(b"[") + body.count(b"{") > max_depth and _depth_exceeds(value, max_depth):
        raise RequestError(413, f"JSON nested deeper than {max_depth} levels")
    if not isinstance(value, dict):
        raise RequestError(400, f"expected a JSON object at the top level, got {_json_type(value)}")
    return value


def _keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(_short(k)) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def _json_type(value: Any) -> str:
    """A value's JSON type name (never a Python class name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _number_error(value: Any, where: str) -> RequestError | None:
    """422 for a number a model cannot take (non-finite, or beyond +-MAX_ABS_NUMBER); None if fine."""
    if isinstance(value, float) and not math.isfinite(value):
        return RequestError(422, f"{where} is {value}; only finite numbers are allowed", where)
    if not -MAX_ABS_NUMBER <= value <= MAX_ABS_NUMBER:
        shown = f"{value:.3g}" if isinstance(value, float) else _short(str(value), 24)
        return RequestError(422, f"{where} is {shown}; numbers must lie within +-{MAX_ABS_NUMBER:g}", where)
    return None


def _check_value(value: Any, kind: str, where: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(422, f"{where} is {value}; only finite numbers are allowed", where)
    if kind == "any":
        if isinstance(value, dict | list):
            raise RequestError(422, f"{where} must be a scalar, got {_json_type(value)}", where)
        if isinstance(value, int | float) and not isinstance(value, bool) and (error := _number_error(value, where)):
            raise error
        return value
    if kind in ("number", "number_or_null"):
        if value is None and kind == "number_or_null":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(422, f"{where} must be a number, got {_json_type(value)}", where)
        if error := _number_error(value, where):
            raise error
        return value
    if value is not None and not isinstance(value, str | int | bool):  # category
        raise RequestError(422, f"{where} must be a string, integer, boolean or null, got {_json_type(value)}", where)
    return value


def _check_rows(rows: Any, schema: InputSchema, max_instances: int, where: str) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, f"'{where}' must be a non-empty list of objects", where)
    if len(rows) > max_instances:
        raise RequestError(413, f"'{where}' has {len(rows)} rows; the limit is {max_instances} per request", where)
    expected = schema.columns
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"{where}[{i}] must be an object of feature: value, got {_json_type(row)}", f"{where}[{i}]")
        if row.keys() != expected.keys():
            expected_names = set(expected)
            unknown = sorted(set(row) - expected_names)
            missing = sorted(expected_names - set(row))
            parts = []
            if unknown:
                parts.append(f"unknown features {_keys(unknown)}")
            if missing:
                parts.append(f"missing features {missing}")
            name = unknown[0] if unknown else missing[0]
            raise RequestError(422, f"{where}[{i}]: {'; '.join(parts)}; expected exactly {sorted(expected_names)}",
                               f"{where}[{i}]{_path_key(name)}")
        for name, kind in expected.items():
            _check_value(row[name], kind, f"{where}[{i}].{name}")
    return rows


def parse_v1(payload: Mapping[str, Any], schema: InputSchema, *, max_instances: int) -> ParsedRequest:
    """``{"instances": [{feature: value, ...}, ...]}`` -> raw rows (the server encodes them)."""
    unknown = sorted(set(payload) - {"instances", "id"})
    if "instances" not in payload or unknown:
        raise RequestError(400, "expected {\"instances\": [{feature: value, ...}, ...]}" +
                           (f"; unknown keys {_keys(unknown)}" if unknown else ""))
    if not schema.columns:
        raise RequestError(422, "this model version takes encoded tensors only: use POST /v2/models/{name}/infer "
                                f"with one FP32 input of shape [n, {schema.input_dim}]", "instances")
    rows = _check_rows(payload["instances"], schema, max_instances, "instances")
    return ParsedRequest(rows=rows, request_id=_request_id(payload))


def _request_id(payload: Mapping[str, Any]) -> str | None:
    rid = payload.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > 128):
        raise RequestError(422, "'id' must be a string of at most 128 characters", "id")
    return rid


_V2_KEYS = frozenset({"inputs", "id", "parameters", "outputs"})
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data"})
_V2_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_V2_TYPES = _V2_NUMERIC | {"BOOL", "BYTES"}
_MAX_RANK, _MAX_DIM = 8, 2**31 - 1


def _valid_shape(shape: Any) -> bool:
    """A list of 1 to _MAX_RANK integers (not booleans) in 0.._MAX_DIM."""
    if type(shape) is not list or not 0 < len(shape) <= _MAX_RANK:
        return False
    if len(shape) == 1:  # the common [n], without a generator
        return type(shape[0]) is int and 0 <= shape[0] <= _MAX_DIM
    return all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape)  # JSON gives exact ints; a bool is not one


def parse_v2(payload: Mapping[str, Any], schema: InputSchema, *, max_instances: int) -> ParsedRequest:
    """Open Inference Protocol v2 request -> rows or an encoded matrix.

    Two forms: one input named ``input`` (FP32/FP64, shape ``[n, input_dim]``, already encoded),
    or one input per raw feature column (shape ``[n]`` or ``[n, 1]``), encoded by the server."""
    if not payload.keys() <= _V2_KEYS:
        unknown = sorted(set(payload) - _V2_KEYS)
        raise RequestError(400, f"unknown keys {_keys(unknown)}; expected an Open Inference Protocol v2 request with 'inputs'")
    if "parameters" in payload and not isinstance(payload["parameters"], dict):
        raise RequestError(422, "'parameters' must be an object", "parameters")
    if "outputs" in payload and not isinstance(payload["outputs"], list):
        raise RequestError(422, "'outputs' must be a list of requested outputs", "outputs")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors {name, shape, datatype, data}")
    tensors: dict[str, tuple[list[int], str, list[Any]]] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object {{name, shape, datatype, data}}", f"inputs[{i}]")
        if not tensor.keys() >= _TENSOR_KEYS:
            missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
            raise RequestError(400, f"inputs[{i}] lacks {missing}", f"inputs[{i}]")
        name, shape, datatype, data = tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"]
        if not isinstance(name, str) or name in tensors:
            raise RequestError(422, f"inputs[{i}].name must be a unique string", f"inputs[{i}].name")
        if not _valid_shape(shape):
            raise RequestError(422, f"inputs[{i}].shape must be a list of 1 to {_MAX_RANK} integers in 0..{_MAX_DIM}",
                               f"{_short(name)}.shape")
        if not isinstance(datatype, str) or datatype not in _V2_TYPES:
            raise RequestError(422, f"inputs[{i}].datatype {_short(repr(datatype))} is not an OIP v2 datatype "
                                    f"({sorted(_V2_TYPES)})", f"{_short(name)}.datatype")
        if not isinstance(data, list):
            raise RequestError(422, f"inputs[{i}].data must be a flat list", f"{_short(name)}.data")
        if data and isinstance(data[0], list):
            data = [v for sub in data for v in (sub if isinstance(sub, list) else [sub])]  # row-major nested form
        if (shape[0] if len(shape) == 1 else math.prod(shape)) != len(data):
            label = _short(name)
            raise RequestError(422, f"{label}: shape {shape} does not match the {len(data)} values in data", f"{label}.shape")
        tensors[name] = (shape, datatype, data)

    if "input" in tensors and len(tensors) == 1:
        shape, datatype, data = tensors["input"]
        if datatype not in _V2_NUMERIC:
            raise RequestError(422, f"input: datatype {datatype} must be numeric (FP32)", "input.datatype")
        if len(shape) != 2 or shape[1] != schema.input_dim:
            raise RequestError(422, f"input: shape {shape} must be [n, {schema.input_dim}]", "input.shape")
        if not 1 <= shape[0] <= max_instances:
            raise RequestError(413 if shape[0] > max_instances else 422, f"input: {shape[0]} rows; allowed 1..{max_instances}", "input.shape")
        for j, v in enumerate(data):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise RequestError(422, f"input.data[{j}] is {_json_type(v)}; expected a finite number", f"input.data[{j}]")
            if error := _number_error(v, f"input.data[{j}]"):
                raise error
        return ParsedRequest(matrix=np.asarray(data, dtype=np.float32).reshape(shape), request_id=_request_id(payload))

    if not schema.columns:
        raise RequestError(422, f"this model version takes one input named 'input' of shape [n, {schema.input_dim}]", "inputs")
    if tensors.keys() != schema.columns.keys():
        expected = set(schema.columns)
        unknown_names, missing_names = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        field_name = _short((unknown_names or missing_names)[0])
        raise RequestError(422, f"inputs: unknown {_keys(unknown_names)}, missing {missing_names}; expected one tensor per "
                                f"feature {sorted(expected)} or one 'input' of shape [n, {schema.input_dim}]", field_name)
    counts = [shape[0] for shape, _, _ in tensors.values()]
    num_rows = counts[0]
    if counts.count(num_rows) != len(counts):
        lengths = {name: shape[0] for name, (shape, _, _) in tensors.items()}
        raise RequestError(422, f"inputs have different row counts {dict(list(lengths.items())[:5])}",
                           _short(next(iter(lengths))))
    for name, (shape, _, _) in tensors.items():
        if len(shape) > 1 and (len(shape) > 2 or shape[1] != 1):
            raise RequestError(422, f"{name}: shape {shape} must be [n] or [n, 1]", f"{name}.shape")
    rows = [{name: tensor[2][i] for name, tensor in tensors.items()} for i in range(num_rows)]
    return ParsedRequest(rows=_check_rows(rows, schema, max_instances, "inputs"), request_id=_request_id(payload))
