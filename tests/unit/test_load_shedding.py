"""Load shedding and slow-client settings as they reach Serve and HAProxy (pure, no Ray running)."""

from __future__ import annotations

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
