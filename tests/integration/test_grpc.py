"""OIP v2 over gRPC through Ray Serve's gRPC proxy (``serve.grpc_port``) on the shared Ray
instance, with Triton's own gRPC client (``tritonclient.grpc``) and a plain grpcio channel for
what tritonclient does not send (typed contents, malformed requests): health, readiness,
metadata, inference equal to the HTTP JSON path's answer, the token, bad input as
INVALID_ARGUMENT naming the input, and the telemetry row of a gRPC inference.

Serve applies gRPC options only at its first start on a Ray instance, so the module shuts Serve
down first and starts it again with gRPC; later modules' ``serve.start`` then keeps this one
(the same HTTP port, from the session's ``serve_http_port``)."""

from __future__ import annotations

import io
import uuid

import grpc
import httpx
import numpy as np
import pytest

from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable
from tests.servers import free_port

pytestmark = pytest.mark.ray

tritongrpc = pytest.importorskip("tritonclient.grpc")

TOKEN = "grpc-token-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROWS = [RAW_ROW, {**RAW_ROW, "amount": 3.25, "country": "de"}, {**RAW_ROW, "age": 64, "country": "us"}]
#: name -> (task, placement): both output shapes, in the ingress and in the pool
MODELS = {"churn": ("binary", "ingress"), "multi": ("multiclass", "pool")}
_NUMPY = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}


@pytest.fixture(scope="module")
def served(ray_session, serve_http_port, tmp_path_factory):
    import ray
    from ray import serve

    from mlplat.serving.oip_grpc import grpc_service_pb2 as pb

    serve.shutdown()  # gRPC options take effect only when Serve starts
    root = tmp_path_factory.mktemp("grpc-root")
    grpc_port = free_port()
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN,
        serve=ServeSettings(port=serve_http_port, grpc_port=grpc_port, telemetry_flush_s=3600,
                            telemetry_context_keys=["tenant"],
                            pool=PoolSettings(memory_budget_mb=8, model_memory_mb=4, max_replicas=1)))
    actor_name = f"registry-grpc-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    for name, (task, placement) in MODELS.items():
        register_servable(registry, open_root(config.root), name, task=task, placement=placement)
    url = start_serving(config, registry_actor=actor_name)
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelInferResponse.FromString)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield {"triton": client, "http": http, "infer": infer, "config": config, "pb": pb}
    client.close()
    channel.close()
    serve.delete(config.serve.app_name)
    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


def _inputs(specs: list[tuple[str, str]], rows: list[dict] = ROWS) -> list:
    """tritonclient inputs (raw_input_contents, its only form) from ``rows``: (name, datatype) each."""
    out = []
    for name, datatype in specs:
        tensor = tritongrpc.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(np.array([row[name] for row in rows], dtype=_NUMPY[datatype]))
        out.append(tensor)
    return out


def _json_path(http: httpx.Client, name: str, rows: list[dict] = ROWS) -> np.ndarray:
    """The plain HTTP JSON request, as the reference answer."""
    inputs = [{"name": col, "shape": [len(rows)], "datatype": "BYTES" if isinstance(RAW_ROW[col], str) else "FP32",
               "data": [row[col] for row in rows]} for col in RAW_ROW]
    response = http.post(f"/v2/models/{name}/infer", json={"inputs": inputs}, headers=AUTH)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def _status(exc_info) -> str:
    return exc_info.value.status()


def test_health_and_readiness(served):
    triton = served["triton"]
    assert triton.is_server_live() and triton.is_server_ready()  # no token: health, as over HTTP
    assert all(triton.is_model_ready(name, headers=AUTH) for name in MODELS)
    assert triton.is_model_ready("churn", model_version="1", headers=AUTH)


def test_metadata_lists_the_features_and_every_error_has_its_status(served):
    from tritonclient.utils import InferenceServerException

    triton = served["triton"]
    metadata = triton.get_model_metadata("churn", headers=AUTH, as_json=True)
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("amount", "FP32"), ("age", "FP32"), ("country", "BYTES")]
    assert metadata["versions"] == ["1"] and metadata["outputs"][0]["name"] == "predictions"
    for call, status, words in [
        (lambda: triton.get_model_metadata("churn"), "UNAUTHENTICATED", "bearer token"),
        (lambda: triton.get_model_metadata("churn", headers={"authorization": "Bearer wrong"}), "UNAUTHENTICATED",
         "bearer token"),
        (lambda: triton.is_model_ready("ghost", headers=AUTH), "NOT_FOUND", "ghost"),
        (lambda: triton.get_model_metadata("churn", model_version="x", headers=AUTH), "INVALID_ARGUMENT", "version"),
        (lambda: triton.get_model_config("churn", headers=AUTH), "UNIMPLEMENTED", ""),  # not served: gRPC's own
    ]:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert _status(info) == f"StatusCode.{status}" and words in str(info.value), str(info.value)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_infer_with_the_metadatas_datatypes_equals_the_http_json_path(served, name):
    triton = served["triton"]
    metadata = triton.get_model_metadata(name, headers=AUTH, as_json=True)
    specs = [(i["name"], i["datatype"]) for i in metadata["inputs"]]
    result = triton.infer(name, _inputs(specs), headers=AUTH, request_id="g-1")
    np.testing.assert_array_equal(result.as_numpy("predictions"), _json_path(served["http"], name))
    response = result.get_response(as_json=True)
    assert (response["model_name"], response["model_version"], response["id"]) == (name, "1", "g-1")
    assert response["outputs"][0]["datatype"] == "FP32"


def test_int64_and_bool_inputs_answer_as_the_same_json_values(served):
    """age as INT64 (numbers take integers), country as BOOL (categories take booleans)."""
    rows = [{**row, "country": i % 2 == 0} for i, row in enumerate(ROWS)]
    result = served["triton"].infer("churn", _inputs([("amount", "FP32"), ("age", "INT64"), ("country", "BOOL")], rows),
                                    headers=AUTH)
    np.testing.assert_array_equal(result.as_numpy("predictions"), _json_path(served["http"], "churn", rows))


def _typed_request(pb, rows: list[dict] = ROWS, **fields):
    request = pb.ModelInferRequest(model_name="churn", **fields)
    amount = request.inputs.add(name="amount", datatype="FP32", shape=[len(rows)])
    amount.contents.fp32_contents.extend(row["amount"] for row in rows)
    age = request.inputs.add(name="age", datatype="INT64", shape=[len(rows), 1])
    age.contents.int64_contents.extend(row["age"] for row in rows)
    country = request.inputs.add(name="country", datatype="BYTES", shape=[len(rows)])
    country.contents.bytes_contents.extend(row["country"].encode() for row in rows)
    return request


def test_typed_contents_answer_as_raw_contents_do(served):
    response = served["infer"](_typed_request(served["pb"]), metadata=tuple(AUTH.items()), timeout=60)
    (output,) = response.outputs
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(output.shape))
    np.testing.assert_array_equal(got, _json_path(served["http"], "churn"))


def _bad(pb, case: str):
    request = _typed_request(pb)
    if case == "shape":
        request.inputs[0].shape[0] = 4
    elif case == "datatype":
        request.inputs[0].datatype = "BYTES"
        request.inputs[0].contents.ClearField("fp32_contents")
        request.inputs[0].contents.bytes_contents.extend([b"1", b"2", b"3"])
    elif case == "contents-field":
        request.inputs[0].contents.ClearField("fp32_contents")
        request.inputs[0].contents.fp64_contents.extend([1.0, 2.0, 3.0])
    elif case == "raw-size":
        for tensor in request.inputs:
            tensor.ClearField("contents")
        request.raw_input_contents.extend([np.zeros(3, "<f4").tobytes()[:-1], np.zeros(3, "<i8").tobytes(),
                                           b"".join(len(b"fr").to_bytes(4, "little") + b"fr" for _ in range(3))])
    elif case == "unknown-feature":
        request.inputs[2].name = "colour"
    return request


@pytest.mark.parametrize(("case", "field", "words"), [
    ("shape", "amount.shape", "shape [4] does not match the 3 values"),
    ("datatype", "inputs[0].amount", "must be a number"),
    ("contents-field", "amount.contents", "takes contents.fp32_contents"),
    ("raw-size", "amount.raw_input_contents", "raw_input_contents[0]"),
    ("unknown-feature", "colour", "unknown ['colour']"),
])
def test_bad_input_is_invalid_argument_naming_the_input(served, case, field, words):
    with pytest.raises(grpc.RpcError) as info:
        served["infer"](_bad(served["pb"], case), metadata=tuple(AUTH.items()), timeout=60)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    assert ("x-mlplat-error-field", field) in tuple(error.trailing_metadata() or ())
    assert served["triton"].is_server_ready()


def test_infer_without_the_token_or_for_an_unknown_model(served):
    from tritonclient.utils import InferenceServerException

    triton = served["triton"]
    inputs = _inputs([("amount", "FP32"), ("age", "FP32"), ("country", "BYTES")])
    for kwargs, status in [({}, "UNAUTHENTICATED"), ({"headers": {"authorization": "Bearer nope"}}, "UNAUTHENTICATED"),
                           ({"headers": AUTH, "model_name": "ghost"}, "NOT_FOUND"),
                           ({"headers": AUTH, "model_version": "9"}, "NOT_FOUND")]:
        with pytest.raises(InferenceServerException) as info:
            triton.infer(kwargs.pop("model_name", "churn"), inputs, **kwargs)
        assert _status(info) == f"StatusCode.{status}", str(info.value)


def test_a_grpc_inference_is_a_telemetry_row_with_its_call_context(served):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray import serve

    pb, config = served["pb"], served["config"]
    metadata = (*AUTH.items(), ("x-mlplat-caller", "grpc-suite"), ("x-mlplat-context-tenant", "acme"),
                ("request_id", "grpc-rid-1"))
    response, call = served["infer"].with_call(_typed_request(pb, ROWS[:1]), metadata=metadata, timeout=60)
    assert response.id == "grpc-rid-1"  # no OIP id: Serve's request id (the client's), as over HTTP
    assert ("request_id", "grpc-rid-1") in tuple(call.trailing_metadata())
    served["infer"](_typed_request(pb, ROWS[:2], id="grpc-oip-2"), metadata=tuple(AUTH.items()), timeout=60)
    ingress = serve.get_deployment_handle("ingress", config.serve.app_name)
    assert ingress.flush_telemetry.remote().result() >= 3
    storage = open_root(config.root)
    tables = [pq.read_table(io.BytesIO(storage.read_bytes("telemetry", "churn", day, f)))
              for day in storage.list_dir("telemetry", "churn") for f in storage.list_dir("telemetry", "churn", day)]
    rows = pa.concat_tables(tables, promote_options="permissive").to_pylist()
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
    (first,) = by_id["grpc-rid-1"]
    assert (first["endpoint"], first["caller"], first["context.tenant"], first["version"]) == (
        "grpc", "grpc-suite", "acme", 1)
    assert (first["feature.amount"], first["feature.country"]) == (RAW_ROW["amount"], RAW_ROW["country"])
    assert first["user_agent"] and "grpc" in first["user_agent"]
    assert len(by_id["grpc-oip-2"]) == 2 and by_id["grpc-oip-2"][0]["context.tenant"] is None
