"""The ingress's HTTP surface: the FastAPI app, its one error body ``{"error", "field"}`` for
every failure (routing and framework errors included), and the OpenAPI document.

The OpenAPI parts are declarations only: the handlers read and parse raw bodies themselves
(request.py), so the request path never validates against these schemas. They describe what
the parser accepts and every status the ingress answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from mlplat.errors import (
    ConfigError,
    ConflictError,
    InvalidName,
    InvalidTransition,
    MlplatError,
    NotFound,
    ValidationError,
)
from mlplat.serving.admission import retry_after_headers
from mlplat.serving.request import MAX_ABS_NUMBER, RequestError

__all__ = ["http_app", "error_response", "docs_html", "CATCH_ALL", "openapi_document", "allowed_methods",
           "status_of", "unmatched_response",
           "ERROR_SCHEMA", "V1_PREDICT_DOC", "V2_INFER_DOC", "METADATA_DOC", "READY_DOC", "LIVE_DOC",
           "HEALTH_READY_DOC", "ROLLBACK_DOC", "DEPLOYMENTS_DOC"]

log = logging.getLogger("mlplat.serving")

http_app = FastAPI(
    title="mlplat inference",
    version="1",
    description="Open Inference Protocol v2 and a simple v1 predict over raw features. "
                "Every route but /v2/health/* needs `Authorization: Bearer <token>`; "
                "/admin/* needs the admin token instead. Every error is `{\"error\": ..., \"field\": ...}`.",
    # the Ingress serves these itself, behind the token unless serve.public_docs
    openapi_url=None, docs_url=None, redoc_url=None,
)
#: The catch-all route's path (answers 405, 400 or 404 for what no declared route takes).
CATCH_ALL = "/{path:path}"


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body of the API; a 503 carries ``Retry-After``."""
    return JSONResponse(RequestError(status, message, field).body(), status_code=status,
                        headers={**retry_after_headers(status, 1), **(headers or {})})

#: Every 4xx and 503 body (and nothing else: no stack traces, paths or class names).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "What is wrong and what to do about it."},
        "field": {"type": "string", "description": "The offending input: a path or query parameter, a JSON path "
                                                   "(`instances[0].amount`, `amount.shape`) or a JSON key."},
    },
}

_STATUS_TEXT = {
    400: "Malformed request: bad JSON, a wrong top-level shape, a repeated JSON key, an invalid model name or "
         "version.",
    401: "Missing or wrong bearer token.",
    404: "Unknown model or version, or the model has no production version.",
    408: "The request body did not arrive within `serve.body_read_timeout_s`.",
    409: "Somebody changed the model first: re-read and retry.",
    413: "Body over `serve.max_request_bytes`, JSON nested deeper than `serve.max_json_depth`, or more rows "
         "than `serve.max_instances`.",
    422: f"Wrong features, tensor shape or datatype, or a value a model cannot take (non-finite, beyond "
         f"+-{MAX_ABS_NUMBER:g}); `field` names it.",
    503: "The server or the model cannot answer now (at capacity, loading failed, backend restarting): retry "
         "after `Retry-After` seconds.",
}

_SCALAR = {"type": ["number", "string", "boolean", "null"]}
_REQUEST_ID = {"type": ["string", "null"], "maxLength": 128,
               "description": "Echoed as the response's `id` and the telemetry's request id."}

V1_REQUEST: dict[str, Any] = {
    "type": "object", "required": ["instances"], "additionalProperties": False,
    "properties": {
        "instances": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": _SCALAR},
                      "description": "Raw feature rows: exactly the model's features (GET /v2/models/{name} lists "
                                     "them); the server applies the fitted encoder."},
        "id": _REQUEST_ID,
    },
}

_DATATYPES = ["BOOL", "BYTES", "FP16", "FP32", "FP64", "INT16", "INT32", "INT64", "INT8", "UINT16", "UINT32",
              "UINT64", "UINT8"]

V2_REQUEST: dict[str, Any] = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "description": "Open Inference Protocol v2: one tensor per raw feature (shape [n] or [n, 1]), or one tensor "
                   "named `input` (shape [n, input_dim], already encoded).",
    "properties": {
        "id": _REQUEST_ID,
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "minItems": 1, "maxItems": 8,
                          "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}},
                "datatype": {"enum": _DATATYPES},
                "data": {"type": "array", "description": "Flat, or nested row-major."},
            }}},
        "parameters": {"type": "object"},
        "outputs": {"type": "array"},
    },
}

_VERSION_STRING = {"type": "string", "pattern": "^[1-9][0-9]*$"}
_PREDICTION = {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]}

V1_RESPONSE: dict[str, Any] = {
    "type": "object", "required": ["model_name", "model_version", "predictions"],
    "properties": {"model_name": {"type": "string"}, "model_version": _VERSION_STRING,
                   "predictions": {"type": "array", "items": _PREDICTION}},
}

V2_RESPONSE: dict[str, Any] = {
    "type": "object", "required": ["model_name", "model_version", "id", "outputs"],
    "properties": {
        "model_name": {"type": "string"}, "model_version": _VERSION_STRING, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                           "datatype": {"type": "string"}, "data": {"type": "array", "items": {"type": "number"}}}}},
    },
}

_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                               "shape": {"type": "array", "items": {"type": "integer"}}}}

METADATA_RESPONSE: dict[str, Any] = {
    "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs", "parameters"],
    "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": _VERSION_STRING},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR_META},
        "outputs": {"type": "array", "items": _TENSOR_META},
        "parameters": {"type": "object", "required": ["task", "placement"],
                       "properties": {"task": {"type": "string"}, "placement": {"type": "string"}}},
    },
}

READY_RESPONSE: dict[str, Any] = {"type": "object", "required": ["name", "ready"],
                                  "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}

ROLLBACK_RESPONSE: dict[str, Any] = {
    "type": "object", "required": ["name", "region", "production", "state"],
    "properties": {"name": {"type": "string"}, "region": {"type": ["string", "null"]},
                   "production": {"type": "integer"}, "state": {"type": "string"}},
}

DEPLOYMENTS_RESPONSE: dict[str, Any] = {
    "type": "object", "required": ["replica", "target", "region", "models", "loaded", "pinned", "prewarmed"],
}

_VERSION_HEADER = {"x-mlplat-model-version": {"description": "The model version that answered.", "required": True,
                                              "schema": _VERSION_STRING}}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required JSON request body (the handler reads it raw)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


def _responses(ok: dict[str, Any] | None, *errors: int, version_header: bool = False) -> dict[int | str, Any]:
    """A route's ``responses``: 200 with ``ok`` as its schema, and each error status with the
    error body (declaring 422 also replaces FastAPI's default ``{"detail": [...]}`` one)."""
    out: dict[int | str, Any] = {}
    if ok is not None:
        out[200] = {"description": "OK", "content": {"application/json": {"schema": ok}}}
        if version_header:
            out[200]["headers"] = _VERSION_HEADER
    for status in errors:
        out[status] = {"description": _STATUS_TEXT[status],
                       "content": {"application/json": {"schema": _ERROR_REF}}}
    return out


_BINARY_REQUEST = (
    "With the binary tensor data extension (what tritonclient sends by default), the body is this JSON followed "
    "by raw tensor bytes: the header `Inference-Header-Content-Length` gives the JSON's length in bytes, and each "
    "input sent so has `parameters.binary_data_size` (its bytes, in input order; little-endian, row-major; BYTES "
    "elements are a 4-byte little-endian length and the bytes) instead of `data`. Framing errors are 400s naming "
    "the input.")


def _with_binary_output(responses: dict[int | str, Any]) -> dict[int | str, Any]:
    """The v2 200 answer's second form: binary outputs, when the request asks for them."""
    responses[200]["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    responses[200]["description"] = (
        "OK. `application/octet-stream` when the request asks for binary outputs (`parameters.binary_data_output: "
        "true`, or `binary_data: true` on the requested output): the response JSON, then each output's bytes "
        "(`parameters.binary_data_size` on it).")
    responses[200]["headers"] = {**responses[200].get("headers", {}), "Inference-Header-Content-Length": {
        "description": "With binary outputs: the length in bytes of the JSON that starts the body.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return responses


_INFER_ERRORS = (400, 401, 404, 408, 413, 422, 503)
_HEALTH_READY = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}

#: Keyword arguments of each route's decorator: what it declares in the OpenAPI document.
V1_PREDICT_DOC: dict[str, Any] = {
    "responses": _responses(V1_RESPONSE, *_INFER_ERRORS, version_header=True),
    "openapi_extra": _json_body(V1_REQUEST, "Raw feature rows.")}
V2_INFER_DOC: dict[str, Any] = {
    "responses": _with_binary_output(_responses(V2_RESPONSE, *_INFER_ERRORS, version_header=True)),
    "openapi_extra": _json_body(V2_REQUEST, "An Open Inference Protocol v2 inference request. " + _BINARY_REQUEST)}
METADATA_DOC: dict[str, Any] = {"responses": _responses(METADATA_RESPONSE, 400, 401, 404, 503, version_header=True)}
READY_DOC: dict[str, Any] = {"responses": _responses(READY_RESPONSE, 400, 401, 404, 503, version_header=True)}
LIVE_DOC: dict[str, Any] = {"responses": _responses({"type": "object", "required": ["live"],
                                                     "properties": {"live": {"type": "boolean"}}})}
HEALTH_READY_DOC: dict[str, Any] = {"responses": {
    200: {"description": "Ready", "content": {"application/json": {"schema": _HEALTH_READY}}},
    503: {"description": "Not ready yet: the routes are not loaded",
          "content": {"application/json": {"schema": {"anyOf": [_HEALTH_READY, _ERROR_REF]}}}}}}
ROLLBACK_DOC: dict[str, Any] = {"responses": _responses(ROLLBACK_RESPONSE, 400, 401, 404, 409, 503)}
DEPLOYMENTS_DOC: dict[str, Any] = {"responses": _responses(DEPLOYMENTS_RESPONSE, 401, 503)}


def openapi_document(app: Any) -> dict[str, Any]:
    """The app's OpenAPI document with the error schema and the two bearer schemes
    (``bearer``: ``MLPLAT_API_TOKEN``, everything but health; ``admin``: ``MLPLAT_ADMIN_TOKEN``, /admin/*)."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "MLPLAT_API_TOKEN"},
        "admin": {"type": "http", "scheme": "bearer", "description": "MLPLAT_ADMIN_TOKEN"},
    }
    doc["security"] = [{"bearer": []}]
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            # FastAPI's default 422 ({"detail": [...]}) where a route declares none: never answered,
            # since its parameter errors are 400s with the error body (the handler below)
            default_422 = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(default_422.get("content", {})):
                del operation["responses"]["422"]
            if path.startswith("/v2/health/"):
                operation["security"] = []
            elif path.startswith("/admin/"):
                operation["security"] = [{"admin": []}]
    return doc


def _leaf_routes(routes: Iterable[Any]) -> Iterable[Any]:
    """The routes themselves: FastAPI nests included routers (Serve includes the class's
    routes so) in nodes that hold the original router; mlplat includes none with a prefix."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def allowed_methods(routes: Iterable[Any], scope: MutableMapping[str, Any], *, skip_path: str | None = None) -> list[str]:
    """The methods of the declared routes whose path matches ``scope`` (none: the path is
    unknown). ``skip_path``: the catch-all route's path, which matches every path.

    >>> from starlette.routing import Route
    >>> async def f(request): ...
    >>> allowed_methods([Route("/a/{x}", f, methods=["POST"])], {"type": "http", "path": "/a/1", "method": "GET"})
    ['POST']
    """
    from starlette.routing import Match

    methods: set[str] = set()
    for route in _leaf_routes(routes):
        if getattr(route, "path", None) == skip_path or not getattr(route, "methods", None):
            continue
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


def docs_html(doc: dict[str, Any]) -> HTMLResponse:
    """Swagger UI with the document inline, so the page needs no second, unauthenticated fetch."""
    return get_swagger_ui_html(openapi_url="", title=f"{doc['info']['title']} - docs",
                               swagger_ui_parameters={"spec": doc})


@http_app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # never a 500 stack trace
    log.exception("unexpected error on %s", request.url.path)
    return error_response(503, "internal error; the request was not processed: retry, or call the operator if "
                               "it persists")


@http_app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Errors of the routing itself (a 405 for HEAD on a GET route): the same JSON body."""
    return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


@http_app.exception_handler(RequestValidationError)
async def _invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own parameter checks answer like every other bad input: 400 naming the field."""
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query", "header", "body")) or None
    return error_response(400, f"invalid {field or 'request'}: {first.get('msg', 'bad value')}", field)


def status_of(exc: MlplatError) -> int:
    """The HTTP status of a platform error raised by a control route."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ConflictError | InvalidTransition):
        return 409
    if isinstance(exc, InvalidName | ConfigError | ValidationError):
        return 400
    return 503


def unmatched_response(request: Request, path: str) -> JSONResponse:
    """What no declared route takes: a known path with another method is a 405 naming the
    allowed ones (``Allow``); a model path whose name does not parse (traversal, encoded
    slashes) a 400; anything else a 404. All with the one error body."""
    allowed = allowed_methods(request.app.router.routes, request.scope, skip_path=CATCH_ALL)
    if allowed:
        return error_response(405, f"{request.method} is not allowed here; use {', '.join(allowed)}",
                              headers={"Allow": ", ".join(allowed)})
    parts = path.split("/")
    shown = path if len(path) <= 80 else path[:80] + "..."
    if len(parts) >= 3 and parts[0] in ("v1", "v2") and parts[1] == "models":
        return error_response(400, f"invalid model path {shown!r}: model names match ^[a-z][a-z0-9_-]{{0,62}}$",
                              "name")
    return error_response(404, f"no route {shown!r}; the API is described at /openapi.json")
