"""Fault tests F1 (kill a Serve replica under load) and F4 (kill the Serve controller):
bounded loopback load from a few client threads, stopping by itself."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import ray

from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

TOKEN = "fault-" + uuid.uuid4().hex
CONCURRENCY = 4


@pytest.fixture(scope="module")
def fault_app(ray_session, serve_http_port, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("faults-root")
    config = PlatformConfig(root=str(root), namespace="mlplat-test", api_token=TOKEN,
                            serve=ServeSettings(port=serve_http_port, app_name="mlplat-faults", telemetry=False,
                                                pool=PoolSettings(min_replicas=1, max_replicas=1)))
    actor_name = f"registry-faults-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    register_servable(registry, open_root(config.root), "steady")
    url = start_serving(config, registry_actor=actor_name)
    httpx.post(f"{url}/v1/models/steady:predict", json={"instances": [RAW_ROW]},
               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).raise_for_status()  # warm
    yield url
    serve.delete(config.serve.app_name)
    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


class LoadResult:
    def __init__(self):
        self.ok = 0
        self.failed_first_try = 0
        self.failed_after_retry = 0
        self.lock = threading.Lock()


def run_load(url: str, duration_s: float, fault: callable, fault_at_s: float) -> LoadResult:
    """CONCURRENCY client threads for duration_s; each 5xx/connection error is retried once."""
    result = LoadResult()
    stop = time.monotonic() + duration_s

    def client_loop():
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while time.monotonic() < stop:
                outcomes = []
                for _attempt in range(2):
                    try:
                        code = client.post("/v1/models/steady:predict", json={"instances": [RAW_ROW]}).status_code
                    except httpx.HTTPError:
                        code = 599
                    outcomes.append(code)
                    if code < 500:
                        break
                with result.lock:
                    if outcomes[0] == 200:
                        result.ok += 1
                    else:
                        result.failed_first_try += 1
                        if outcomes[-1] != 200:
                            result.failed_after_retry += 1

    threads = [threading.Thread(target=client_loop) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    time.sleep(fault_at_s)
    fault()
    for t in threads:
        t.join(timeout=duration_s + 60)
    return result


def _serve_actor(prefix: str):
    for info in ray.util.list_named_actors(all_namespaces=True):
        if info["namespace"] == "serve" and info["name"].startswith(prefix):
            return ray.get_actor(info["name"], namespace="serve")
    raise AssertionError(f"no Serve actor named {prefix}*")


def test_f1_kill_pool_replica_under_load(fault_app):
    killed = {}

    def kill_replica():
        killed["replica"] = True
        ray.kill(_serve_actor("SERVE_REPLICA::mlplat-faults#model-pool"), no_restart=True)

    result = run_load(fault_app, duration_s=12, fault=kill_replica, fault_at_s=2)
    assert killed and result.ok > 20
    assert result.failed_first_try <= CONCURRENCY, vars(result)
    assert result.failed_after_retry == 0, vars(result)
    # Once the replacement runs: no failures at all.
    steady = run_load(fault_app, duration_s=3, fault=lambda: None, fault_at_s=0)
    assert steady.failed_first_try == 0 and steady.ok > 0


def test_f4_kill_serve_controller_under_load(fault_app):
    def kill_controller():
        ray.kill(_serve_actor("SERVE_CONTROLLER_ACTOR"), no_restart=False)

    result = run_load(fault_app, duration_s=8, fault=kill_controller, fault_at_s=2)
    assert result.ok > 20
    assert result.failed_first_try == 0, vars(result)
