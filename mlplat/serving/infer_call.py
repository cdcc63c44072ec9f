"""One inference request as the ingress's transport-neutral core sees it -- from an HTTP route
or a gRPC method -- and the answer the core gives back. Pure: no Ray, no web framework."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["InferCall", "InferAnswer", "OUTPUT_DATATYPE", "first_row", "header_map", "metadata_document"]

#: The datatype of the ``predictions`` output, by task.
OUTPUT_DATATYPE = {"regression": "FP32", "binary": "FP32", "multiclass": "FP32"}


def header_map(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI raw headers -> ``{lower-case name: first value}`` (latin-1, as Starlette decodes
    them), built once per request: Starlette's ``Headers.get`` scans the whole list each call.

    >>> header_map([(b"Authorization", b"Bearer t"), (b"x-request-id", b"a"), (b"x-request-id", b"b")])
    {'authorization': 'Bearer t', 'x-request-id': 'a'}
    """
    out: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.decode("latin-1").lower()
        if key not in out:
            out[key] = value.decode("latin-1")
    return out


@dataclass(frozen=True)
class InferCall:
    """What the core needs from a transport.

    ``endpoint``: ``v1``/``v2`` (HTTP) or ``grpc``, as telemetry records it (v1 parses
    ``{"instances": ...}``, the others the OIP v2 form). ``headers``: lower-case names to the
    first value (``authorization``, ``x-mlplat-caller``, ``user-agent``, ``x-request-id``);
    ``raw_headers``: every (name, value) pair, for the ``x-mlplat-context-*`` call context.
    ``read_payload``: reads the request into its JSON form (a dict), raising ``RequestError``;
    called once, after the token check and the route's resolution."""

    endpoint: str
    headers: Mapping[str, str]
    raw_headers: Iterable[tuple[bytes, bytes]]
    read_payload: Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class InferAnswer:
    """An answered request: the version that answered, the request id telemetry recorded,
    the OIP ``id`` the request carried (None: none) and ``binary_out`` (HTTP v2 only: the
    client asked for binary outputs)."""

    name: str
    version: int
    task: str
    request_id: str
    oip_id: str | None
    predictions: list[Any]
    binary_out: bool = False

    def output(self) -> tuple[str, list[int], list[Any]]:
        """The ``predictions`` output tensor: datatype, shape (``[n]``, or ``[n, classes]``)
        and the values, flat and row-major.

        >>> InferAnswer("m", 1, "multiclass", "r", None, [[0.25, 0.75], [1.0, 0.0]]).output()
        ('FP32', [2, 2], [0.25, 0.75, 1.0, 0.0])
        >>> InferAnswer("m", 1, "binary", "r", None, [0.5]).output()
        ('FP32', [1], [0.5])
        """
        predictions = self.predictions
        nested = bool(predictions) and isinstance(predictions[0], list)
        shape = [len(predictions)] + ([len(predictions[0])] if nested else [])
        flat = [v for p in predictions for v in p] if nested else predictions
        return OUTPUT_DATATYPE[self.task], shape, flat


def first_row(payload: Any, key_feature: str | None) -> dict[str, Any] | None:
    """The first v1 instance (or the key feature's first v2 value) for sticky canary keys."""
    if not isinstance(payload, dict):
        return None
    instances = payload.get("instances")
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        return instances[0]
    inputs = payload.get("inputs")
    if key_feature and isinstance(inputs, list):
        for tensor in inputs:
            if isinstance(tensor, dict) and tensor.get("name") == key_feature and isinstance(tensor.get("data"), list) \
                    and tensor["data"]:
                first = tensor["data"][0]
                return {key_feature: first[0] if isinstance(first, list) and first else first}
    return None


def metadata_document(name: str, version: int, schema: Any, *, task: str, placement: str) -> dict[str, Any]:
    """A version's OIP v2 metadata: one input per raw feature (FP32 for numbers, BYTES for
    the rest), or the encoded ``input`` when it takes no raw features; ``schema``: its
    :class:`~mlplat.serving.request.InputSchema`."""
    if schema.columns:
        inputs = [{"name": col, "datatype": "FP32" if kind.startswith("number") else "BYTES", "shape": [-1]}
                  for col, kind in schema.columns.items()]
    else:
        inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, schema.input_dim]}]
    return {"name": name, "versions": [str(version)], "platform": "mlplat-torch", "inputs": inputs,
            "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [-1]}],
            "parameters": {"task": task, "placement": placement}}
