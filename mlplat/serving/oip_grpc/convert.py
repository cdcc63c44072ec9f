"""OIP v2 gRPC messages <-> the forms the HTTP path works with: pure functions, no Ray.

A ``ModelInferRequest`` becomes the JSON-form request (``{"id", "inputs": [{name, shape,
datatype, data}]}``) that :func:`mlplat.serving.request.parse_v2` validates, so gRPC and HTTP
share one validator: ``raw_input_contents`` is decoded as the HTTP binary tensor extension's
bytes are (little-endian, row-major; BOOL one byte; BYTES a 4-byte length then the bytes),
typed contents are read from the one field of the input's datatype. Every error is a
:class:`~mlplat.serving.request.RequestError` naming the input, as over HTTP;
:func:`status_code` maps its HTTP status to the gRPC status code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import grpc

from mlplat.serving.infer_call import InferAnswer
from mlplat.serving.oip_binary import decode_tensor, encode_tensor
from mlplat.serving.oip_grpc import grpc_service_pb2 as pb
from mlplat.serving.request import RequestError

__all__ = ["CONTENTS_FIELD", "status_code", "call_headers", "model_version", "payload_of", "infer_response",
           "metadata_response"]

#: The ``InferTensorContents`` field of each datatype (FP16 has none: raw_input_contents only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED, 408: grpc.StatusCode.DEADLINE_EXCEEDED, 409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP status the ingress answers (400 and 422: INVALID_ARGUMENT,
    401: UNAUTHENTICATED, 404: NOT_FOUND, 413: RESOURCE_EXHAUSTED, 503: UNAVAILABLE, ...).

    >>> status_code(422).name, status_code(404).name, status_code(418).name, status_code(500).name
    ('INVALID_ARGUMENT', 'NOT_FOUND', 'INVALID_ARGUMENT', 'INTERNAL')
    """
    if http_status in _STATUS:
        return _STATUS[http_status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL


def call_headers(metadata: Iterable[tuple[str, Any]]) -> tuple[dict[str, str], list[tuple[bytes, bytes]]]:
    """gRPC invocation metadata -> (lower-case name -> first value, all (name, value) pairs as
    bytes): the ``headers`` and ``raw_headers`` of an InferCall. Binary (``-bin``) entries are
    left out.

    >>> call_headers([("authorization", "Bearer t"), ("x-mlplat-context-tenant", "acme"), ("k-bin", b"\\x00")])
    ({'authorization': 'Bearer t', 'x-mlplat-context-tenant': 'acme'}, [(b'authorization', b'Bearer t'), \
(b'x-mlplat-context-tenant', b'acme')])
    """
    headers: dict[str, str] = {}
    raw: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        if not isinstance(value, str):
            continue
        name = key.lower()
        headers.setdefault(name, value)
        raw.append((name.encode("utf-8", "replace"), value.encode("utf-8", "replace")))
    return headers, raw


def model_version(text: str) -> int | None:
    """A request's ``version``/``model_version``: empty -> None (the production version), else
    a positive integer (a 400 naming ``version`` otherwise, as over HTTP).

    >>> model_version(""), model_version("3")
    (None, 3)
    """
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0):
        raise RequestError(400, f"version {text[:32]!r} must be a positive integer", "version")
    return int(text)


def _decode_raw(raw: bytes, spec: dict[str, Any], label: str, index: int) -> list[Any]:
    """One input's ``raw_input_contents[index]`` -> its flat values, with the HTTP binary
    extension's decoder; its errors name ``raw_input_contents[index]`` instead of the HTTP
    form's ``binary_data_size``."""
    try:
        return decode_tensor(raw, spec, label)
    except RequestError as exc:
        where = f"raw_input_contents[{index}]"
        raise RequestError(exc.status, exc.message.replace("binary_data_size", f"the size of {where}"),
                           (exc.field or label).replace("parameters.binary_data_size", "raw_input_contents")) from None


def _typed(tensor: Any, label: str) -> list[Any]:
    """One input's typed contents -> its flat values: only the field of its datatype may be set."""
    datatype = tensor.datatype
    present = [field.name for field, _ in tensor.contents.ListFields()]
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if present and datatype == "FP16":
            raise RequestError(422, f"{label}: FP16 has no typed contents field: send it in raw_input_contents",
                               f"{label}.contents")
        return []  # an unknown datatype: parse_v2 names it
    other = [name for name in present if name != field]
    if other:
        raise RequestError(422, f"{label}: datatype {datatype} takes contents.{field}, got contents.{other[0]}",
                           f"{label}.contents")
    values = list(getattr(tensor.contents, field))
    shape = list(tensor.shape)
    if all(d >= 0 for d in shape) and math.prod(shape) != len(values):
        raise RequestError(422, f"{label}: shape {shape} does not match the {len(values)} values in contents.{field}",
                           f"{label}.shape")
    if datatype == "BYTES":
        for j, value in enumerate(values):
            try:
                values[j] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(400, f"{label}: element {j} is not UTF-8 text", f"{label}[{j}]") from None
    return values


def payload_of(request: Any) -> dict[str, Any]:
    """A ``ModelInferRequest`` -> the JSON-form OIP v2 request (``id`` when it has one). Either
    every input comes in ``raw_input_contents`` (one entry per input, in input order: what
    tritonclient sends) and none has ``contents``, or none does."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send "
                                "one per input, in input order, or none (typed contents)", "raw_input_contents")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        label = tensor.name[:64] or f"inputs[{i}]"
        spec: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        if raw:
            if tensor.contents.ListFields():
                raise RequestError(400, f"{label} has both contents and raw_input_contents[{i}]: send one",
                                   f"{label}.contents")
            spec["data"] = _decode_raw(raw[i], spec, label, i)
        else:
            spec["data"] = _typed(tensor, label)
        inputs.append(spec)
    payload: dict[str, Any] = {"inputs": inputs}
    if request.id:
        payload["id"] = request.id
    return payload


def infer_response(answer: InferAnswer) -> Any:
    """The ``ModelInferResponse``: the ``predictions`` output, its values in
    ``raw_output_contents`` (as Triton answers; tritonclient's ``as_numpy`` reads them)."""
    datatype, shape, values = answer.output()
    return pb.ModelInferResponse(
        model_name=answer.name, model_version=str(answer.version), id=answer.request_id,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="predictions", datatype=datatype, shape=shape)],
        raw_output_contents=[encode_tensor(values, datatype)])


def metadata_response(document: dict[str, Any]) -> Any:
    """The HTTP metadata document -> ``ModelMetadataResponse`` (which has no ``parameters``:
    the task and placement are HTTP-only)."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=document["name"], versions=document["versions"], platform=document["platform"],
        inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in document["inputs"]],
        outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in document["outputs"]])
