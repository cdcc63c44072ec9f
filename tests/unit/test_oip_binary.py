"""The OIP v2 binary tensor data extension's pure parser and encoder (no Ray, no HTTP server):
bodies built by tritonclient's own request builder decode to what the JSON form carries, every
framing error is a 400 naming the input, and random bytes never raise anything else."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplat.serving.oip_binary import binary_output_requested, decode_request, encode_response
from mlplat.serving.request import InputSchema, RequestError, parse_v2

LIMITS = {"max_bytes": 4 << 20, "max_depth": 32}
SCHEMA = InputSchema(columns={"amount": "number", "age": "number_or_null", "country": "category"}, input_dim=6)


def _body(header: dict, *tensors: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(tensors), str(len(head))


def _tensor(name: str, shape: list[int], datatype: str, raw: bytes, **extra) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(raw)}, **extra}


def _strings(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _error(body: bytes, split: str) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_request(body, split, **LIMITS)
    return info.value


def test_a_tritonclient_body_decodes_to_the_json_form_and_parses_alike():
    """The request exactly as tritonclient.http builds it (binary inputs, binary outputs asked)."""
    from tritonclient.http import InferInput, InferRequestedOutput
    from tritonclient.http._utils import _get_inference_request

    amount, age = np.array([1.0, 20.5], dtype=np.float32), np.array([30, 41], dtype=np.float32)
    country = np.array(["fr", "üs"], dtype=np.object_)
    inputs = []
    for name, array, datatype in (("amount", amount, "FP32"), ("age", age, "FP32"), ("country", country, "BYTES")):
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    body, split = _get_inference_request(inputs, "req-7", [InferRequestedOutput("predictions", binary_data=True)],
                                         0, False, False, 0, None, None)
    payload = decode_request(body, str(split), **LIMITS)
    assert [t["data"] for t in payload["inputs"]] == [[1.0, 20.5], [30.0, 41.0], ["fr", "üs"]]
    assert binary_output_requested(payload) is True
    json_form = {"id": "req-7", "inputs": [{"name": n, "shape": [2], "datatype": d, "data": v} for n, d, v in (
        ("amount", "FP32", [1.0, 20.5]), ("age", "FP32", [30.0, 41.0]), ("country", "BYTES", ["fr", "üs"]))]}
    assert parse_v2(payload, SCHEMA, max_instances=10) == parse_v2(json_form, SCHEMA, max_instances=10)


@pytest.mark.parametrize(("datatype", "values"), [
    ("FP32", [1.5, -2.0]), ("FP64", [0.1, 3.0]), ("FP16", [0.5, 2.0]), ("INT64", [-(2**40), 7]), ("INT32", [1, -1]),
    ("INT16", [5, -5]), ("INT8", [-128, 127]), ("UINT8", [0, 255]), ("UINT16", [65535, 1]), ("UINT32", [2**32 - 1, 0]),
    ("UINT64", [2**64 - 1, 3]), ("BOOL", [True, False]),
])
def test_every_fixed_size_datatype_decodes_little_endian(datatype, values):
    from tritonclient.utils import triton_to_np_dtype

    raw = np.asarray(values, dtype=triton_to_np_dtype(datatype)).astype(np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")).tobytes()
    body, split = _body({"inputs": [_tensor("x", [2], datatype, raw)]}, raw)
    assert decode_request(body, split, **LIMITS)["inputs"][0]["data"] == values


def test_json_and_binary_inputs_mix_and_a_header_only_body_is_plain_json():
    raw = np.array([2.0], dtype="<f4").tobytes()
    body, split = _body({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]},
                                    _tensor("b", [1], "FP32", raw)]}, raw)
    assert [t["data"] for t in decode_request(body, split, **LIMITS)["inputs"]] == [[1.0], [2.0]]
    body, split = _body({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert decode_request(body, split, **LIMITS)["inputs"][0]["data"] == [1.0]


FP32_2 = np.array([1.0, 2.0], dtype="<f4").tobytes()


@pytest.mark.parametrize(("header", "tail", "split", "field", "says"), [
    # the header length: past the body, not a number, negative, zero
    ({"inputs": [_tensor("amount", [2], "FP32", FP32_2)]}, FP32_2, "100000", "Inference-Header-Content-Length",
     "the body has only"),
    ({"inputs": []}, b"", "ten", "Inference-Header-Content-Length", "non-negative integer"),
    ({"inputs": []}, b"", "-5", "Inference-Header-Content-Length", "non-negative integer"),
    ({"inputs": []}, b"", "1e3", "Inference-Header-Content-Length", "non-negative integer"),
    ({"inputs": []}, b"", "0", "Inference-Header-Content-Length", "must start with the JSON"),
    # a tensor's size that does not match its shape x datatype
    ({"inputs": [_tensor("amount", [3], "FP32", FP32_2)]}, FP32_2, None, "amount.parameters.binary_data_size",
     "is 12 bytes"),
    # sizes that claim more, or fewer, bytes than follow the header
    ({"inputs": [_tensor("amount", [4], "FP32", FP32_2 * 2)]}, FP32_2, None, "amount.parameters.binary_data_size",
     "only 8 bytes"),
    ({"inputs": [_tensor("amount", [2], "FP32", FP32_2)]}, FP32_2 + b"xx", None, "Inference-Header-Content-Length",
     "belong to no input"),
    # BYTES: a length prefix past the data, missing room for a prefix, bytes left over, not UTF-8
    ({"inputs": [_tensor("country", [1], "BYTES", b"\xff\x00\x00\x00fr")]}, b"\xff\x00\x00\x00fr", None,
     "country.parameters.binary_data_size", "declares 255 bytes"),
    ({"inputs": [_tensor("country", [2], "BYTES", _strings(b"frfr"))]}, _strings(b"frfr"), None,
     "country.parameters.binary_data_size", "no room for its 4-byte length"),
    ({"inputs": [_tensor("country", [3], "BYTES", _strings(b"fr"))]}, _strings(b"fr"), None,
     "country.parameters.binary_data_size", "need at least 12 bytes"),
    ({"inputs": [_tensor("country", [1], "BYTES", _strings(b"fr", b"de"))]}, _strings(b"fr", b"de"), None,
     "country.parameters.binary_data_size", "follow its 1 BYTES elements"),
    ({"inputs": [_tensor("country", [1], "BYTES", _strings(b"\xff\xfe"))]}, _strings(b"\xff\xfe"), None,
     "country[0]", "not UTF-8"),
    # a size that is not a byte count; both data and binary data; a BOOL byte that is not 0/1
    ({"inputs": [{**_tensor("amount", [2], "FP32", FP32_2), "parameters": {"binary_data_size": -8}}]}, FP32_2, None,
     "amount.parameters.binary_data_size", "non-negative integer"),
    ({"inputs": [{**_tensor("amount", [2], "FP32", FP32_2), "parameters": {"binary_data_size": "8"}}]}, FP32_2, None,
     "amount.parameters.binary_data_size", "non-negative integer"),
    ({"inputs": [_tensor("amount", [2], "FP32", FP32_2, data=[1, 2])]}, FP32_2, None,
     "amount.parameters.binary_data_size", "both 'data'"),
    ({"inputs": [_tensor("flag", [1], "BOOL", b"\x02")]}, b"\x02", None, "flag", "0 or 1"),
])
def test_framing_errors_are_400s_naming_the_input(header, tail, split, field, says):
    body, own_split = _body(header, tail)
    error = _error(body, split or own_split)
    assert (error.status, error.field) == (400, field), error.message
    assert says in error.message


@pytest.mark.parametrize(("tensor", "status", "field"), [
    (_tensor("amount", [-1], "FP32", FP32_2), 422, "amount.shape"),
    (_tensor("amount", [2], "BF16", FP32_2), 422, "amount.datatype"),
    ({**_tensor("amount", [2], "FP32", FP32_2), "parameters": [8]}, 422, "amount.parameters"),
])
def test_shape_and_datatype_errors_answer_as_the_json_form_does(tensor, status, field):
    body, split = _body({"inputs": [tensor]}, FP32_2)
    assert (_error(body, split).status, _error(body, split).field) == (status, field)


def test_a_shape_with_huge_element_count_is_refused_without_reading_or_looping():
    body, split = _body({"inputs": [_tensor("country", [2**31 - 1, 2**31 - 1], "BYTES", b"\x00" * 8)]}, b"\x00" * 8)
    assert _error(body, split).status == 400


@pytest.mark.parametrize(("payload", "expected"), [
    ({"inputs": []}, False),
    ({"parameters": {"binary_data_output": True}}, True),
    ({"parameters": {"binary_data_output": True}, "outputs": [{"name": "predictions", "parameters": {"binary_data": False}}]},
     False),
    ({"outputs": [{"name": "predictions", "parameters": {"binary_data": True}}]}, True),
    ({"outputs": [{"name": "other", "parameters": {"binary_data": True}}]}, False),
])
def test_binary_output_is_asked_per_output_or_for_the_whole_request(payload, expected):
    assert binary_output_requested(payload) is expected


@pytest.mark.parametrize(("payload", "field"), [
    ({"parameters": {"binary_data_output": "yes"}}, "parameters.binary_data_output"),
    ({"outputs": [{"name": "predictions", "parameters": {"binary_data": 1}}]}, "outputs[0].parameters.binary_data"),
])
def test_a_binary_flag_that_is_not_a_boolean_is_a_422(payload, field):
    with pytest.raises(RequestError) as info:
        binary_output_requested(payload)
    assert (info.value.status, info.value.field) == (422, field)


def test_an_encoded_response_is_what_tritonclient_reads():
    from tritonclient.http import InferResult

    document = {"model_name": "m", "model_version": "1", "id": "r", "outputs": [
        {"name": "predictions", "shape": [2, 2], "datatype": "FP32", "data": [0.25, 0.75, 0.5, 0.5]},
        {"name": "labels", "shape": [2], "datatype": "BYTES", "data": ["a", "bé"]}]}
    body, split = encode_response(document)
    result = InferResult.from_response_body(body, header_length=split)
    np.testing.assert_array_equal(result.as_numpy("predictions"), np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32))
    assert result.as_numpy("labels").tolist() == [b"a", "bé".encode()]
    assert result.get_output("predictions")["parameters"] == {"binary_data_size": 16}


_HEADER_OR_JUNK = st.one_of(st.integers(-5, 400).map(str), st.text(max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), split=_HEADER_OR_JUNK)
def test_random_bytes_raise_only_a_client_error(body, split):
    try:
        decode_request(body, split, **LIMITS)
    except RequestError as exc:
        assert 400 <= exc.status < 500
        assert exc.field is None or isinstance(exc.field, str)


@st.composite
def _framed(draw):
    """A well-formed JSON header whose declared sizes, shapes and datatypes are random, followed
    by random bytes: the paths past the JSON parser."""
    datatypes = st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "UINT8", "FP16", "BF16", 7])
    tensors = draw(st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["amount", "age", "country", ""]),
        "shape": st.one_of(st.lists(st.integers(-1, 5), min_size=0, max_size=3), st.just("x")),
        "datatype": datatypes,
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-2, 40), st.booleans())}),
                                st.just({})),
    }), max_size=3))
    head = json.dumps({"inputs": tensors}).encode()
    return head + draw(st.binary(max_size=80)), str(len(head))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(framed=_framed())
def test_random_framing_after_a_valid_header_raises_only_a_client_error(framed):
    body, split = framed
    try:
        payload = decode_request(body, split, **LIMITS)
    except RequestError as exc:
        assert 400 <= exc.status < 500
        return
    for tensor in payload["inputs"]:
        if "binary_data_size" in tensor["parameters"]:
            assert isinstance(tensor["data"], list)
