"""The pure parts of rollout without Ray: which Serve deployments pre-warm a model, when a
pre-warm is done, which VALIDATED events the controller deploys, probe rows, the per-replica
model cache with pins, and the route table's canary split."""

from __future__ import annotations

import asyncio
import doctest
import time

import pytest

from mlplat.lifecycle import controller, deploy
from mlplat.lifecycle.controller import auto_deploys
from mlplat.lifecycle.deploy import prewarm_verdict, serve_targets
from mlplat.lifecycle.policy import RolloutPolicy
from mlplat.records import Event, ModelState
from mlplat.records import deploy as deploy_records
from mlplat.serving import warmup
from mlplat.serving.cache import ModelCache
from mlplat.serving.request import InputSchema
from mlplat.serving.routes import RouteTable
from mlplat.serving.warmup import probe_rows
from tests.unit.test_serving_routes import FakeReader


def test_doctests() -> None:
    for module in (deploy, controller, warmup, deploy_records):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


APPS = {
    "mlplat": {"ingress": 2, "model-pool": 1, "model-hot": 2},
    "mlplat-eu": {"ingress-eu": 1, "model-pool": 3},
    "other-app": {"web": 4},  # not an mlplat app: never a target
    "mlplat-us": {"ingress-us": 1, "model-pool": 0},  # no running replica: nothing to wait for
}


@pytest.mark.parametrize("name,placement,region,expected", [
    ("churn", "pool", None, {"mlplat/model-pool": 1, "mlplat-eu/model-pool": 3}),
    ("churn", "pool", "eu", {"mlplat-eu/model-pool": 3}),
    ("hot", "dedicated", None, {"mlplat/model-hot": 2, "mlplat-eu/model-pool": 3}),  # the eu app has no model-hot
    ("inline", "ingress", None, {"mlplat/ingress": 2, "mlplat-eu/ingress-eu": 1, "mlplat-us/ingress-us": 1}),
    ("inline", "ingress", "us", {"mlplat-us/ingress-us": 1}),
    ("churn", "pool", "asia", {}),
])
def test_serve_targets(name, placement, region, expected):
    assert serve_targets(APPS, name=name, placement=placement, region=region) == expected


def _report(target, replica, ok=True, reason=""):
    return Event(seq=1, ts=0, kind="deployment_replica", subject="deployment:d",
                 payload={"target": target, "replica": replica, "ok": ok, "reason": reason})


def test_prewarm_verdict_counts_distinct_replicas_and_stops_at_the_first_failure():
    targets = {"a/ingress": 2, "a/model-pool": 1}
    assert not prewarm_verdict(targets, []).done
    twice = [_report("a/ingress", "r1"), _report("a/ingress", "r1"), _report("a/model-pool", "p1")]
    assert not prewarm_verdict(targets, twice).done  # the same replica twice is one replica
    verdict = prewarm_verdict(targets, twice + [_report("a/ingress", "r2")])
    assert verdict.done and verdict.ok
    failed = prewarm_verdict(targets, [_report("a/model-pool", "p1", ok=False, reason="outputs are NaN")])
    assert failed.done and not failed.ok and "p1" in failed.reason and "NaN" in failed.reason
    stray = prewarm_verdict({"a/ingress": 1}, [_report("b/ingress", "x", ok=False), _report("a/ingress", "r1")])
    assert stray.ok  # reports from replicas outside the targets are ignored


def _validated(seq, name, version, approval=None):
    payload = {"from": "VALIDATING", "to": "VALIDATED"}
    if approval:
        payload["approval"] = approval
    return Event(seq=seq, ts=0, kind="state_changed", subject=f"model:{name}", version=version, payload=payload)


def test_auto_deploys_only_for_auto_models_without_pending_approval():
    events = [_validated(1, "a", 2), _validated(2, "m", 5), _validated(3, "a", 3, approval="PENDING"),
              Event(seq=4, ts=0, kind="state_changed", subject="model:a", version=4, payload={"to": "TRAINED"}),
              _validated(5, "unknown", 1)]
    policies = {"a": RolloutPolicy(mode="auto", canary_percent=0), "m": RolloutPolicy(mode="manual")}
    steps = auto_deploys(events, policies)
    assert [(s.name, s.version, s.canary_percent, s.seq) for s in steps] == [("a", 2, 0.0, 1)]


def test_probe_rows_walk_reference_stats_and_fall_back_to_the_schema():
    schema = InputSchema(columns={"amount": "number", "age": "number_or_null", "country": "category"}, input_dim=5)
    rows = probe_rows(schema, {"amount": {"histogram": {"edges": [0.0, 1.0, 2.0, 3.0]}}}, n=4)
    assert [r["amount"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert {r["country"] for r in rows} == {"probe", None}
    assert any(r["age"] is None for r in rows) and all(isinstance(r["amount"], float) for r in rows)
    assert len(probe_rows(schema, None)) == 8


class _Model:
    def __init__(self, name, version):
        self.name, self.version, self.closed = name, version, False

    def close(self):
        self.closed = True


def test_model_cache_loads_once_keeps_recent_versions_and_honours_pins():
    loads = []
    now = [1000.0]

    def load(name, version, sha):
        loads.append((name, version))
        time.sleep(0.01)
        return _Model(name, version)

    cache = ModelCache(load, per_name=1, clock=lambda: now[0])

    async def scenario():
        first = await asyncio.gather(*[cache.get("m", 1, None) for _ in range(5)])
        assert loads == [("m", 1)] and all(m is first[0] for m in first)  # one load under concurrency
        assert cache.pin("m", 1, 60)
        await cache.get("m", 2, None)
        await cache.get("m", 3, None)  # v2 is evicted (per_name=1), v1 stays pinned
        assert cache.loaded() == ["m@v1", "m@v3"] and cache.pinned() == ["m@v1"]
        assert not cache.pin("m", 2, 60)  # not loaded: nothing to pin
        now[0] += 61  # the pin expires: the next load evicts v1
        await cache.get("m", 4, None)
        assert cache.loaded() == ["m@v4"] and first[0].closed

    asyncio.run(scenario())


def test_route_table_carries_the_canary_and_drops_it_on_the_next_event():
    reader = FakeReader()
    reader.add("churn", 1, ModelState.PRODUCTION)
    reader.add("churn", 2, ModelState.CANARY)
    reader.promote("churn", 1)
    reader.canary["churn"] = (2, 25.0)
    reader.models["churn"] = reader.models["churn"].model_copy(
        update={"serving_policy": {"placement": "pool", "rollout": {"canary_key": "customer_id"}}})

    async def scenario():
        table = RouteTable(reader, lambda n, v, sha: (InputSchema(columns={}, input_dim=1), "binary"), refresh_s=0.02)
        await table.start()
        try:
            routes = await table.routes("churn")
            assert (routes.production.version, routes.canary.version, routes.canary_percent) == (1, 2, 25.0)
            assert routes.canary_key == "customer_id" and routes.canary_deployment == "d-test"
            reader.canary.pop("churn")
            reader.promote("churn", 1)  # any event on the model drops the cached split
            for _ in range(100):
                await asyncio.sleep(0.02)
                if (await table.routes("churn")).canary is None:
                    break
            assert (await table.routes("churn")).canary is None
        finally:
            await table.stop()

    asyncio.run(scenario())


def test_controller_cursor_retry_and_reconcile_without_ray(tmp_path):
    """The controller over an in-process registry: it starts at the end of the log, retries an
    event while no serving app runs (the cursor stays before it), handles it once one runs, and
    finishes a pre-warm whose deployer died."""
    from mlplat.config import PlatformConfig
    from mlplat.lifecycle.controller import CURSOR, RolloutController
    from mlplat.lifecycle.deploy import NoServingApp
    from mlplat.records import DeploymentState
    from mlplat.registry import RegistryStore

    store = RegistryStore(tmp_path / "r.db")
    store.create_model("m", serving_policy={"placement": "pool", "rollout": {"mode": "auto", "canary_percent": 0,
                                                                              "prewarm_timeout_s": 0.3}})

    def version(validate=True):
        v = store.register_version("m").version
        store.update_version("m", v, artifacts={"bundle": {"path": f"models/m/v{v}/bundle.json", "sha256": "c" * 64}})
        for state in ("TRAINING", "TRAINED", "VALIDATING") + (("VALIDATED",) if validate else ()):
            store.transition("m", v, state)
        return v

    old = version()  # validated before the controller's first start: never replayed
    apps: dict = {}
    ctl = RolloutController(PlatformConfig(root=str(tmp_path)), registry_factory=lambda: store,
                            replica_counts=lambda: apps, background=False)
    assert store.get_cursor(CURSOR) is None
    assert ctl.tick()["deployed"] == [] and store.get_cursor(CURSOR) == store.last_seq()
    new = version()
    with pytest.raises(NoServingApp):
        ctl.tick()
    assert store.get_cursor(CURSOR) < store.last_seq()  # retried next tick
    apps["mlplat"] = {"ingress": 1, "model-pool": 1}
    done = ctl.tick()  # nobody reports a pre-warm here: it times out, the version is not rejected
    assert done["deployed"] == [f"m v{new}: FAILED"]
    assert store.get_version("m", new).state == ModelState.VALIDATED
    assert ctl.tick()["deployed"] == []  # handled once: the cursor moved past it
    assert [d.version for d in store.list_deployments(name="m")] == [new] and old != new
    stale = store.start_deployment("m", new, targets={"mlplat/model-pool": 1}, prewarm_timeout_s=0.01)
    time.sleep(0.05)
    assert ctl.tick()["reconciled"] == [f"{stale.id}: FAILED"]
    assert store.get_deployment(stale.id).state == DeploymentState.FAILED
    store.close()
