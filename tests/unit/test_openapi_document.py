"""The ingress's OpenAPI document, built from the app without Ray: valid, a body for every
POST, the real error body for every error status, and request schemas that accept what the
parser accepts (and refuse what it refuses)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from mlplat.serving import http_api
from mlplat.serving.ingress import http_app
from mlplat.serving.request import InputSchema, RequestError, parse_v1, parse_v2

SCHEMA = InputSchema(columns={"amount": "number", "age": "number_or_null", "country": "category"}, input_dim=6)
ROW = {"amount": 12.5, "age": None, "country": "fr"}


@pytest.fixture(scope="module")
def doc() -> dict:
    return http_api.openapi_document(http_app)


def test_the_document_is_valid_openapi_and_declares_no_fastapi_default(doc):
    from openapi_spec_validator import validate

    validate(doc)
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text and '"detail"' not in text
    assert "/openapi.json" not in doc["paths"] and "/docs" not in doc["paths"]


def test_every_operation_declares_its_body_errors_and_auth(doc):
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if method == "post" and not path.startswith("/admin/"):
                assert op["requestBody"]["required"] is True, path
            errors = {s: r for s, r in op["responses"].items() if s >= "400"}
            for status, response in errors.items():
                schema = response["content"]["application/json"]["schema"]
                assert "#/components/schemas/Error" in json.dumps(schema), (path, status)
            if path.startswith("/v2/health/"):
                assert op["security"] == []
            else:
                assert "401" in op["responses"] and op.get("security", doc["security"]) in (
                    [{"bearer": []}], [{"admin": []}])
    assert doc["components"]["schemas"]["Error"]["additionalProperties"] is False


@pytest.mark.parametrize(("body", "parse", "schema_of"), [
    ({"instances": [ROW, {**ROW, "age": 3}], "id": "r1"}, parse_v1, http_api.V1_REQUEST),
    ({"inputs": [{"name": "amount", "shape": [1], "datatype": "FP32", "data": [1.0]},
                 {"name": "age", "shape": [1, 1], "datatype": "FP32", "data": [[30]]},
                 {"name": "country", "shape": [1], "datatype": "BYTES", "data": ["fr"]}],
      "parameters": {}, "outputs": []}, parse_v2, http_api.V2_REQUEST),
    ({"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [[0.1] * 6]}]}, parse_v2,
     http_api.V2_REQUEST),
])
def test_what_the_parser_accepts_the_schema_accepts(body, parse, schema_of):
    parse(body, SCHEMA, max_instances=10)
    jsonschema.validate(body, schema_of)


@pytest.mark.parametrize(("body", "parse", "schema_of"), [
    ({"instances": []}, parse_v1, http_api.V1_REQUEST),
    ({"instances": [ROW], "extra": 1}, parse_v1, http_api.V1_REQUEST),
    ({"instances": [ROW], "id": 7}, parse_v1, http_api.V1_REQUEST),
    ({"inputs": []}, parse_v2, http_api.V2_REQUEST),
    ({"inputs": [{"name": "amount", "shape": [-1], "datatype": "FP32", "data": [1.0]}]}, parse_v2,
     http_api.V2_REQUEST),
    ({"inputs": [{"name": "amount", "shape": [1], "datatype": "FP8", "data": [1.0]}]}, parse_v2, http_api.V2_REQUEST),
    ({"inputs": [{"name": "amount", "shape": [1], "datatype": "FP32", "data": [1.0]}], "parameters": 1}, parse_v2,
     http_api.V2_REQUEST),
])
def test_what_the_schema_refuses_the_parser_refuses(body, parse, schema_of):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema_of)
    with pytest.raises(RequestError) as info:
        parse(body, SCHEMA, max_instances=10)
    assert 400 <= info.value.status < 500


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/v2/health/live", ["GET"]), ("GET", "/v1/models/churn:predict", ["POST"]),
    ("POST", "/openapi.json", ["GET"]), ("DELETE", "/v2/models/churn/versions/2", ["GET"]), ("GET", "/nope", []),
])
def test_the_methods_a_known_path_allows_are_found_in_the_served_app(method, path, allowed):
    """Serve nests the class's routes in an included router: the 405 decision looks inside."""
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    assert http_api.allowed_methods(http_app.router.routes, scope, skip_path=http_api.CATCH_ALL) == allowed


@pytest.mark.parametrize("public_docs", [False, True])
def test_the_document_and_docs_need_the_token_unless_public_docs(tmp_path, public_docs):
    """The Ingress's own handlers, outside Serve (the document needs no model or registry)."""
    import asyncio

    from starlette.requests import Request

    from mlplat.config import PlatformConfig
    from tests.unit.test_serving_routes import ingress_outside_serve

    config = PlatformConfig(root=str(tmp_path / "root"), api_token="unit-token",
                            serve={"public_docs": public_docs, "telemetry": False, "metrics": False})

    def request(path: str, token: str | None) -> Request:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        return Request({"type": "http", "method": "GET", "path": path, "headers": headers, "app": http_app,
                        "query_string": b""})

    async def answers() -> list[int]:
        ingress = ingress_outside_serve(config, "no-actor-needed", None, {}, reader=object())
        return [(await handler(request(path, token))).status_code
                for handler, path in ((ingress.openapi_json, "/openapi.json"), (ingress.docs, "/docs"))
                for token in (None, "wrong", "unit-token")]

    assert asyncio.run(answers()) == ([200] * 6 if public_docs else [401, 401, 200] * 2)
