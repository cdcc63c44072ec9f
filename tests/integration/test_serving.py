"""Serving through real Ray Serve on the shared Ray instance, a real registry actor and
real bundles: every HTTP route, the bad-input table, the pool, telemetry, S3 roots."""

from __future__ import annotations

import json
import uuid

import httpx
import pyarrow.parquet as pq
import pytest

from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

TOKEN = "test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TAIL = [f"tail-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def platform(ray_session, serve_http_port, tmp_path_factory):
    """One app, its direct data plane on (serve.direct_port): every test below runs through
    Serve's proxy and through the direct port (``served``)."""
    from ray import serve

    from tests.servers import free_port

    root = tmp_path_factory.mktemp("serving-root")
    port = serve_http_port
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN,
        serve=ServeSettings(port=port, direct_port=free_port(), telemetry_flush_s=3600,
                            pool=PoolSettings(memory_budget_mb=8, model_memory_mb=4, max_replicas=1)),
    )
    actor_name = f"registry-serving-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    storage = open_root(config.root)
    register_servable(registry, storage, "churn", task="binary", seed=1)
    register_servable(registry, storage, "churn", task="binary", seed=2)  # v2 becomes production
    register_servable(registry, storage, "hot", task="regression", placement="dedicated")
    register_servable(registry, storage, "inline", task="binary", placement="ingress")
    register_servable(registry, storage, "multi", task="multiclass")
    register_servable(registry, storage, "staged", promote=False)  # VALIDATED only
    for name in TAIL:
        register_servable(registry, storage, name)
    url = start_serving(config, registry_actor=actor_name, dedicated_models=["hot"])
    direct = f"http://{config.serve.host}:{config.serve.direct_port}"
    with httpx.Client(base_url=url, timeout=60) as client, httpx.Client(base_url=direct, timeout=60) as direct_client:
        yield {"serve": client, "direct": direct_client, "config": config, "registry": registry, "storage": storage,
               "actor": actor_name}
    serve.delete(config.serve.app_name)
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


@pytest.fixture(params=["serve", "direct"])
def served(platform, request):
    """The platform, its ``client`` on Serve's HTTP port or on the direct port."""
    return {**platform, "client": platform[request.param], "transport": request.param}


def _predict(client, name, rows=None, headers=AUTH, **kwargs):
    return client.post(f"/v1/models/{name}:predict", json={"instances": rows or [RAW_ROW]}, headers=headers, **kwargs)


def test_health_needs_no_token(served):
    client = served["client"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200


def test_v1_predict_answers_with_the_production_version(served):
    response = _predict(served["client"], "churn", [RAW_ROW, {**RAW_ROW, "country": "de"}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "2" and response.headers["x-mlplat-model-version"] == "2"
    assert len(body["predictions"]) == 2 and all(0.0 <= p <= 1.0 for p in body["predictions"])


def test_v1_predict_unseen_category_is_not_an_error(served):
    response = _predict(served["client"], "churn", [{**RAW_ROW, "country": "never-seen"}])
    assert response.status_code == 200, response.text


def test_v2_infer_raw_feature_tensors_and_explicit_version(served):
    client = served["client"]
    payload = {"id": "req-1", "inputs": [
        {"name": "amount", "shape": [2], "datatype": "FP32", "data": [1.0, 20.0]},
        {"name": "age", "shape": [2], "datatype": "FP32", "data": [30, 40]},
        {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["fr", "us"]},
    ]}
    response = client.post("/v2/models/churn/infer", json=payload, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "2" and body["id"] == "req-1"
    assert body["outputs"][0]["shape"] == [2]
    v1 = client.post("/v2/models/churn/versions/1/infer", json=payload, headers=AUTH)
    assert v1.status_code == 200 and v1.json()["model_version"] == "1"
    assert v1.json()["outputs"][0]["data"] != body["outputs"][0]["data"]  # different weights answered


def test_v2_infer_encoded_input_tensor_and_multiclass(served):
    client = served["client"]
    meta = client.get("/v2/models/multi", headers=AUTH).json()
    assert meta["parameters"]["task"] == "multiclass"
    width = 1 + 1 + 4  # standardize + impute + onehot(3 + other)
    payload = {"inputs": [{"name": "input", "shape": [1, width], "datatype": "FP32", "data": [[0.1] * width]}]}
    response = client.post("/v2/models/multi/infer", json=payload, headers=AUTH)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["shape"] == [1, 3] and abs(sum(out["data"]) - 1.0) < 1e-5


@pytest.mark.parametrize(("name", "placement"), [("hot", "dedicated"), ("inline", "ingress"), ("churn", "pool")])
def test_each_placement_serves(served, name, placement):
    client = served["client"]
    assert client.get(f"/v2/models/{name}", headers=AUTH).json()["parameters"]["placement"] == placement
    response = _predict(client, name, [RAW_ROW] * 5)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 5


def test_metadata_and_ready_routes(served):
    client = served["client"]
    meta = client.get("/v2/models/churn", headers=AUTH)
    assert meta.status_code == 200
    assert {i["name"] for i in meta.json()["inputs"]} == {"amount", "age", "country"}
    assert client.get("/v2/models/churn/ready", headers=AUTH).json()["ready"] is True
    assert client.get("/v2/models/churn/versions/1", headers=AUTH).json()["versions"] == ["1"]
    assert client.get("/v2/models/churn/versions/1/ready", headers=AUTH).status_code == 200
    assert client.get("/v2/models/staged/ready", headers=AUTH).status_code == 404  # not in production
    assert client.get("/v2/models/staged/versions/1/ready", headers=AUTH).status_code == 200  # VALIDATED, explicit


def test_openapi_document_is_valid(served):
    from openapi_spec_validator import validate

    document = served["client"].get("/openapi.json", headers=AUTH).json()  # behind the token (serve.public_docs)
    validate(document)
    assert "/v1/models/{name}:predict" in document["paths"]
    assert "/v2/models/{name}/infer" in document["paths"]


BAD_BODIES = [
    ("malformed json", b"{not json", 400, None),
    ("top level list", b"[1, 2]", 400, None),
    ("no instances key", json.dumps({"rows": []}).encode(), 400, None),
    ("empty instances", json.dumps({"instances": []}).encode(), 422, "instances"),
    ("unknown feature", json.dumps({"instances": [{**RAW_ROW, "zip": 1}]}).encode(), 422, "instances[0].zip"),
    ("missing feature", json.dumps({"instances": [{"amount": 1.0, "age": 3}]}).encode(), 422, "instances[0].country"),
    ("string for number", json.dumps({"instances": [{**RAW_ROW, "amount": "12"}]}).encode(), 422, "instances[0].amount"),
    ("NaN", b'{"instances": [{"amount": NaN, "age": 1, "country": "fr"}]}', 422, "instances[0].amount"),
    ("Infinity", b'{"instances": [{"amount": Infinity, "age": 1, "country": "fr"}]}', 422, "instances[0].amount"),
    ("nested value", json.dumps({"instances": [{**RAW_ROW, "country": {"a": 1}}]}).encode(), 422, "instances[0].country"),
    ("deep nesting", b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 413, None),
    ("oversize", b'{"instances": [' + b'{"amount": 1, "age": 1, "country": "fr"},' * 150_000 + b"{}]}", 413, None),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_are_4xx_naming_the_field(served, case, body, status, field):
    response = served["client"].post("/v1/models/churn:predict", content=body,
                                     headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == status, response.text
    assert "error" in response.json()
    if field:
        assert response.json()["field"] == field


BAD_V2 = [
    ("shape mismatch", {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [1.0, 2.0]}]}, 422),
    ("wrong width", {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}, 422),
    ("bad datatype", {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FLOAT", "data": [1.0] * 6}]}, 422),
    ("non-numeric data", {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": ["a"] * 6}]}, 422),
    ("no inputs", {"outputs": []}, 400),
    ("tensor not object", {"inputs": [3]}, 400),
]


@pytest.mark.parametrize(("case", "payload", "status"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_requests(served, case, payload, status):
    response = served["client"].post("/v2/models/churn/infer", json=payload, headers=AUTH)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("name", ["%2e%2e%2f", "%252e%252e%252f", "..%5cx", "%2fetc%2fpasswd", "s3:%2f%2fother%2f",
                                  "file:%2f%2f", "a%00b", "UPPER", "-x"])
def test_unsafe_model_names_are_400(served, name):
    response = served["client"].post(f"/v1/models/{name}:predict", json={"instances": [RAW_ROW]}, headers=AUTH)
    assert response.status_code == 400, response.text
    meta = served["client"].get(f"/v2/models/{name}", headers=AUTH)
    assert meta.status_code in (400, 404), meta.text


def test_unknown_model_or_version_is_404(served):
    client = served["client"]
    assert _predict(client, "nope").status_code == 404
    assert client.post("/v2/models/churn/versions/99/infer", json={"inputs": []}, headers=AUTH).status_code == 404
    assert client.post("/v2/models/churn/versions/abc/infer", json={"inputs": []}, headers=AUTH).status_code == 400


def test_auth(served):
    client = served["client"]
    assert _predict(client, "churn", headers={}).status_code == 401
    assert _predict(client, "churn", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert _predict(client, "churn", headers={"Authorization": TOKEN}).status_code == 401
    assert client.get("/v2/models/churn", headers={}).status_code == 401


def test_server_stays_healthy_after_bad_input(served):
    client = served["client"]
    assert client.get("/v2/health/live").status_code == 200
    assert _predict(client, "churn").status_code == 200


def test_pool_loads_and_evicts_more_models_than_fit(served):
    """max_models_per_replica is 2 (8 MB budget / 4 MB per model); 4 tail models rotate."""
    from ray import serve

    client = served["client"]
    pool = serve.get_deployment_handle("model-pool", served["config"].serve.app_name)
    loads_before = pool.stats.remote().result()["loads"]
    for _ in range(2):
        for name in TAIL:
            response = _predict(client, name)
            assert response.status_code == 200, response.text
    loads = pool.stats.remote().result()["loads"] - loads_before
    assert loads >= 6, f"expected evictions to force reloads, got {loads} loads for 8 requests over 4 models"


def test_telemetry_lands_as_parquet(served):
    from ray import serve

    client = served["client"]
    for _ in range(3):
        assert _predict(client, "churn", headers={**AUTH, "x-mlplat-caller": "test-suite"}).status_code == 200
    ingress = serve.get_deployment_handle("ingress", served["config"].serve.app_name)
    ingress.flush_telemetry.remote().result()
    storage = served["storage"]
    days = storage.list_dir("telemetry", "churn")
    assert days and days[0].startswith("date=")
    files = [f for d in days for f in storage.list_dir("telemetry", "churn", d)]
    table = pq.read_table(storage.path("telemetry", "churn"))
    assert len(files) >= 1 and table.num_rows >= 3
    rows = table.to_pylist()
    assert {r["caller"] for r in rows} >= {"test-suite"}
    assert all(r["version"] in (1, 2) for r in rows) and "feature.amount" in table.column_names


@pytest.mark.s3
def test_model_served_from_s3_root(platform, s3_settings):
    """A second app on the same Serve instance, its storage root on SeaweedFS S3."""
    from ray import serve

    config = PlatformConfig(root=f"s3://mlplat-test/serving-{uuid.uuid4().hex[:6]}", namespace="mlplat-test",
                            api_token=TOKEN, s3=s3_settings, registry_db=str(platform["storage"].base) + "/s3-registry.db",
                            serve=ServeSettings(port=platform["config"].serve.port, app_name="mlplat-s3", route_prefix="/s3",
                                                telemetry=False, pool=PoolSettings(max_replicas=1)))
    actor_name = f"registry-s3-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=config.registry_db)
    storage = open_root(config.root, config.s3)
    register_servable(registry, storage, "s3model", seed=3)
    url = start_serving(config, registry_actor=actor_name)
    try:
        response = httpx.post(f"{url}/v1/models/s3model:predict", json={"instances": [RAW_ROW]}, headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
    finally:
        serve.delete("mlplat-s3")
        import ray

        ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


def test_direct_port_is_shared_by_the_replicas_and_follows_their_lifecycle(platform):
    """A second app with two ingress replicas under a route prefix: both listen on its direct
    port (new connections reach both), the prefix holds there too, and deleting the app closes
    the port (Serve owns the replicas, the direct server stops with them)."""
    from ray import serve

    from tests.servers import free_port

    admin = "admin-" + uuid.uuid4().hex
    base = platform["config"]
    config = PlatformConfig(root=base.root, namespace=base.namespace, api_token=TOKEN, admin_token=admin,
                            serve=ServeSettings(port=base.serve.port, app_name="mlplat-direct", route_prefix="/direct",
                                                direct_port=free_port(), ingress_replicas=2, ingress_num_cpus=0,
                                                telemetry=False, pool=PoolSettings(max_replicas=1, num_cpus=0)))
    start_serving(config, registry_actor=platform["actor"])
    direct = f"http://{config.serve.host}:{config.serve.direct_port}"
    try:
        replicas = set()
        for _ in range(40):  # a new connection each time: the kernel picks a listener per connection
            with httpx.Client(base_url=direct, timeout=30) as client:
                response = client.get("/direct/admin/deployments", headers={"Authorization": f"Bearer {admin}"})
                assert response.status_code == 200, response.text
                replicas.add(response.json()["replica"])
            if len(replicas) == 2:
                break
        assert len(replicas) == 2, replicas
        with httpx.Client(base_url=direct, timeout=30) as client:
            response = client.post("/direct/v1/models/churn:predict", json={"instances": [RAW_ROW]}, headers=AUTH)
            assert response.status_code == 200, response.text
            outside = client.post("/v1/models/churn:predict", json={"instances": [RAW_ROW]}, headers=AUTH)
            assert outside.status_code == 404 and "error" in outside.json()
    finally:
        serve.delete("mlplat-direct")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{direct}/direct/v2/health/live", timeout=10)
