"""Every control action records who did it in its registry event: promote, rollback, deploy,
a canary promoted or rolled back, approve/reject, retrain approve/dismiss (SQLite store, no Ray)."""

from __future__ import annotations

import pytest

from mlplat.monitoring.retrain_requests import approve, dismiss, request_retrain
from mlplat.records import ApprovalState, ModelState
from mlplat.registry import RegistryStore

SHA = "c" * 64


@pytest.fixture
def store(tmp_path) -> RegistryStore:
    s = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    yield s
    s.close()


def _validated(store: RegistryStore, name: str = "churn", *, require_approval: bool = False) -> int:
    if name not in {m.name for m in store.list_models()}:
        store.create_model(name, serving_policy={"placement": "pool"})
    v = store.register_version(name).version
    store.update_version(name, v, artifacts={"bundle": {"path": f"models/{name}/v{v}/bundle.json", "sha256": SHA}})
    for state in (ModelState.TRAINING, ModelState.TRAINED, ModelState.VALIDATING):
        store.transition(name, v, state)
    store.transition(name, v, ModelState.VALIDATED, require_approval=require_approval)
    return v


def _last(store: RegistryStore, kind: str) -> dict:
    events = [e for e in store.events_since(0, limit=10_000) if e.kind == kind]
    assert events, f"no {kind} event"
    return events[-1].payload


def test_promote_and_rollback_record_who(store):
    store.promote("churn", _validated(store), by="alice")
    assert _last(store, "promoted")["by"] == "alice"
    store.promote("churn", _validated(store), by="bob")
    store.rollback("churn", by="carol")
    assert _last(store, "rolled_back")["by"] == "carol"


def test_deploy_and_canary_decisions_record_who(store):
    store.promote("churn", _validated(store), by="alice")
    d = store.start_deployment("churn", _validated(store), canary_percent=10, by="dave",
                               targets={"mlplat/model-pool": 1})
    assert _last(store, "deployment_started")["by"] == "dave"
    store.finish_prewarm(d.id, ok=True)
    store.finish_canary(d.id, promote=True, by="erin")
    assert _last(store, "promoted")["by"] == "erin"  # who ended the canary, not who started it
    d2 = store.start_deployment("churn", _validated(store), canary_percent=10, by="dave",
                                targets={"mlplat/model-pool": 1})
    store.finish_prewarm(d2.id, ok=True)
    store.finish_canary(d2.id, promote=False, reason="worse", by="frank")
    assert _last(store, "canary_rolled_back")["by"] == "frank"
    d3 = store.start_deployment("churn", _validated(store), by="gina", targets={"mlplat/model-pool": 1})
    store.finish_prewarm(d3.id, ok=True)  # a full deployment goes live: its author made it so
    assert _last(store, "promoted")["by"] == "gina"


def test_reviews_and_retrain_decisions_record_who(store):
    store.review("churn", _validated(store, require_approval=True), ApprovalState.APPROVED, by="hana", note="ok")
    assert _last(store, "version_reviewed")["by"] == "hana"
    store.review("churn", _validated(store, require_approval=True), ApprovalState.REJECTED, by="ivy", note="no")
    assert _last(store, "version_reviewed")["by"] == "ivy"
    request_retrain(store, "churn", trigger="manual", by="ivan")
    approve(store, "churn", by="judy")
    assert _last(store, "retrain_approved")["by"] == "judy"
    request_retrain(store, "churn", trigger="manual", by="ivan")
    dismiss(store, "churn", by="kim")
    assert _last(store, "retrain_dismissed")["by"] == "kim"
