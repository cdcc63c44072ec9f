"""Bad request bodies the parser must turn into a 4xx naming the field, with a message a
client can act on and nothing of the server's internals (pure, no Ray, no HTTP)."""

from __future__ import annotations

import json
import sys

import pytest

from mlplat.serving.request import MAX_ABS_NUMBER, InputSchema, RequestError, parse_json_body, parse_v1, parse_v2

SCHEMA = InputSchema(columns={"amount": "number", "age": "number_or_null", "country": "category"}, input_dim=6)
LIMITS = {"max_bytes": 1 << 20, "max_depth": 32}
#: What a client must never read in an error: Python internals and their advice.
INTERNALS = ("sys.set_int_max_str_digits", "Traceback", "File \"", ".py", "ValueError", "TypeError",
             "OverflowError", "KeyError", "NoneType", "dict", "str'", "mlplat.")


def _error(body: bytes | str, parse=None) -> RequestError:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(RequestError) as info:
        payload = parse_json_body(raw, **LIMITS)
        if parse is not None:
            parse(payload, SCHEMA, max_instances=100)
    error = info.value
    assert set(error.body()) <= {"error", "field"}
    assert not any(marker in error.message for marker in INTERNALS), error.message
    return error


def test_a_5000_digit_integer_is_a_400_naming_the_field_without_python_advice():
    digits = "7" * 5000
    error = _error('{"instances": [{"amount": ' + digits + ', "age": 3, "country": "fr"}]}')
    assert error.status == 400
    assert error.field == "instances[0].amount"
    assert "5000 digits" in error.message and f"at most {sys.get_int_max_str_digits()} digits" in error.message
    negative = _error('{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [-' + digits + "]}]}")
    assert negative.status == 400 and negative.field == "inputs[0].data[0]"


def test_a_long_integer_at_the_top_level_names_the_body():
    assert _error("9" * 5000).field == "body"


@pytest.mark.parametrize(("body", "key"), [
    ('{"instances": [], "instances": [{"amount": 1, "age": 2, "country": "fr"}]}', "instances"),
    ('{"instances": [{"amount": 1, "amount": 2, "age": 2, "country": "fr"}]}', "amount"),
    ('{"inputs": [{"name": "a", "name": "b", "shape": [1], "datatype": "FP32", "data": [1]}]}', "name"),
])
def test_a_repeated_json_key_is_a_400_naming_the_key(body, key):
    error = _error(body)
    assert error.status == 400 and error.field == key
    assert f"duplicate key '{key}'" in error.message and "send each key once" in error.message


def test_a_long_repeated_key_is_shortened_in_the_answer():
    key = "k" * 10_000
    error = _error(json.dumps({key: 1})[:-1] + f', "{key}": 2}}')
    assert error.status == 400 and len(error.field) < 100 and len(error.message) < 300


def test_unique_keys_parse_as_before():
    assert parse_json_body(b'{"a": {"b": 1, "c": [{"b": 2}]}, "b": 3}', **LIMITS) == {"a": {"b": 1, "c": [{"b": 2}]},
                                                                                     "b": 3}


@pytest.mark.parametrize(("value", "status"), [(10**400, 422), (-(10**39), 422), (1e300, 422), (MAX_ABS_NUMBER * 2, 422)])
def test_numbers_beyond_the_documented_range_are_a_422_naming_the_field(value, status):
    row = {"amount": value, "age": 1, "country": "fr"}
    error = _error(json.dumps({"instances": [row]}), parse_v1)
    assert (error.status, error.field) == (status, "instances[0].amount")
    assert f"+-{MAX_ABS_NUMBER:g}" in error.message
    tensor = {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [value, 0, 0, 0, 0, 0]}]}
    assert _error(json.dumps(tensor), parse_v2).field == "input.data[0]"


def test_type_errors_speak_json_not_python():
    error = _error(json.dumps({"instances": [{"amount": "12", "age": 1, "country": "fr"}]}), parse_v1)
    assert (error.status, error.field) == (422, "instances[0].amount") and "got string" in error.message
    error = _error(json.dumps({"instances": [{"amount": 1, "age": 1, "country": {"a": 1}}]}), parse_v1)
    assert "got object" in error.message
    assert "got array" in _error("[1, 2]").message


@pytest.mark.parametrize(("payload", "field"), [
    ({"inputs": [{"name": "x", "shape": [1], "datatype": {"not": "hashable"}, "data": [1]}]}, "x.datatype"),
    ({"inputs": [{"name": "x", "shape": [2**40], "datatype": "FP32", "data": [1]}]}, "x.shape"),
    ({"inputs": [{"name": "x", "shape": [1] * 9, "datatype": "FP32", "data": [1]}]}, "x.shape"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": []}, "parameters"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": {}}, "outputs"),
])
def test_malformed_tensors_are_a_422_naming_the_field(payload, field):
    error = _error(json.dumps(payload), parse_v2)
    assert (error.status, error.field) == (422, field)


def test_invalid_utf8_is_a_400_without_codec_internals():
    error = _error(b'{"instances": "\xff"}')
    assert error.status == 400 and "UTF-8" in error.message


def test_large_but_representable_numbers_such_as_epoch_microseconds_are_served():
    schema = InputSchema(columns={"ts_us": "number"}, input_dim=1)
    for value in (1_764_500_000_000_000, 1.7645e18, -(10**20)):
        parsed = parse_v1({"instances": [{"ts_us": value}]}, schema, max_instances=10)
        assert parsed.rows == [{"ts_us": value}]


def test_a_feature_name_with_a_newline_or_dots_stays_one_line_in_the_field_path():
    """Found by test_properties: an unknown key with a newline made a two-line ``field``."""
    error = _error(json.dumps({"instances": [{"\n0": 1}]}), parse_v1)
    assert error.status == 422 and error.field == 'instances[0]["\\n0"]'
    error = _error(json.dumps({"instances": [{"amount": 1, "age": 2, "country": "fr", "a.b": 3}]}), parse_v1)
    assert error.field == 'instances[0]["a.b"]'
    error = _error(json.dumps({"instances": [{"amount": 1, "age": 2}]}), parse_v1)
    assert error.field == "instances[0].country"


def test_the_parsers_doctests():
    import doctest

    import mlplat.serving.request as request

    assert doctest.testmod(request).failed == 0
