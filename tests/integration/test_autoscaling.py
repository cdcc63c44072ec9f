"""Serve autoscaling on the shared Ray instance: the ingress, the pool and a dedicated model's
deployment go above one replica under bounded loopback load and back to their minimum after it,
never above their maximum. The dedicated model's bounds come from its own
``serving_policy.autoscaling`` (the ``serve.dedicated`` default here is max 1 replica).

Short delays and windows (``upscale_delay_s=1``, ``downscale_delay_s=2``, ``look_back_period_s=2``)
keep it to ~40-60 s on 2 cores; replicas take no CPU so several fit."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from mlplat.config import DedicatedSettings, PlatformConfig, PoolSettings, ScalingSettings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "autoscale-" + uuid.uuid4().hex
FAST = {"upscale_delay_s": 1.0, "downscale_delay_s": 2.0, "look_back_period_s": 2.0, "metrics_interval_s": 0.5}
POOL_MODELS = [f"tail-{i}" for i in range(3)]
CLIENTS = 12
LOAD_MAX_S = 25.0
SETTLE_MAX_S = 45.0
APP = "mlplat-autoscale"
#: deployment -> (min, max) replicas as configured below.
BOUNDS = {"ingress": (1, 2), "model-pool": (1, 2), "model-hot": (1, 2)}


@pytest.fixture(scope="module")
def scaling_app(ray_session, serve_http_port, tmp_path_factory):
    import ray
    from ray import serve

    root = tmp_path_factory.mktemp("autoscale-root")
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN,
        serve=ServeSettings(
            port=serve_http_port, app_name=APP, route_prefix="/autoscale", telemetry=False, metrics=False,
            ingress_num_cpus=0, ingress_autoscaling=ScalingSettings(min_replicas=1, max_replicas=2,
                                                                    target_ongoing_requests=2, **FAST),
            pool=PoolSettings(min_replicas=1, max_replicas=2, target_ongoing_requests=1, num_cpus=0, **FAST),
            dedicated=DedicatedSettings(min_replicas=1, max_replicas=1, num_cpus=0)),
    )
    actor_name = f"registry-autoscale-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    storage = open_root(config.root)
    for name in POOL_MODELS:
        register_servable(registry, storage, name)
    register_servable(registry, storage, "hot", serving_policy={
        "placement": "dedicated",
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, **FAST}})
    url = start_serving(config, registry_actor=actor_name, dedicated_models=["hot"])
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for name in [*POOL_MODELS, "hot"]:  # warm: every model loaded once
            client.post(f"/v1/models/{name}:predict", json={"instances": [RAW_ROW]}).raise_for_status()
    try:
        yield url
    finally:
        serve.delete(APP)
        ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


def live_replicas() -> dict[str, int]:
    """Replicas per deployment that are starting or running (not those being stopped)."""
    from ray import serve

    app = serve.status().applications.get(APP)
    counts = {}
    for name, deployment in (app.deployments if app else {}).items():
        states = {str(getattr(k, "value", k)): v for k, v in (deployment.replica_states or {}).items()}
        counts[name] = states.get("RUNNING", 0) + states.get("STARTING", 0)
    return counts


def drive_load(url: str, stop: threading.Event, codes: Counter) -> list[threading.Thread]:
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        name = "hot" if i % 2 else POOL_MODELS[i % len(POOL_MODELS)]
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while not stop.is_set():
                try:
                    code = client.post(f"/v1/models/{name}:predict", json={"instances": [RAW_ROW] * 8}).status_code
                except httpx.HTTPError:
                    code = 599
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def test_deployments_scale_up_under_load_and_back_down_after(scaling_app):
    assert live_replicas() == {name: low for name, (low, _) in BOUNDS.items()}
    peak: dict[str, int] = dict.fromkeys(BOUNDS, 0)
    highest: dict[str, int] = dict.fromkeys(BOUNDS, 0)
    codes: Counter = Counter()
    stop = threading.Event()
    started = time.monotonic()
    threads = drive_load(scaling_app, stop, codes)
    try:
        while time.monotonic() - started < LOAD_MAX_S and not all(peak[d] > 1 for d in BOUNDS):
            for name, count in live_replicas().items():
                peak[name] = max(peak.get(name, 0), count)
                highest[name] = max(highest.get(name, 0), count)
            time.sleep(0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=35)
    load_s = time.monotonic() - started
    settled: dict[str, Any] = {}
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        settled = live_replicas()
        for name, count in settled.items():
            highest[name] = max(highest.get(name, 0), count)
        if settled == {name: low for name, (low, _) in BOUNDS.items()}:
            break
        time.sleep(0.5)
    report = (f"peak {peak}, highest {highest}, after load {settled} ({time.monotonic() - started - load_s:.1f} s), "
              f"load {load_s:.1f} s, status codes {dict(codes)}")
    print(report)
    assert codes[200] > 0, report
    for name, (low, high) in BOUNDS.items():
        assert peak[name] > 1, f"{name} did not scale up: {report}"
        assert highest[name] <= high, f"{name} went above max_replicas {high}: {report}"
        assert settled.get(name) == low, f"{name} did not scale back to {low} within {SETTLE_MAX_S} s: {report}"


DIRECT_APP = "mlplat-autoscale-direct"


@pytest.fixture
def direct_scaling_app(ray_session, serve_http_port, tmp_path_factory):
    """An app whose one model is placed in the ingress, driven only through the direct port:
    Serve itself sees no request at all, so the ingress scales only if the replicas' direct
    requests reach its autoscaling policy (record_autoscaling_stats -> direct_aware_policy)."""
    import ray
    from ray import serve

    from tests.servers import free_port

    root = tmp_path_factory.mktemp("autoscale-direct-root")
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN,
        serve=ServeSettings(
            port=serve_http_port, app_name=DIRECT_APP, route_prefix="/autoscale-direct", direct_port=free_port(),
            telemetry=False, metrics=False, ingress_num_cpus=0,
            ingress_autoscaling=ScalingSettings(min_replicas=1, max_replicas=2, target_ongoing_requests=1, **FAST),
            pool=PoolSettings(min_replicas=1, max_replicas=1, num_cpus=0)),
    )
    actor_name = f"registry-autoscale-direct-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    register_servable(registry, open_root(config.root), "inline", placement="ingress")
    start_serving(config, registry_actor=actor_name)
    url = f"http://{config.serve.host}:{config.serve.direct_port}/autoscale-direct"
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        client.post("/v1/models/inline:predict", json={"instances": [RAW_ROW]}).raise_for_status()
    try:
        yield url
    finally:
        serve.delete(DIRECT_APP)
        ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


def test_direct_port_requests_scale_the_ingress(direct_scaling_app):
    def ingress_replicas() -> int:
        from ray import serve

        app = serve.status().applications.get(DIRECT_APP)
        deployment = app.deployments["ingress"] if app else None
        states = {str(getattr(k, "value", k)): v for k, v in ((deployment.replica_states or {}) if deployment else {}).items()}
        return states.get("RUNNING", 0) + states.get("STARTING", 0)

    assert ingress_replicas() == 1
    codes: Counter = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=direct_scaling_app, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while not stop.is_set():
                try:
                    code = client.post("/v1/models/inline:predict", json={"instances": [RAW_ROW] * 64}).status_code
                except httpx.HTTPError:
                    code = 599
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    started, peak = time.monotonic(), 1
    try:
        while time.monotonic() - started < LOAD_MAX_S and peak < 2:
            peak = max(peak, ingress_replicas())
            time.sleep(0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=35)
    deadline, settled = time.monotonic() + SETTLE_MAX_S, None
    while time.monotonic() < deadline:
        settled = ingress_replicas()
        if settled == 1:
            break
        time.sleep(0.5)
    report = f"peak {peak}, after load {settled}, status codes {dict(codes)}"
    print(report)
    assert codes[200] > 0 and set(codes) == {200}, report
    assert peak == 2, f"the ingress did not scale up on direct-port load: {report}"
    assert settled == 1, f"the ingress did not scale back to 1 within {SETTLE_MAX_S} s: {report}"
