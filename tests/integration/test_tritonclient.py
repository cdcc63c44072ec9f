"""Triton's own HTTP client (``tritonclient.http``) against the live Serve app on the shared Ray
instance, with a real registry actor and real bundles: health, model metadata, and inference
with JSON and with binary tensors (the client's default) for every datatype the metadata lists,
each equal to the JSON path's answer; binary framing errors are 400s naming the input."""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest

from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

pytestmark = pytest.mark.ray

tritonhttp = pytest.importorskip("tritonclient.http")

TOKEN = "triton-token-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _auth() -> dict[str, str]:
    """A fresh headers dict per tritonclient call: its infer() writes Inference-Header-Content-Length
    into the dict it is given (a shared one would carry a stale length into the next call)."""
    return dict(AUTH)

ROWS = [RAW_ROW, {**RAW_ROW, "amount": 3.25, "country": "de"}, {**RAW_ROW, "age": 64, "country": "us"}]
#: name -> (task, placement): every output shape ([n] and [n, classes]) and the two in-process paths
MODELS = {"churn": ("binary", "ingress"), "multi": ("multiclass", "pool"), "price": ("regression", "ingress")}
_NUMPY = {"FP32": np.float32, "BYTES": np.object_}


@pytest.fixture(scope="module")
def platform(ray_session, serve_http_port, tmp_path_factory):
    """One app with its direct data plane on; ``served`` gives each test the clients of Serve's
    HTTP port or of the direct port."""
    from ray import serve

    from tests.servers import free_port

    root = tmp_path_factory.mktemp("triton-root")
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN,
        serve=ServeSettings(port=serve_http_port, telemetry_flush_s=3600, direct_port=free_port(),
                            pool=PoolSettings(memory_budget_mb=8, model_memory_mb=4, max_replicas=1)))
    actor_name = f"registry-triton-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    for name, (task, placement) in MODELS.items():
        register_servable(registry, open_root(config.root), name, task=task, placement=placement)
    url = start_serving(config, registry_actor=actor_name)
    direct = f"http://{config.serve.host}:{config.serve.direct_port}"
    clients = {transport: tritonhttp.InferenceServerClient(base.removeprefix("http://"), connection_timeout=60,
                                                           network_timeout=60)
               for transport, base in (("serve", url), ("direct", direct))}
    with httpx.Client(base_url=url, timeout=60) as http, httpx.Client(base_url=direct, timeout=60) as direct_http:
        yield {"serve": {"triton": clients["serve"], "http": http},
               "direct": {"triton": clients["direct"], "http": direct_http}}
    for client in clients.values():
        client.close()
    serve.delete(config.serve.app_name)
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


@pytest.fixture(params=["serve", "direct"])
def served(platform, request):
    return platform[request.param]


def _inputs(metadata: dict, binary: bool) -> list:
    """One tensor per input the metadata lists, in its datatype, from ROWS."""
    out = []
    for spec in metadata["inputs"]:
        array = np.array([row[spec["name"]] for row in ROWS], dtype=_NUMPY[spec["datatype"]])
        tensor = tritonhttp.InferInput(spec["name"], [len(ROWS)], spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=binary)
        out.append(tensor)
    return out


def _json_path(http: httpx.Client, name: str) -> tuple[np.ndarray, dict]:
    """The plain JSON request mlplat always took (no tritonclient), as the reference answer."""
    inputs = [{"name": col, "shape": [len(ROWS)], "datatype": "BYTES" if isinstance(RAW_ROW[col], str) else "FP32",
               "data": [row[col] for row in ROWS]} for col in RAW_ROW]
    response = http.post(f"/v2/models/{name}/infer", json={"inputs": inputs}, headers=_auth())
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"]), output


def test_server_live_and_ready_and_model_ready(served):
    triton = served["triton"]
    assert triton.is_server_live() and triton.is_server_ready()
    assert all(triton.is_model_ready(name, headers=_auth()) for name in MODELS)


def test_model_metadata_lists_the_features_and_needs_the_token(served):
    from tritonclient.utils import InferenceServerException

    metadata = served["triton"].get_model_metadata("churn", headers=_auth())
    assert {(i["name"], i["datatype"]) for i in metadata["inputs"]} == {
        ("amount", "FP32"), ("age", "FP32"), ("country", "BYTES")}
    assert metadata["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1]}]
    with pytest.raises(InferenceServerException) as info:
        served["triton"].get_model_metadata("churn")
    assert "bearer token" in str(info.value)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (True, False), (False, True), (False, False)])
def test_infer_json_and_binary_equals_the_json_path(served, name, binary_in, binary_out):
    triton = served["triton"]
    metadata = triton.get_model_metadata(name, headers=_auth())
    assert {i["datatype"] for i in metadata["inputs"]} <= set(_NUMPY), metadata  # every listed datatype is sent
    expected, reference = _json_path(served["http"], name)
    result = triton.infer(name, _inputs(metadata, binary_in), headers=_auth(), request_id="tc-1",
                          outputs=[tritonhttp.InferRequestedOutput("predictions", binary_data=binary_out)])
    output = result.get_output("predictions")
    assert output["datatype"] == reference["datatype"] == metadata["outputs"][0]["datatype"]
    assert ("binary_data_size" in output.get("parameters", {})) is binary_out
    assert ("data" in output) is not binary_out
    np.testing.assert_array_equal(result.as_numpy("predictions"), expected)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (name, "1", "tc-1")


def test_the_clients_defaults_binary_everything_and_no_outputs_named(served):
    """tritonclient's plain call: binary inputs, no outputs listed (it then asks binary_data_output)."""
    triton = served["triton"]
    result = triton.infer("churn", _inputs(triton.get_model_metadata("churn", headers=_auth()), True), headers=_auth())
    np.testing.assert_array_equal(result.as_numpy("predictions"), _json_path(served["http"], "churn")[0])


def test_the_encoded_input_form_in_binary(served):
    width = 1 + 1 + 4  # standardize + impute + onehot(3 + other)
    matrix = np.linspace(-1, 1, 2 * width, dtype=np.float32).reshape(2, width)
    tensor = tritonhttp.InferInput("input", [2, width], "FP32")
    tensor.set_data_from_numpy(matrix)
    binary = served["triton"].infer("multi", [tensor], headers=_auth()).as_numpy("predictions")
    response = served["http"].post("/v2/models/multi/infer", headers=_auth(), json={
        "inputs": [{"name": "input", "shape": [2, width], "datatype": "FP32", "data": matrix.tolist()}]})
    assert response.status_code == 200, response.text
    assert binary.shape == (2, 3)
    np.testing.assert_array_equal(binary, np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 3))


def _raw(header: dict, tail: bytes, split: int | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + tail, {**AUTH, "Inference-Header-Content-Length": str(len(head) if split is None else split),
                         "Content-Type": "application/octet-stream"}


_AMOUNT = np.array([1.0, 2.0], dtype="<f4").tobytes()


@pytest.mark.parametrize(("header", "tail", "split", "field"), [
    ({"inputs": [{"name": "amount", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, _AMOUNT,
     10**6, "Inference-Header-Content-Length"),
    ({"inputs": [{"name": "amount", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, _AMOUNT,
     None, "amount.parameters.binary_data_size"),
    ({"inputs": [{"name": "country", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
     b"\xff\xff\x00\x00fr", None, "country.parameters.binary_data_size"),
    ({"inputs": [{"name": "amount", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
     _AMOUNT + b"extra", None, "Inference-Header-Content-Length"),
], ids=["header-length-past-the-body", "size-not-shape-times-datatype", "bytes-prefix-overruns", "bytes-no-input-claims"])
def test_bad_binary_framing_over_http_is_a_400_naming_the_input(served, header, tail, split, field):
    body, headers = _raw(header, tail, split)
    response = served["http"].post("/v2/models/churn/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and set(response.json()) == {"error", "field"}
    assert served["http"].get("/v2/health/ready").status_code == 200
