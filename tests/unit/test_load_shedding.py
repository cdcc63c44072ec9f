"""Load shedding and slow-client settings as they reach Serve and HAProxy (pure, no Ray running)."""

from __future__ import annotations

import asyncio

import pytest

from mlplat.config import PlatformConfig
from mlplat.serving.admission import Admission, inference_limit, queue_options, retry_after_headers
from mlplat.serving.app import build_app, serve_env


def test_admission_refuses_past_the_limit_and_admits_again_when_one_leaves():
    gate = Admission(limit=2)
    assert [gate.try_enter() for _ in range(3)] == [True, True, False]
    gate.leave()
    assert gate.try_enter() and gate.in_flight == 2
    with pytest.raises(ValueError):
        Admission(limit=0)


def test_inference_keeps_headroom_for_health_but_never_zero():
    assert inference_limit(256, 16) == 240
    assert inference_limit(16, 16) == 1


def test_retry_after_only_on_503():
    assert retry_after_headers(503, 3) == {"Retry-After": "3"}
    assert retry_after_headers(503, 0) == {"Retry-After": "0"}
    assert retry_after_headers(429, 3) == {} and retry_after_headers(408, 3) == {}


def test_every_deployment_gets_a_bounded_queue_and_retry_after():
    config = PlatformConfig(serve={"ingress_max_queued_requests": 7, "retry_after_s": 2,
                                   "pool": {"max_queued_requests": 5}, "dedicated": {"max_queued_requests": 9}})
    ingress = build_app(config, "registry", ["hot"])._bound_deployment
    pool, dedicated = ingress.init_args[2]._bound_deployment, ingress.init_args[3]["hot"]._bound_deployment
    assert (ingress.max_queued_requests, pool.max_queued_requests, dedicated.max_queued_requests) == (7, 5, 9)
    for deployment in (ingress, pool, dedicated):
        assert deployment.backpressure_config.status_code == 503
        assert deployment.backpressure_config.retry_after_s == 2


def test_queue_options_are_what_serve_accepts():
    options = queue_options(3, 1)
    assert options["max_queued_requests"] == 3 and options["backpressure_config"].retry_after_s == 1


def test_haproxy_cuts_off_silent_clients_well_before_serves_hour():
    env = serve_env(PlatformConfig(serve={"haproxy": True}))
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "30"
    assert serve_env(PlatformConfig(serve={"haproxy": True, "haproxy_timeout_client_s": 5}))[
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "5"
    assert "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S" not in serve_env(PlatformConfig())


def test_haproxy_config_takes_the_timeout_from_the_environment():
    """The variable mlplat sets is the one Serve 2.60 renders as ``timeout client`` (read when
    Serve's constants are imported, so checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("from ray.serve._private.haproxy import HAProxyConfig; c = HAProxyConfig(); "
            "print(c.timeout_client_s, c.timeout_http_request_s)")
    env = {**__import__("os").environ, "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "7"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["7", "None"]  # http-request: no variable in Serve 2.60


# -- the ingress itself, built with an in-memory reader (no Ray) --------------------------------

def _ingress(tmp_path, **serve):
    import torch

    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.records import ModelState
    from mlplat.storage import open_root
    from tests.integration.serving_support import fitted_encoder
    from tests.unit.test_serving_routes import FakeReader, ingress_outside_serve

    storage = open_root(str(tmp_path / "root"))
    encoder = fitted_encoder(0)
    spec = ModelSpec(task="binary", hidden=[8])
    torch.manual_seed(0)
    ref = save_bundle(storage, "inline", 1, build_model(spec, len(encoder.feature_columns)), spec=spec,
                      input_columns=encoder.feature_columns, encoder=encoder.to_json())
    reader = FakeReader()
    reader.add("inline", 1, ModelState.PRODUCTION, placement="ingress")
    reader.versions[("inline", 1)] = reader.versions[("inline", 1)].model_copy(update={"artifacts": {"bundle": ref}})
    reader.promote("inline", 1)
    config = PlatformConfig(root=str(tmp_path / "root"), api_token=TOKEN, serve={"telemetry": False, **serve})
    return ingress_outside_serve(config, "no-actor-needed", None, {}, reader=reader)


TOKEN = "unit-token"


def _stalled_request(declared_bytes: int, sent: bytes = b""):
    """A POST that announces ``declared_bytes`` and sends ``sent``, then nothing more (a client
    that stalls; the server's receive() waits)."""
    from starlette.requests import Request

    chunks = [{"type": "http.request", "body": sent, "more_body": True}] if sent else []

    async def receive():
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)

    headers = [(b"content-type", b"application/json"), (b"content-length", str(declared_bytes).encode()),
               (b"authorization", f"Bearer {TOKEN}".encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/models/inline:predict", "raw_path": b"/v1/models/inline:predict",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80)}
    return Request(scope, receive)


def test_a_stalled_body_is_a_408_after_the_deadline(tmp_path):
    import json
    import time

    ingress = _ingress(tmp_path, body_read_timeout_s=0.3)

    async def scenario():
        try:
            started = time.monotonic()
            response = await ingress.predict_v1("inline", _stalled_request(120, b'{"instances": ['))
            return response, time.monotonic() - started
        finally:
            await ingress._routes.stop()

    response, elapsed_s = asyncio.run(scenario())
    assert response.status_code == 408
    body = json.loads(response.body)
    assert set(body) == {"error"} and "0.3 s" in body["error"] and "15 bytes received of 120" in body["error"]
    assert 0.3 <= elapsed_s < 5


def test_past_the_inference_limit_the_answer_is_an_immediate_503_and_health_still_answers(tmp_path):
    import json

    ingress = _ingress(tmp_path, body_read_timeout_s=30, ingress_max_ongoing_requests=3, ingress_health_headroom=2,
                       retry_after_s=4)

    async def scenario():
        stuck = asyncio.ensure_future(ingress.predict_v1("inline", _stalled_request(100)))  # holds the one slot
        try:
            await asyncio.sleep(0.2)
            shed = await asyncio.wait_for(ingress.predict_v1("inline", _stalled_request(100)), timeout=2)
            live = await asyncio.wait_for(ingress.live(), timeout=2)
            return shed, live
        finally:
            stuck.cancel()
            await ingress._routes.stop()

    shed, live = asyncio.run(scenario())
    assert shed.status_code == 503 and shed.headers["retry-after"] == "4"
    assert set(json.loads(shed.body)) == {"error"}  # the API's error body (no field: not the input's fault)
    assert live == {"live": True}
    assert ingress._admission.in_flight == 0  # the cancelled request gave its slot back
