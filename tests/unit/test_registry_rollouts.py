"""Deployments, canaries, rollback and regional aliases in the registry store, on SQLite and
PostgreSQL: the records and events the rollout layer and the ingress rely on."""

from __future__ import annotations

import pytest

from mlplat.errors import ConflictError, InvalidName, InvalidTransition, NotFound, ValidationError
from mlplat.records import DeploymentState, ModelState
from mlplat.registry import RegistryStore

S = ModelState
D = DeploymentState
SHA = "b" * 64


@pytest.fixture
def store(registry_url) -> RegistryStore:
    s = RegistryStore(registry_url)
    yield s
    s.close()


def validated(store, name="churn") -> int:
    try:
        store.get_model(name)
    except NotFound:
        store.create_model(name, serving_policy={"placement": "pool"})
    v = store.register_version(name).version
    store.update_version(name, v, artifacts={"bundle": {"path": f"models/{name}/v{v}/bundle.json", "sha256": SHA}})
    for state in (S.TRAINING, S.TRAINED, S.VALIDATING, S.VALIDATED):
        store.transition(name, v, state)
    return v


def live(store, name="churn") -> int:
    v = validated(store, name)
    d = store.start_deployment(name, v, targets={"mlplat/model-pool": 1})
    assert store.finish_prewarm(d.id, ok=True).state == D.LIVE
    return v


def kinds_since(store, seq):
    return [e.kind for e in store.events_since(seq)]


def test_blue_green_deploy_goes_live_after_prewarm(store):
    v1 = live(store)
    v2 = validated(store)
    seq = store.last_seq()
    d = store.start_deployment("churn", v2, by="alice", targets={"mlplat/ingress": 2})
    assert d.state == D.PREWARMING and d.previous_version == v1 and d.targets == {"mlplat/ingress": 2}
    assert store.traffic("churn").production == v1  # nothing moves before pre-warm succeeds
    done = store.finish_prewarm(d.id, ok=True)
    assert done.state == D.LIVE
    assert store.traffic("churn").production == v2
    assert store.get_version("churn", v1).state == S.ARCHIVED and store.aliases("churn")["previous"] == v1
    assert kinds_since(store, seq)[:2] == ["deployment_started", "promoted"]


def test_failed_prewarm_moves_nothing_and_rejects_the_version(store):
    v1 = live(store)
    v2 = validated(store)
    d = store.start_deployment("churn", v2)
    failed = store.finish_prewarm(d.id, ok=False, reason="replica mlplat/ingress#a: outputs are NaN")
    assert failed.state == D.FAILED and "NaN" in failed.reason
    assert store.get_version("churn", v2).state == S.REJECTED and "NaN" in store.get_version("churn", v2).error
    assert store.traffic("churn").production == v1 and store.aliases("churn")["production"] == v1
    assert store.events_since(0, kinds="deployment_failed")[-1].payload["reason"] == failed.reason
    with pytest.raises(ConflictError, match="not PREWARMING"):
        store.finish_prewarm(d.id, ok=True)


def test_canary_then_promote_or_rollback(store):
    v1 = live(store)
    v2 = validated(store)
    d = store.start_deployment("churn", v2, canary_percent=10)
    canary = store.finish_prewarm(d.id, ok=True)
    assert canary.state == D.CANARY and store.get_version("churn", v2).state == S.CANARY
    t = store.traffic("churn")
    assert (t.production, t.canary, t.canary_percent, t.canary_deployment) == (v1, v2, 10.0, d.id)
    assert store.finish_canary(d.id, promote=True, reason="policy: promote").state == D.LIVE
    t = store.traffic("churn")
    assert (t.production, t.canary) == (v2, None) and "canary" not in store.aliases("churn")
    v3 = validated(store)
    d3 = store.finish_prewarm(store.start_deployment("churn", v3, canary_percent=25).id, ok=True)
    rolled = store.finish_canary(d3.id, promote=False, reason="error rate 30% > max 1%", by="controller")
    assert rolled.state == D.ROLLED_BACK and store.get_version("churn", v3).state == S.REJECTED
    assert store.traffic("churn").production == v2 and store.traffic("churn").canary is None


def test_rollback_ends_an_active_canary_before_touching_production(store):
    v1 = live(store)
    v2 = live(store)
    v3 = validated(store)
    store.finish_prewarm(store.start_deployment("churn", v3, canary_percent=50).id, ok=True)
    assert store.rollback("churn").version == v2  # the canary ends; production stays
    assert store.get_version("churn", v3).state == S.REJECTED and store.traffic("churn").canary is None
    assert store.rollback("churn").version == v1  # the next rollback swaps production back
    assert store.get_version("churn", v2).state == S.ARCHIVED


def test_deploy_refusals_change_nothing(store):
    live(store)
    v2 = validated(store)
    seq = store.last_seq()
    for bad in (-1, 100.5, "ten"):
        with pytest.raises(ValidationError, match="canary percent"):
            store.start_deployment("churn", v2, canary_percent=bad)
    d = store.start_deployment("churn", v2)
    with pytest.raises(ConflictError, match="in progress"):
        store.start_deployment("churn", v2)
    store.finish_prewarm(d.id, ok=True)
    trained = store.register_version("churn").version
    with pytest.raises(InvalidTransition, match="REGISTERED, not VALIDATED"):
        store.start_deployment("churn", trained)
    with pytest.raises(InvalidName, match="region"):
        store.start_deployment("churn", v2, region="EU West")
    assert kinds_since(store, seq) == ["deployment_started", "promoted", "version_registered"]


def test_forced_redeploy_of_an_archived_version_is_an_event(store):
    v1 = live(store)
    live(store)
    with pytest.raises(InvalidTransition, match="--force"):
        store.start_deployment("churn", v1)
    d = store.start_deployment("churn", v1, force=True, by="oncall")
    assert d.forced and store.events_since(0, kinds="deployment_forced")[-1].payload["by"] == "oncall"
    store.finish_prewarm(d.id, ok=True)
    assert store.traffic("churn").production == v1


def test_expired_prewarm_does_not_block_the_next_deploy(store):
    live(store)
    v2 = validated(store)
    stuck = store.start_deployment("churn", v2, prewarm_timeout_s=0.001)
    import time

    time.sleep(0.01)
    fresh = store.start_deployment("churn", v2)
    assert store.get_deployment(stuck.id).state == D.FAILED and fresh.state == D.PREWARMING
    assert [d.id for d in store.list_deployments(name="churn", active=True)] == [fresh.id]


def test_regional_deploy_rollback_and_the_global_rule(store):
    v1 = live(store)
    v2 = validated(store)
    store.finish_prewarm(store.start_deployment("churn", v2, region="eu").id, ok=True)
    assert store.traffic("churn", region="eu").production == v2
    assert store.traffic("churn", region="us").production == v1 and store.traffic("churn").production == v1
    assert store.get_version("churn", v2).state == S.VALIDATED  # regional moves leave global states alone
    assert store.rollback("churn", region="eu").version == v1
    assert store.traffic("churn", region="eu").production == v1
    with pytest.raises(NotFound, match="follows the global production"):
        store.rollback("churn", region="us")
    # A region pinned to v2, then a global promote of v3: every region serves v3, no pins remain.
    store.promote("churn", v2, region="eu")
    v3 = validated(store)
    store.finish_prewarm(store.start_deployment("churn", v3).id, ok=True)
    assert {store.traffic("churn", region=r).production for r in ("eu", "us", None)} == {v3}
    assert not [a for a in store.aliases("churn") if "." in a]
    # A global rollback also leaves no regional alias behind (none may point at an ARCHIVED version).
    store.promote("churn", v3, region="eu")
    store.promote("churn", v2, region="eu")
    store.rollback("churn")
    assert {store.traffic("churn", region=r).production for r in ("eu", None)} == {v1}
    assert not [a for a in store.aliases("churn") if "." in a]


def test_regional_canary_applies_only_to_its_region(store):
    v1 = live(store)
    v2 = validated(store)
    d = store.finish_prewarm(store.start_deployment("churn", v2, region="eu", canary_percent=20).id, ok=True)
    assert store.traffic("churn", region="eu").canary == v2
    assert store.traffic("churn", region="us").canary is None and store.traffic("churn").canary is None
    store.finish_canary(d.id, promote=True)
    assert store.traffic("churn", region="eu").production == v2 and store.traffic("churn").production == v1


def test_cursors_only_move_forward(store):
    assert store.get_cursor("rollout-controller") is None
    assert store.set_cursor("rollout-controller", 0) == 0 and store.get_cursor("rollout-controller") == 0
    assert store.set_cursor("rollout-controller", 7) == 7
    assert store.set_cursor("rollout-controller", 3) == 7
    with pytest.raises(ValidationError):
        store.set_cursor("rollout-controller", -1)
    with pytest.raises(ValidationError):
        store.get_cursor("Bad Name")


def test_deployments_survive_reopen(registry_url):
    s = RegistryStore(registry_url)
    live(s)
    v2 = validated(s)
    d = s.start_deployment("churn", v2, canary_percent=5)
    s.close()
    again = RegistryStore(registry_url)
    assert again.get_deployment(d.id).state == D.PREWARMING and again.schema_version() == 3
    again.close()


def test_a_first_version_deployed_as_a_canary_goes_live(store):
    v1 = validated(store)
    d = store.finish_prewarm(store.start_deployment("churn", v1, canary_percent=10).id, ok=True)
    assert d.state == D.LIVE and store.traffic("churn").production == v1 and store.traffic("churn").canary is None


def test_a_timed_out_prewarm_fails_the_deployment_but_does_not_reject_the_version(store):
    live(store)
    v2 = validated(store)
    d = store.finish_prewarm(store.start_deployment("churn", v2).id, ok=False, reason="pre-warm timed out", reject=False)
    assert d.state == D.FAILED and store.get_version("churn", v2).state == S.VALIDATED
    assert store.finish_prewarm(store.start_deployment("churn", v2).id, ok=True).state == D.LIVE  # it can try again


def test_a_version_serving_a_region_is_never_rejected_by_a_failed_global_deploy(store):
    live(store)
    v2 = validated(store)
    store.promote("churn", v2, region="eu")
    store.finish_prewarm(store.start_deployment("churn", v2).id, ok=False, reason="replica x: NaN")
    assert store.get_version("churn", v2).state == S.VALIDATED and store.traffic("churn", region="eu").production == v2


def test_approval_withdrawn_during_prewarm_fails_the_deployment_instead_of_raising(store):
    live(store)
    v = store.register_version("churn").version
    store.update_version("churn", v, artifacts={"bundle": {"path": "models/churn/bundle.json", "sha256": SHA}})
    for state in (S.TRAINING, S.TRAINED, S.VALIDATING):
        store.transition("churn", v, state)
    store.transition("churn", v, S.VALIDATED, require_approval=True)
    store.review("churn", v, "APPROVED", by="alice")
    d = store.start_deployment("churn", v)
    store.transition("churn", v, S.REJECTED)  # a reviewer's later "no" (VALIDATED -> REJECTED)
    failed = store.finish_prewarm(d.id, ok=True)
    assert failed.state == D.FAILED and "REJECTED" in failed.reason and store.traffic("churn").production != v


def test_a_forced_redeploy_of_production_clears_regional_pins(store):
    v1 = live(store)
    v2 = validated(store)
    store.promote("churn", v2, region="eu")
    store.finish_prewarm(store.start_deployment("churn", v1, force=True).id, ok=True)
    assert store.traffic("churn", region="eu").production == v1
    assert not [a for a in store.aliases("churn") if "." in a]
