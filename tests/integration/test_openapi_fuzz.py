"""The ingress's OpenAPI document against the live Serve app (shared Ray instance, a real
registry actor and bundle): schemathesis with every check and fuzzed request bodies finds
nothing; the document and /docs need the token; undeclared methods are a 405 with Allow;
bad bodies over HTTP are 4xx with only ``{"error", "field"}``."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

pytestmark = pytest.mark.ray

TOKEN = "fuzz-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Bounded: examples per operation and generation mode, and a hard stop for the whole run.
MAX_EXAMPLES, MAX_RUN_S = 60, 300

#: Every check but max_response_time (the suite asserts no timings), with one reasoned exception
#: in what "accepted" means: a schema-valid body can
#: still be refused with 422, because which features a model takes is per model, not in the
#: static document (GET /v2/models/{name} lists them); 413 for more rows than max_instances.
#: schemathesis's every check by name: ``--checks all`` also turns on a 10 s response-time limit.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance", "negative_data_rejection", "positive_data_acceptance",
          "missing_required_header", "unsupported_method", "allow_header_conformance", "use_after_free",
          "ensure_resource_availability", "ignored_auth", "object_level_authorization")
SCHEMATHESIS_TOML = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "413", "422"]

[parameters]
name = "churn"
version = "1"
"""


@pytest.fixture(scope="module")
def platform(ray_session, serve_http_port, tmp_path_factory):
    """One app with its direct data plane on; ``served`` gives each test Serve's HTTP port or
    the direct port."""
    from ray import serve

    from tests.servers import free_port

    root = tmp_path_factory.mktemp("fuzz-root")
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN, admin_token="admin-" + uuid.uuid4().hex,
        serve=ServeSettings(port=serve_http_port, telemetry_flush_s=3600, direct_port=free_port(),
                            pool=PoolSettings(memory_budget_mb=8, model_memory_mb=4, max_replicas=1)),
    )
    actor_name = f"registry-fuzz-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    register_servable(registry, open_root(config.root), "churn", task="binary", placement="ingress")
    url = start_serving(config, registry_actor=actor_name)
    direct = f"http://{config.serve.host}:{config.serve.direct_port}"
    with httpx.Client(base_url=url, timeout=60) as client, httpx.Client(base_url=direct, timeout=60) as direct_client:
        for each in (client, direct_client):
            assert each.post("/v1/models/churn:predict", json={"instances": [RAW_ROW]}, headers=AUTH).status_code == 200
        yield {"serve": {"client": client, "url": url, "config": config},
               "direct": {"client": direct_client, "url": direct, "config": config}}
    serve.delete(config.serve.app_name)
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


@pytest.fixture(params=["serve", "direct"])
def served(platform, request):
    return platform[request.param]


def test_the_document_and_docs_need_the_token(served):
    client = served["client"]
    for path in ("/openapi.json", "/docs"):
        refused = client.get(path)
        assert refused.status_code == 401 and set(refused.json()) == {"error"}
    doc = client.get("/openapi.json", headers=AUTH).json()
    assert client.get("/docs", headers=AUTH).text.count("SwaggerUIBundle") >= 1
    predict = doc["paths"]["/v1/models/{name}:predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["required"] == ["instances"]
    assert {"400", "401", "404", "413", "422", "503"} <= set(predict["responses"])
    assert predict["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "HTTPValidationError" not in str(doc) and "inputs" in str(doc["paths"]["/v2/models/{name}/infer"]["post"])
    assert doc["paths"]["/v2/health/live"]["get"]["security"] == []


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/v2/health/live", "GET"), ("GET", "/v1/models/churn:predict", "POST"),
    ("DELETE", "/v2/models/churn", "GET"), ("HEAD", "/v2/models/churn/ready", "GET"),
    ("POST", "/openapi.json", "GET"),
])
def test_an_undeclared_method_is_a_405_with_allow(served, method, path, allow):
    response = served["client"].request(method, path, headers=AUTH)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    if method != "HEAD":
        assert set(response.json()) == {"error"}


@pytest.mark.parametrize(("body", "field"), [
    (b'{"instances": [{"amount": 1, "amount": 2, "age": 3, "country": "fr"}]}', "amount"),
    (b'{"instances": [{"amount": ' + b"9" * 5000 + b', "age": 3, "country": "fr"}]}', "instances[0].amount"),
])
def test_bad_bodies_over_http_are_400s_naming_the_field(served, body, field):
    response = served["client"].post("/v1/models/churn:predict", content=body,
                                     headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and set(response.json()) == {"error", "field"}
    assert "sys." not in response.text


def test_schemathesis_all_checks_with_fuzzed_bodies_finds_nothing(served, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
               f"{served['url']}/openapi.json", "--checks", ",".join(CHECKS), "-H", f"Authorization: Bearer {TOKEN}",
               "--phases", "examples,coverage,fuzzing", "-n", str(MAX_EXAMPLES), "--seed", "17", "--workers", "1",
               # no --max-time: with one, schemathesis repeats its phases until the budget is spent
               "--request-timeout", "30", "--no-color", "--warnings", "off"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=MAX_RUN_S + 60, cwd=tmp_path)
    report = run.stdout[-12_000:] + run.stderr[-4_000:]
    print(report)
    assert run.returncode == 0, report
