"""Parsing and validating inference requests: pure functions, no Ray, no HTTP framework.

Everything a client can get wrong is caught here and turned into a :class:`RequestError`
with the HTTP status, a message naming the offending field, and the field itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RequestError", "InputSchema", "parse_json_body", "parse_v1", "parse_v2", "ParsedRequest"]


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


def parse_json_body(body: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Bytes -> JSON value. 413 when too large or too deeply nested, 400 when malformed.

    NaN/Infinity literals parse to floats here so that validation can name the field."""
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes} bytes: send fewer rows per request")
    if not body:
        raise RequestError(400, "request body is empty: expected a JSON object")
    try:
        value = json.loads(body)
    except RecursionError:
        raise RequestError(413, f"JSON nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    if _depth_exceeds(value, max_depth):
        raise RequestError(413, f"JSON nested deeper than {max_depth} levels")
    if not isinstance(value, dict):
        raise RequestError(400, f"expected a JSON object at the top level, got {type(value).__name__}")
    return value


def _check_value(value: Any, kind: str, where: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(422, f"{where} is {value}; only finite numbers are allowed", where)
    if kind == "any":
        if isinstance(value, dict | list):
            raise RequestError(422, f"{where} must be a scalar, got {type(value).__name__}", where)
        return value
    if kind in ("number", "number_or_null"):
        if value is None and kind == "number_or_null":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(422, f"{where} must be a number, got {_type_name(value)}", where)
        return value
    if value is not None and not isinstance(value, str | int | bool):  # category
        raise RequestError(422, f"{where} must be a string, integer, boolean or null, got {_type_name(value)}", where)
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_rows(rows: Any, schema: InputSchema, max_instances: int, where: str) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, f"'{where}' must be a non-empty list of objects", where)
    if len(rows) > max_instances:
        raise RequestError(413, f"'{where}' has {len(rows)} rows; the limit is {max_instances} per request", where)
    expected = schema.columns
    expected_names = set(expected)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"{where}[{i}] must be an object of feature: value, got {_type_name(row)}", f"{where}[{i}]")
        if row.keys() != expected_names:
            unknown = sorted(set(row) - expected_names)
            missing = sorted(expected_names - set(row))
            parts = []
            if unknown:
                parts.append(f"unknown features {unknown}")
            if missing:
                parts.append(f"missing features {missing}")
            name = unknown[0] if unknown else missing[0]
            raise RequestError(422, f"{where}[{i}]: {'; '.join(parts)}; expected exactly {sorted(expected_names)}",
                               f"{where}[{i}].{name}")
        for name, kind in expected.items():
            _check_value(row[name], kind, f"{where}[{i}].{name}")
    return rows


def parse_v1(payload: Mapping[str, Any], schema: InputSchema, *, max_instances: int) -> ParsedRequest:
    """``{"instances": [{feature: value, ...}, ...]}`` -> raw rows (the server encodes them)."""
    unknown = sorted(set(payload) - {"instances", "id"})
    if "instances" not in payload or unknown:
        raise RequestError(400, "expected {\"instances\": [{feature: value, ...}, ...]}" +
                           (f"; unknown keys {unknown}" if unknown else ""))
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


_V2_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_V2_TYPES = _V2_NUMERIC | {"BOOL", "BYTES"}


def parse_v2(payload: Mapping[str, Any], schema: InputSchema, *, max_instances: int) -> ParsedRequest:
    """Open Inference Protocol v2 request -> rows or an encoded matrix.

    Two forms: one input named ``input`` (FP32/FP64, shape ``[n, input_dim]``, already encoded),
    or one input per raw feature column (shape ``[n]`` or ``[n, 1]``), encoded by the server."""
    unknown = sorted(set(payload) - {"inputs", "id", "parameters", "outputs"})
    if unknown:
        raise RequestError(400, f"unknown keys {unknown}; expected an Open Inference Protocol v2 request with 'inputs'")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors {name, shape, datatype, data}")
    tensors: dict[str, tuple[list[int], str, list[Any]]] = {}
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise RequestError(400, f"{where} must be an object {{name, shape, datatype, data}}", where)
        missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
        if missing:
            raise RequestError(400, f"{where} lacks {missing}", where)
        name, shape, datatype, data = tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"]
        if not isinstance(name, str) or name in tensors:
            raise RequestError(422, f"{where}.name must be a unique string", f"{where}.name")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise RequestError(422, f"{where}.shape must be a list of non-negative integers", f"{name}.shape")
        if datatype not in _V2_TYPES:
            raise RequestError(422, f"{where}.datatype {datatype!r} is not an OIP v2 datatype ({sorted(_V2_TYPES)})", f"{name}.datatype")
        if not isinstance(data, list):
            raise RequestError(422, f"{where}.data must be a flat list", f"{name}.data")
        if data and isinstance(data[0], list):
            data = [v for sub in data for v in (sub if isinstance(sub, list) else [sub])]  # row-major nested form
        if math.prod(shape) != len(data):
            raise RequestError(422, f"{name}: shape {shape} holds {math.prod(shape)} values but data has {len(data)}", f"{name}.shape")
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
            if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not math.isfinite(v)):
                raise RequestError(422, f"input.data[{j}] is {v!r}; expected a finite number", f"input.data[{j}]")
        return ParsedRequest(matrix=np.asarray(data, dtype=np.float32).reshape(shape), request_id=_request_id(payload))

    if not schema.columns:
        raise RequestError(422, f"this model version takes one input named 'input' of shape [n, {schema.input_dim}]", "inputs")
    expected = set(schema.columns)
    if set(tensors) != expected:
        unknown_names, missing_names = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        field_name = (unknown_names or missing_names)[0]
        raise RequestError(422, f"inputs: unknown {unknown_names}, missing {missing_names}; expected one tensor per "
                                f"feature {sorted(expected)} or one 'input' of shape [n, {schema.input_dim}]", field_name)
    lengths = {name: shape[0] for name, (shape, _, _) in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise RequestError(422, f"inputs have different row counts {lengths}", next(iter(lengths)))
    for name, (shape, _, _) in tensors.items():
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(422, f"{name}: shape {shape} must be [n] or [n, 1]", f"{name}.shape")
    num_rows = next(iter(lengths.values()))
    rows = [{name: tensors[name][2][i] for name in tensors} for i in range(num_rows)]
    return ParsedRequest(rows=_check_rows(rows, schema, max_instances, "inputs"), request_id=_request_id(payload))
