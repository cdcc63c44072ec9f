"""Property-based tests (hypothesis): names, configs, encoder specs and request bodies never
answer random input with a stack trace -- a value, or the documented error naming where.

Bounded: a fixed number of examples each, no deadline (a shared 2-core box)."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplat.config import PlatformConfig, ServeSettings, parse_config
from mlplat.errors import ConfigError, InvalidName
from mlplat.features.encoders import _ALIASES, BUILTIN_ENCODERS, Encoder, build_encoder
from mlplat.names import NAME_PATTERN, parse_serving_id, serving_id, validate_name
from mlplat.serving.request import InputSchema, ParsedRequest, RequestError, parse_json_body, parse_v1, parse_v2

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)


# -- names ---------------------------------------------------------------------------------------
@BOUNDED
@given(st.one_of(st.text(max_size=80), st.integers(), st.none(), st.binary(max_size=8),
                 st.sampled_from(["../x", "%2e%2e%2f", "..\\x", "/abs", "a\x00b", "s3://other/", "file://x", "A"])))
def test_a_name_is_valid_exactly_when_it_matches_the_pattern(value):
    matches = isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None
    try:
        assert validate_name(value, "model name") == value and matches
    except InvalidName as exc:
        assert not matches
        assert "invalid model name" in str(exc) and NAME_PATTERN.pattern in str(exc)


@BOUNDED
@given(st.from_regex(NAME_PATTERN, fullmatch=True), st.integers(1, 10**9 - 1))
def test_serving_ids_round_trip(name, version):
    assert parse_serving_id(serving_id(name, version)) == (name, version)


@BOUNDED
@given(st.text(max_size=40))
def test_a_serving_id_parses_or_is_refused_clearly(value):
    try:
        name, version = parse_serving_id(value)
    except InvalidName as exc:
        assert "expected '<model-name>@v<version>'" in str(exc)
    else:
        assert serving_id(name, version) == value


# -- configs ---------------------------------------------------------------------------------------
def _field_names(model) -> list[str]:
    return sorted(model.model_fields)


#: Keys as a YAML file can hold them (an empty key is reported as '<top level>': left to mlplat/config/).
CONFIG_KEYS = st.sampled_from(_field_names(PlatformConfig)) | st.text(min_size=1, max_size=10)
SERVE_KEYS = st.sampled_from(_field_names(ServeSettings)) | st.text(max_size=10)


@BOUNDED
@given(st.dictionaries(CONFIG_KEYS, JSON | st.dictionaries(SERVE_KEYS, JSON, max_size=3), max_size=4))
def test_a_random_config_is_valid_or_one_config_error_naming_each_bad_key(data):
    try:
        config = parse_config(data, PlatformConfig, source="config")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("config: ") and "Traceback" not in message
        for key in data:
            if key not in PlatformConfig.model_fields:
                assert f"unknown key '{key}'" in message
    else:
        assert isinstance(config, PlatformConfig)


@BOUNDED
@given(st.sampled_from(["api_token", "admin_token"]), st.text(min_size=12, max_size=20).filter(str.strip),
       st.dictionaries(SERVE_KEYS, JSON, min_size=1, max_size=3))
def test_a_config_error_never_echoes_a_token(field, secret, serve):
    data = {field: {"nested": secret}, "serve": serve}  # a wrong type: the token's own error
    try:
        parse_config(data, PlatformConfig, source="config")
    except ConfigError as exc:
        assert secret not in str(exc)
        assert f"'{field}'" in str(exc)
    else:
        raise AssertionError("a token given as a mapping was accepted")


# -- encoder specs -----------------------------------------------------------------------------------
ENCODER_TYPES = st.sampled_from(sorted(BUILTIN_ENCODERS) + sorted(_ALIASES)) | st.text(max_size=10).filter(
    lambda s: ":" not in s) | st.sampled_from(["mlplat.features.encoders:Standardize",
                                               "mlplat.features.encoders:build_encoder", "no_such_module_x:Y"])
PARAMS = st.dictionaries(st.sampled_from(["fill", "clip", "lower", "lower_quantile", "upper", "upper_quantile",
                                          "strategy", "value", "categories", "max_categories", "min_frequency",
                                          "num_buckets", "salt"]) | st.text(max_size=6),
                         JSON, max_size=3)


@BOUNDED
@given(st.fixed_dictionaries({}, optional={
    "type": ENCODER_TYPES, "column": st.text(max_size=10) | SCALARS, "output": st.text(max_size=10) | SCALARS,
    "params": PARAMS | JSON, "fitted": st.dictionaries(st.text(max_size=6), JSON, max_size=2) | JSON}))
def test_a_random_encoder_spec_builds_or_is_a_config_error(spec):
    try:
        encoder = build_encoder(spec)
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)
    else:
        assert isinstance(encoder, Encoder)
        assert isinstance(encoder.column, str) and isinstance(encoder.output, str)
        json.dumps(encoder.to_json())  # a built encoder serializes


# -- request bodies ------------------------------------------------------------------------------------
SCHEMA = InputSchema(columns={"amount": "number", "age": "number_or_null", "country": "category", "raw": "any"},
                     input_dim=7)
COLUMNS = st.sampled_from([*SCHEMA.columns, "input"]) | st.text(max_size=6)
ROWS = st.lists(st.dictionaries(COLUMNS, SCALARS | JSON, max_size=5) | JSON, max_size=4)
TENSORS = st.lists(st.fixed_dictionaries({}, optional={
    "name": COLUMNS | SCALARS, "shape": st.lists(st.integers(-2, 8) | SCALARS, max_size=3) | JSON,
    "datatype": st.sampled_from(["FP32", "BYTES", "INT64", "BOOL"]) | JSON,
    "data": st.lists(SCALARS | st.lists(SCALARS, max_size=7), max_size=8) | JSON}), max_size=5)
V1_BODIES = st.fixed_dictionaries({}, optional={"instances": ROWS | JSON, "id": JSON}) | st.dictionaries(
    st.text(max_size=8), JSON, max_size=3)
V2_BODIES = st.fixed_dictionaries({}, optional={"inputs": TENSORS | JSON, "id": JSON, "parameters": JSON,
                                                "outputs": JSON}) | st.dictionaries(st.text(max_size=8), JSON, max_size=3)
_FIELD = re.compile(r"^[^\n]{1,200}$")


def _parsed_or_client_error(parse, payload) -> None:
    try:
        parsed = parse(payload, SCHEMA, max_instances=3)
    except RequestError as exc:
        assert 400 <= exc.status < 500, exc.status
        assert set(exc.body()) <= {"error", "field"}
        assert exc.field is None or _FIELD.match(exc.field), exc.field
        assert len(exc.message) < 2_000
    else:
        assert isinstance(parsed, ParsedRequest) and 1 <= parsed.num_rows <= 3


@BOUNDED
@given(V1_BODIES)
def test_a_random_v1_body_parses_or_is_a_4xx(payload):
    _parsed_or_client_error(parse_v1, payload)


@BOUNDED
@given(V2_BODIES)
def test_a_random_v2_body_parses_or_is_a_4xx(payload):
    _parsed_or_client_error(parse_v2, payload)


@BOUNDED
@given(st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()))
def test_random_bytes_parse_to_an_object_or_a_4xx(body):
    try:
        value = parse_json_body(body, max_bytes=1 << 16, max_depth=8)
    except RequestError as exc:
        assert exc.status in (400, 413)
    else:
        assert isinstance(value, dict)
