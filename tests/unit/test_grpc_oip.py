"""OIP v2 over gRPC without Ray: the checked-in gencode (loads beside tritonclient's, pickles as
Serve's proxy needs), the pure conversions of mlplat/serving/oip_grpc/convert.py, and the
ingress's gRPC methods on an in-memory ingress (no Serve: a stand-in grpc_context)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from typing import Any

import grpc
import numpy as np
import pytest

from mlplat.serving.infer_call import InferAnswer
from mlplat.serving.oip_grpc import RPCS, SERVICE, add_GRPCInferenceServiceServicer_to_server, convert
from mlplat.serving.oip_grpc import grpc_service_pb2 as pb
from mlplat.serving.request import InputSchema, RequestError, parse_v2

Tensor = pb.ModelInferRequest.InferInputTensor
SCHEMA = InputSchema(columns={"amount": "number", "age": "number_or_null", "country": "category"}, input_dim=6)


def _bytes(*values: str) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _raw_request(**overrides: Any) -> Any:
    """amount FP32, age INT64, country BYTES, all in raw_input_contents (what tritonclient sends)."""
    request = pb.ModelInferRequest(model_name="churn", id=overrides.pop("id", ""), inputs=[
        Tensor(name="amount", datatype="FP32", shape=[2]), Tensor(name="age", datatype="INT64", shape=[2]),
        Tensor(name="country", datatype="BYTES", shape=[2])])
    request.raw_input_contents.extend([np.array([12.5, 3.25], "<f4").tobytes(), np.array([31, 64], "<i8").tobytes(),
                                       _bytes("fr", "de")])
    return request


def _typed_request() -> Any:
    request = pb.ModelInferRequest(model_name="churn", inputs=[
        Tensor(name="amount", datatype="FP32", shape=[2]), Tensor(name="age", datatype="INT64", shape=[2, 1]),
        Tensor(name="country", datatype="BYTES", shape=[2])])
    request.inputs[0].contents.fp32_contents.extend([12.5, 3.25])
    request.inputs[1].contents.int64_contents.extend([31, 64])
    request.inputs[2].contents.bytes_contents.extend([b"fr", b"de"])
    return request


def _error(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value


# -- the gencode ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["mlplat", "tritonclient"])
def test_the_gencode_loads_beside_tritonclients_in_either_order(first):
    """Protobuf's default pool takes a second copy of an identical .proto file, never a different
    file defining the same inference.* messages: the checked-in protos are tritonclient's."""
    pytest.importorskip("tritonclient.grpc")
    mine, theirs = "from mlplat.serving.oip_grpc import grpc_service_pb2 as a", "import tritonclient.grpc as t, " \
                                                                                "tritonclient.grpc.service_pb2 as b"
    code = "\n".join([mine, theirs] if first == "mlplat" else [theirs, mine]) + \
        "\nassert a.ModelInferRequest is b.ModelInferRequest\nprint('ok')"
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_request_message_pickles_by_its_mlplat_module():
    """Serve's gRPC proxy pickles each request message to the replica. In a fresh interpreter, as
    the proxy's: where tritonclient.grpc loaded the shared classes first they carry its module
    name (``grpc_service_pb2``), which pickle cannot import."""
    code = ("import pickle\nfrom mlplat.serving.oip_grpc import grpc_service_pb2 as pb\n"
            "r = pb.ModelInferRequest(model_name='m', raw_input_contents=[b'x'])\n"
            "assert pickle.loads(pickle.dumps(r)) == r and pb.ModelInferRequest.__module__ == pb.__name__\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_servicer_function_registers_the_five_rpcs_only():
    class Server:
        def __init__(self):
            self.generic, self.registered = [], {}

        def add_generic_rpc_handlers(self, handlers):
            self.generic.extend(handlers)

        def add_registered_method_handlers(self, service, handlers):
            self.registered[service] = handlers

    class Servicer:
        def __getattr__(self, name):
            return lambda request, context: None

    server = Server()
    add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    assert set(server.registered[SERVICE]) == set(RPCS) == {"ServerLive", "ServerReady", "ModelReady", "ModelMetadata",
                                                            "ModelInfer"}
    assert set(server.generic[0]._method_handlers) == {f"/{SERVICE}/{rpc}" for rpc in RPCS}
    handler = server.registered[SERVICE]["ModelInfer"]
    assert handler.request_deserializer(_raw_request().SerializeToString()) == _raw_request()


# -- request conversion ------------------------------------------------------------------------------------------


def test_raw_and_typed_contents_give_the_same_rows_as_json():
    expected = parse_v2({"inputs": [
        {"name": "amount", "shape": [2], "datatype": "FP32", "data": [12.5, 3.25]},
        {"name": "age", "shape": [2], "datatype": "INT64", "data": [31, 64]},
        {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["fr", "de"]}]}, SCHEMA, max_instances=10).rows
    for request in (_raw_request(), _typed_request()):
        assert parse_v2(convert.payload_of(request), SCHEMA, max_instances=10).rows == expected
    assert expected == [{"amount": 12.5, "age": 31, "country": "fr"}, {"amount": 3.25, "age": 64, "country": "de"}]


def test_every_typed_datatype_reads_its_own_field():
    request = pb.ModelInferRequest()
    values = {"BOOL": [True, False], "INT8": [-1, 2], "INT32": [7, 8], "INT64": [2**40, 1], "UINT16": [3, 4],
              "UINT64": [2**63, 0], "FP32": [0.5, 1.5], "FP64": [0.1, 0.2], "BYTES": [b"a", "é".encode()]}
    for datatype, data in values.items():
        tensor = request.inputs.add(name=datatype.lower(), datatype=datatype, shape=[2])
        getattr(tensor.contents, convert.CONTENTS_FIELD[datatype]).extend(data)
    payload = convert.payload_of(request)
    got = {t["datatype"]: t["data"] for t in payload["inputs"]}
    assert got == {**values, "BYTES": ["a", "é"]}


def test_bool_raw_contents_and_the_request_id():
    request = pb.ModelInferRequest(id="req-9", inputs=[Tensor(name="flag", datatype="BOOL", shape=[3])],
                                   raw_input_contents=[bytes([1, 0, 1])])
    assert convert.payload_of(request) == {"id": "req-9", "inputs": [
        {"name": "flag", "shape": [3], "datatype": "BOOL", "data": [True, False, True]}]}


@pytest.mark.parametrize(("mutate", "status", "field", "words"), [
    (lambda r: r.raw_input_contents.pop(), 400, "raw_input_contents", "2 entries for 3 inputs"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), 400, "amount.contents", "both contents"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 4), 400, "amount.raw_input_contents",
     "8 bytes, but the size of raw_input_contents[0] is 4"),
    (lambda r: r.raw_input_contents.__setitem__(2, b"\xff\x00\x00\x00fr"), 400, "country.raw_input_contents",
     "raw_input_contents[2]"),
    (lambda r: r.raw_input_contents.__setitem__(2, _bytes("fr", "de") + b"\xff"), 400, "country.raw_input_contents",
     "must be exactly"),
    (lambda r: r.raw_input_contents.__setitem__(2, struct.pack("<I", 1) + b"\xff" + _bytes("de")), 400, "country[0]",
     "not UTF-8"),
    (lambda r: (r.inputs[1].__setattr__("datatype", "BOOL"), r.raw_input_contents.__setitem__(1, bytes([1, 0]) * 8)),
     400, "age.raw_input_contents", "2 bytes, but the size of raw_input_contents[1] is 16"),
    (lambda r: r.inputs[0].__setattr__("datatype", "FP8"), 422, "amount.datatype", "not an OIP v2 datatype"),
    (lambda r: r.inputs[0].shape.__setitem__(0, -1), 422, "amount.shape", "shape must be"),
], ids=["raw-count", "raw-and-contents", "raw-size", "bytes-length-overruns", "bytes-trailing", "bytes-not-utf8",
        "bool-size", "unknown-datatype", "negative-dim"])
def test_bad_raw_contents_name_the_input(mutate, status, field, words):
    request = _raw_request()
    mutate(request)
    exc = _error(convert.payload_of, request)
    assert (exc.status, exc.field) == (status, field), exc.message
    assert words in exc.message and "binary_data_size" not in exc.message


@pytest.mark.parametrize(("mutate", "field", "words"), [
    (lambda r: r.inputs[0].contents.int64_contents.append(3), "amount.contents",
     "datatype FP32 takes contents.fp32_contents, got contents.int64_contents"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "amount.shape", "shape [2] does not match the 3 values"),
    (lambda r: r.inputs[2].contents.bytes_contents.__setitem__(1, b"\xff"), "country[1]", "not UTF-8"),
    (lambda r: (r.inputs[0].__setattr__("datatype", "FP16"), r.inputs[0].contents.ClearField("fp32_contents"),
                r.inputs[0].contents.int_contents.extend([1, 2])), "amount.contents", "FP16 has no typed contents"),
], ids=["wrong-field", "shape-mismatch", "bytes-not-utf8", "fp16-typed"])
def test_bad_typed_contents_are_422s_naming_the_input(mutate, field, words):
    request = _typed_request()
    mutate(request)
    exc = _error(convert.payload_of, request)
    assert exc.field == field and words in exc.message, exc.message
    assert exc.status in (400, 422)


def test_a_wrong_datatype_for_the_feature_is_named_by_the_shared_validator():
    request = _typed_request()
    request.inputs[0].datatype = "BYTES"
    request.inputs[0].contents.ClearField("fp32_contents")
    request.inputs[0].contents.bytes_contents.extend([b"12.5", b"lots"])
    exc = _error(lambda: parse_v2(convert.payload_of(request), SCHEMA, max_instances=10))
    assert exc.status == 422 and "amount" in exc.field and "must be a number" in exc.message


def test_versions_headers_and_status_codes():
    assert convert.model_version("") is None and convert.model_version("12") == 12
    for bad in ("0", "-1", "v1", "1" * 10, "²"):
        assert _error(convert.model_version, bad).field == "version"
    headers, raw = convert.call_headers([("Authorization", "Bearer x"), ("x-mlplat-caller", "a"),
                                         ("x-mlplat-caller", "b"), ("trace-bin", b"\x01")])
    assert headers == {"authorization": "Bearer x", "x-mlplat-caller": "a"} and len(raw) == 3
    assert {s: convert.status_code(s) for s in (400, 401, 404, 413, 422, 503)} == {
        400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}


# -- responses ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "predictions", "shape"), [
    ("binary", [0.25, 0.5], [2]), ("multiclass", [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], [2, 3])])
def test_the_infer_response_carries_predictions_as_raw_fp32(task, predictions, shape):
    response = convert.infer_response(InferAnswer("churn", 3, task, "rid-1", None, predictions))
    assert (response.model_name, response.model_version, response.id) == ("churn", "3", "rid-1")
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("predictions", "FP32", shape)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(shape)
    np.testing.assert_array_equal(got, np.array(predictions, dtype=np.float32))


def test_the_metadata_response_has_the_http_documents_tensors():
    from mlplat.serving.infer_call import metadata_document

    document = metadata_document("churn", 2, SCHEMA, task="binary", placement="pool")
    response = convert.metadata_response(document)
    assert (response.name, list(response.versions), response.platform) == ("churn", ["2"], "mlplat-torch")
    assert [(t.name, t.datatype, list(t.shape)) for t in response.inputs] == [
        ("amount", "FP32", [-1]), ("age", "FP32", [-1]), ("country", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [("predictions", "FP32", [-1])]


# -- the ingress's gRPC methods, on an in-memory ingress -------------------------------------------------------


class Context:
    """What Serve's RayServegRPCContext offers the methods."""

    def __init__(self, **metadata: str):
        self.metadata = list(metadata.items())
        self.code, self.details, self.trailing = None, None, []

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, trailing):
        self.trailing = trailing


def test_the_ingress_grpc_methods_share_the_http_paths_auth_validation_and_telemetry(tmp_path):
    import pyarrow.parquet as pq

    from mlplat.storage import open_root
    from tests.unit.test_load_shedding import TOKEN, _ingress

    ingress = _ingress(tmp_path, telemetry=True, telemetry_flush_s=3600, allow_anonymous=False)
    auth = {"authorization": f"Bearer {TOKEN}"}

    async def scenario():
        try:
            out: dict[str, Any] = {"live": await ingress.ServerLive(pb.ServerLiveRequest()),
                                   "ready": await ingress.ServerReady(pb.ServerReadyRequest())}
            ctx = Context(**auth)
            out["model_ready"] = (await ingress.ModelReady(pb.ModelReadyRequest(name="inline"), grpc_context=ctx), ctx)
            ctx = Context(**auth)
            out["meta"] = (await ingress.ModelMetadata(pb.ModelMetadataRequest(name="inline", version="1"),
                                                       grpc_context=ctx), ctx)
            for label, metadata, request in [
                ("ok", {**auth, "x-mlplat-caller": "grpc-unit", "user-agent": "unit/1"}, _raw_request(id="u-1")),
                ("typed", auth, _typed_request()),
                ("no-token", {}, _raw_request()),
                ("wrong-token", {"authorization": "Bearer nope"}, _raw_request()),
                ("unknown", auth, pb.ModelInferRequest(model_name="ghost")),
                ("bad-version", auth, pb.ModelInferRequest(model_name="inline", model_version="x")),
                ("bad-input", auth, _typed_request()),
            ]:
                if request.model_name != "ghost":
                    request.model_name = "inline"
                if label == "bad-input":
                    request.inputs[0].shape[0] = 3
                ctx = Context(**metadata)
                out[label] = (await ingress.ModelInfer(request, grpc_context=ctx), ctx)
            out["flushed"] = ingress._flusher.flush()
            return out
        finally:
            await ingress._routes.stop()

    out = asyncio.run(scenario())
    assert out["live"].live and out["ready"].ready
    assert out["model_ready"][0].ready and out["model_ready"][1].code is None
    meta = out["meta"][0]
    assert [t.name for t in meta.inputs] == ["amount", "age", "country"] and list(meta.versions) == ["1"]
    response, ctx = out["ok"]
    assert ctx.code is None and response.id == "u-1" and response.model_version == "1"
    predictions = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    typed = np.frombuffer(out["typed"][0].raw_output_contents[0], dtype="<f4")
    assert predictions.shape == (2,) and np.array_equal(predictions, typed)
    for label, code, words in [("no-token", "UNAUTHENTICATED", "bearer token"),
                               ("wrong-token", "UNAUTHENTICATED", "bearer token"),
                               ("unknown", "NOT_FOUND", "ghost"), ("bad-version", "INVALID_ARGUMENT", "version"),
                               ("bad-input", "INVALID_ARGUMENT", "amount")]:
        ctx = out[label][1]
        assert ctx.code == getattr(grpc.StatusCode, code) and words in ctx.details, (label, ctx.details)
    assert ("x-mlplat-error-field", "amount.shape") in out["bad-input"][1].trailing
    assert out["flushed"] == 4  # two answered requests of two rows each
    storage = open_root(str(tmp_path / "root"))
    rows = pq.read_table(storage.path("telemetry", "inline")).to_pylist()
    first = [r for r in rows if r["request_id"] == "u-1"]
    assert len(first) == 2 and all(r["endpoint"] == "grpc" for r in rows)
    assert (first[0]["caller"], first[0]["user_agent"], first[0]["feature.country"]) == ("grpc-unit", "unit/1", "fr")


def test_tritonclient_grpc_against_the_ingress_methods_on_a_plain_grpc_server(tmp_path):
    """The wire without Serve: mlplat's servicer registration on a grpcio server whose
    handlers call the in-memory ingress's methods, and tritonclient.grpc as the client."""
    import threading

    tritongrpc = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    from tests.servers import free_port
    from tests.unit.test_load_shedding import TOKEN, _ingress

    ingress = _ingress(tmp_path)

    class Servicer:  # what Serve's proxy does: the ingress method of the RPC's name, with the context
        def __getattr__(self, rpc):
            async def handler(request, context):
                if rpc.startswith("Server"):
                    return await getattr(ingress, rpc)(request)
                return await getattr(ingress, rpc)(request, grpc_context=context)

            return handler

    port, started, state = free_port(), threading.Event(), {}

    async def run_server():
        server = grpc.aio.server()
        add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await state["stop"].wait()
        await server.stop(None)
        await ingress._routes.stop()

    thread = threading.Thread(target=asyncio.run, args=(run_server(),), daemon=True)
    thread.start()
    assert started.wait(30)
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("inline", headers=auth)
        metadata = client.get_model_metadata("inline", headers=auth, as_json=True)
        inputs = []
        for spec in metadata["inputs"]:
            tensor = tritongrpc.InferInput(spec["name"], [2], spec["datatype"])
            tensor.set_data_from_numpy(np.array([[12.5, 3.25], [31, 64], ["fr", "de"]][len(inputs)],
                                                dtype=np.float32 if spec["datatype"] == "FP32" else np.object_))
            inputs.append(tensor)
        result = client.infer("inline", inputs, headers=auth, request_id="t-1")
        typed = convert.infer_response(asyncio.run_coroutine_threadsafe(
            ingress._admitted(_call(auth, _typed_request()), "inline", None), state["loop"]).result(30))
        np.testing.assert_array_equal(result.as_numpy("predictions"),
                                      np.frombuffer(typed.raw_output_contents[0], dtype="<f4"))
        assert result.get_response().id == "t-1"
        for call, status in [(lambda: client.infer("inline", inputs), "UNAUTHENTICATED"),
                             (lambda: client.infer("ghost", inputs, headers=auth), "NOT_FOUND"),
                             (lambda: client.get_model_config("inline", headers=auth), "UNIMPLEMENTED")]:
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == f"StatusCode.{status}"
    finally:
        client.close()
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)


def _call(headers: dict[str, str], request: Any) -> Any:
    from mlplat.serving.infer_call import InferCall

    async def read() -> dict[str, Any]:
        return convert.payload_of(request)

    return InferCall("grpc", headers, [], read)
