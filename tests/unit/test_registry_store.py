"""The registry store without Ray, on SQLite and on PostgreSQL (``registry_url`` runs each test
on both): versions, aliases, promote/rollback, approval, idempotency, optimistic concurrency,
search, events, catalog, batching and durability across reopen."""

from __future__ import annotations

import threading

import pytest

from mlplat.errors import AlreadyExists, ConflictError, InvalidName, InvalidTransition, NotFound, ValidationError
from mlplat.records import (
    ApprovalState,
    CatalogEntry,
    DatasetRef,
    Event,
    FeatureSetRef,
    ModelInfo,
    ModelState,
    ModelVersion,
    RunState,
)
from mlplat.registry import REGISTRY_ACTOR_NAME, RegistryStore

S = ModelState
TO_VALIDATED = [S.TRAINING, S.TRAINED, S.VALIDATING, S.VALIDATED]
SHA = "a" * 64


@pytest.fixture
def store(registry_url) -> RegistryStore:
    s = RegistryStore(registry_url)
    yield s
    s.close()


def validated_awaiting_approval(store, name: str) -> int:
    v = store.register_version(name).version
    for state in TO_VALIDATED[:-1]:
        store.transition(name, v, state)
    store.transition(name, v, S.VALIDATED, require_approval=True)
    return v


def validated(store, name="churn", **kwargs) -> int:
    v = store.register_version(name, **kwargs).version
    for state in TO_VALIDATED:
        store.transition(name, v, state)
    return v


def test_actor_name():
    assert REGISTRY_ACTOR_NAME == "mlplat-registry"


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = RegistryStore(tmp_path / "registry.db")
    assert store._backend.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.backend_url() == f"sqlite:///{tmp_path / 'registry.db'}"


def test_models_create_get_list(store):
    info = store.create_model("churn", description="d", owner="ml", tags=["tab", "prod"], task_type="classification",
                              serving_policy={"replicas": 2})
    assert isinstance(info, ModelInfo)
    assert info.tags == ("tab", "prod") and info.serving_policy == {"replicas": 2} and info.latest_version == 0
    with pytest.raises(AlreadyExists):
        store.create_model("churn")
    store.create_model("churn_v2", tags=["tab"])
    store.create_model("fraud")
    assert [m.name for m in store.list_models()] == ["churn", "churn_v2", "fraud"]
    assert [m.name for m in store.list_models(prefix="churn")] == ["churn", "churn_v2"]
    assert [m.name for m in store.list_models(prefix="churn_")] == ["churn_v2"]  # '_' is literal, not a wildcard
    assert [m.name for m in store.list_models(tag="tab")] == ["churn", "churn_v2"]
    assert [m.name for m in store.list_models(tag="prod", prefix="c")] == ["churn"]
    validated(store, "fraud")
    assert [m.name for m in store.list_models(state="VALIDATED")] == ["fraud"]
    assert [m.name for m in store.list_models(state=S.PRODUCTION)] == []
    updated = store.update_model("churn", owner="team-b", serving_policy={"replicas": 3})
    assert updated.owner == "team-b" and updated.serving_policy == {"replicas": 3} and updated.description == "d"
    with pytest.raises(NotFound):
        store.get_model("nope")


@pytest.mark.parametrize("bad", ["Churn", "../x", "", "a" * 64, "x/y", "1abc", None])
def test_names_validated(store, bad):
    with pytest.raises(InvalidName):
        store.register_version(bad)
    with pytest.raises(InvalidName):
        store.catalog_register("dataset", bad, {})


def test_register_version_lineage_and_numbers(store):
    v1 = store.register_version("churn", config_hash="c1", code_version="abc123",
                                datasets=[DatasetRef(name="clicks", version=3), {"name": "users", "version": 1}],
                                feature_set=FeatureSetRef(name="churn-fs", version=2), run_id="run-1",
                                extra={"k": 1}, artifacts={"weights": {"path": "models/churn/v1/model.safetensors",
                                                                       "sha256": SHA, "size_bytes": 10}})
    assert isinstance(v1, ModelVersion)
    assert (v1.version, v1.state, v1.config_hash, v1.code_version, v1.run_id) == (1, S.REGISTERED, "c1", "abc123", "run-1")
    assert v1.datasets == (DatasetRef(name="clicks", version=3), DatasetRef(name="users", version=1))
    assert v1.feature_set == FeatureSetRef(name="churn-fs", version=2)
    assert v1.artifacts["weights"].sha256 == SHA
    assert store.register_version("churn").version == 2
    assert store.register_version("other").version == 1
    assert store.get_version("churn", 1) == v1
    assert store.get_model("churn").latest_version == 2
    assert [v.version for v in store.list_versions("churn")] == [1, 2]
    with pytest.raises(NotFound, match="no version 9"):
        store.get_version("churn", 9)
    with pytest.raises(NotFound, match="not registered"):
        store.get_version("ghost", 1)
    with pytest.raises(ValidationError):
        store.register_version("churn", datasets=[{"name": "clicks"}])  # no version


def test_transition_metrics_error_and_filters(store):
    v = store.register_version("churn").version
    store.transition("churn", v, "training")  # case-insensitive
    failed = store.transition("churn", v, S.FAILED, error="OOM", metrics={"loss": 2.0})
    assert failed.state is S.FAILED and failed.error == "OOM" and failed.metrics == {"loss": 2.0}
    with pytest.raises(InvalidTransition, match="FAILED -> TRAINING.*terminal"):
        store.transition("churn", v, S.TRAINING)
    v2 = validated(store)
    assert [x.version for x in store.list_versions("churn", state="FAILED")] == [v]
    assert [x.version for x in store.find_versions(state="VALIDATED")] == [v2]
    with pytest.raises(ValidationError, match="unknown state"):
        store.list_versions("churn", state="BOGUS")


def test_update_version_merges(store):
    v = store.register_version("churn", metrics={"a": 1}, extra={"x": 1}).version
    out = store.update_version("churn", v, metrics={"b": 2}, extra={"y": 2},
                               artifacts={"weights": {"path": "p", "sha256": SHA}})
    assert out.metrics == {"a": 1, "b": 2} and out.extra == {"x": 1, "y": 2} and "weights" in out.artifacts
    out = store.update_version("churn", v, artifacts={"encoder": {"path": "e", "sha256": SHA}})
    assert set(out.artifacts) == {"weights", "encoder"}
    with pytest.raises(ConflictError, match="not the expected TRAINED"):
        store.update_version("churn", v, metrics={"c": 3}, expected_state="TRAINED")


def test_expected_state_conflict(store):
    v = store.register_version("churn").version
    store.transition("churn", v, S.TRAINING, expected_state=S.REGISTERED)
    seq = store.last_seq()
    with pytest.raises(ConflictError, match="is TRAINING, not the expected REGISTERED"):
        store.transition("churn", v, S.TRAINING, expected_state=S.REGISTERED)
    assert store.last_seq() == seq


def test_aliases_and_expected_version(store):
    v1, v2 = validated(store), validated(store)
    with pytest.raises(ConflictError, match="CANARY or PRODUCTION"):
        store.set_alias("churn", "production", v1)
    store.transition("churn", v1, S.CANARY)
    assert store.set_alias("churn", "canary", v1, expected_version=0) == v1
    with pytest.raises(ConflictError, match="canary is v1, not the expected unset"):
        store.set_alias("churn", "canary", v1, expected_version=0)
    store.set_alias("churn", "staging", v2)
    store.set_alias("churn", "staging", v1, expected_version=v2)
    with pytest.raises(ConflictError):
        store.set_alias("churn", "staging", v2, expected_version=v2)
    assert store.get_alias("churn", "staging") == v1
    assert store.get_alias("churn", "nope") is None
    assert store.aliases("churn") == {"canary": v1, "staging": v1}
    assert store.resolve("churn", "staging").version == v1
    assert store.resolve("churn", "v2").version == v2
    with pytest.raises(InvalidName):
        store.set_alias("churn", "Prod!", v1)
    with pytest.raises(NotFound):
        store.set_alias("churn", "staging", 99)
    assert store.delete_alias("churn", "staging", expected_version=v1) == v1
    assert store.aliases("churn") == {"canary": v1}
    seq = store.last_seq()
    store.set_alias("churn", "canary", v1)  # no move, no event
    assert store.last_seq() == seq


def test_regional_production_alias(store):
    v1 = validated(store)
    store.promote("churn", v1)
    store.set_alias("churn", "production.eu-west", v1)
    assert store.aliases("churn") == {"production": v1, "production.eu-west": v1}


def test_promote_and_rollback(store):
    v1, v2 = validated(store), validated(store)
    p1 = store.promote("churn", v1)
    assert p1.state is S.PRODUCTION and store.aliases("churn") == {"production": v1}
    store.transition("churn", v2, S.CANARY)
    store.set_alias("churn", "canary", v2)
    seq = store.last_seq()
    p2 = store.promote("churn", v2)
    assert p2.state is S.PRODUCTION
    assert store.get_version("churn", v1).state is S.ARCHIVED
    assert store.aliases("churn") == {"production": v2, "previous": v1}  # canary alias cleared
    events = store.events_since(seq)
    assert [e.kind for e in events] == ["promoted"]  # one transaction, one event
    assert events[0].payload["previous"] == v1
    assert {(t["version"], t["to"]) for t in events[0].payload["transitions"]} == {(v1, "ARCHIVED"), (v2, "PRODUCTION")}
    assert [m.name for m in store.list_models(state="PRODUCTION")] == ["churn"]

    seq = store.last_seq()
    back = store.rollback("churn")
    assert back.version == v1 and back.state is S.PRODUCTION
    assert store.get_version("churn", v2).state is S.ARCHIVED
    assert store.aliases("churn") == {"production": v1, "previous": v2}
    assert [e.kind for e in store.events_since(seq)] == ["rolled_back"]
    # rolling back again swaps again
    assert store.rollback("churn").version == v2
    assert len(store.find_versions(state="PRODUCTION")) == 1


def test_promote_rejects_illegal_and_atomic(store):
    v1 = store.register_version("churn").version
    with pytest.raises(InvalidTransition, match="REGISTERED -> PRODUCTION"):
        store.promote("churn", v1)
    v2 = validated(store)
    store.promote("churn", v2)
    with pytest.raises(InvalidTransition, match="PRODUCTION -> PRODUCTION"):
        store.promote("churn", v2)
    v3 = validated(store)
    with pytest.raises(ConflictError):
        store.promote("churn", v3, expected_production=v1)
    assert store.aliases("churn") == {"production": v2}
    assert store.get_version("churn", v3).state is S.VALIDATED
    with pytest.raises(NotFound, match="previous"):
        store.rollback("churn")
    with pytest.raises(NotFound, match="production"):
        store.rollback("fresh") if store.create_model("fresh") else None


def test_idempotency(store):
    first = store.register_version("churn", idempotency_key="k1")
    seq = store.last_seq()
    again = store.register_version("churn", idempotency_key="k1")
    assert again == first and store.last_seq() == seq and len(store.list_versions("churn")) == 1
    t1 = store.transition("churn", 1, S.TRAINING, idempotency_key="t1")
    assert store.transition("churn", 1, S.TRAINING, idempotency_key="t1") == t1  # no InvalidTransition on retry
    with pytest.raises(ConflictError, match="already used for register_version"):
        store.transition("churn", 1, S.TRAINED, idempotency_key="k1")
    e = store.append_event("custom", "model:churn", {"a": 1}, idempotency_key="e1")
    assert store.append_event("custom", "model:churn", {"a": 1}, idempotency_key="e1") == e
    c = store.catalog_register("dataset", "clicks", {"uri": "x"}, idempotency_key="c1")
    assert store.catalog_register("dataset", "clicks", {"uri": "x"}, idempotency_key="c1") == c
    assert store.catalog_get("dataset", "clicks").version == 1
    # a failed call stores no key: the retry runs (and fails) again, and the key stays free
    for _ in range(2):
        with pytest.raises(InvalidTransition):
            store.transition("churn", 1, S.PRODUCTION, idempotency_key="bad")
    assert store.append_event("custom", "model:churn", idempotency_key="bad").kind == "custom"


def test_events_log(store):
    assert store.last_seq() == 0 and store.events_since() == []
    store.register_version("churn")
    store.transition("churn", 1, S.TRAINING)
    store.catalog_register("dataset", "clicks", {})
    events = store.events_since(0)
    assert [e.kind for e in events] == ["model_created", "version_registered", "state_changed", "dataset_registered"]
    assert [e.seq for e in events] == sorted(e.seq for e in events) and events[-1].seq == store.last_seq()
    assert all(isinstance(e, Event) for e in events)
    assert events[2].payload == {"from": "REGISTERED", "to": "TRAINING"} and events[2].version == 1
    assert [e.kind for e in store.events_since(events[1].seq)] == ["state_changed", "dataset_registered"]
    assert [e.kind for e in store.events_since(0, subject="dataset:clicks")] == ["dataset_registered"]
    assert [e.kind for e in store.events_since(0, kinds=["state_changed"])] == ["state_changed"]
    assert len(store.events_since(0, limit=2)) == 2
    e = store.append_event("retrain_requested", "model:churn", {"why": "drift"}, version=1)
    assert e.seq == store.last_seq()
    with pytest.raises(ConflictError, match="expected 1"):
        store.append_event("x", "model:churn", expected_seq=1)
    store.append_event("x", "model:churn", expected_seq=e.seq)
    with pytest.raises(ValidationError):
        store.append_event("Bad Kind", "s")


def test_catalog(store):
    d1 = store.catalog_register("dataset", "clicks", {"uri": "datasets/clicks/v1", "rows": 10}, tags=["raw"])
    assert isinstance(d1, CatalogEntry)
    assert (d1.kind, d1.version, d1.tags) == ("dataset", 1, ("raw",))
    d2 = store.catalog_register("dataset", "clicks", {"uri": "datasets/clicks/v2"})
    assert d2.version == 2
    store.catalog_register("feature_set", "clicks", {"encoder": "e.json"})  # own numbering per kind
    assert store.catalog_get("feature_set", "clicks").version == 1
    store.catalog_register("dataset", "users", {}, tags=["raw"])
    up = store.catalog_update("dataset", "clicks", 1, {"rows": 12, "schema": {"a": "int"}})
    assert up.payload == {"uri": "datasets/clicks/v1", "rows": 12, "schema": {"a": "int"}}
    assert store.catalog_get("dataset", "clicks").version == 2
    assert store.catalog_get("dataset", "clicks", 1).payload["rows"] == 12
    with pytest.raises(NotFound):
        store.catalog_get("dataset", "clicks", 7)
    with pytest.raises(NotFound):
        store.catalog_get("dataset", "nothing")
    with pytest.raises(ValidationError, match="kind"):
        store.catalog_register("model", "x", {})
    assert [(d.name, d.version) for d in store.catalog_list("dataset")] == [("clicks", 2), ("users", 1)]
    assert [(d.name, d.version) for d in store.catalog_list("dataset", latest_only=False)] == [
        ("clicks", 1), ("clicks", 2), ("users", 1)]
    assert [d.name for d in store.catalog_list("dataset", tag="raw")] == ["users"]  # latest clicks has no tag
    assert [d.version for d in store.catalog_list("dataset", tag="raw", latest_only=False, prefix="cl")] == [1]
    kinds = [e.kind for e in store.events_since(0)]
    assert kinds.count("dataset_registered") == 3 and "dataset_updated" in kinds and "feature_set_registered" in kinds
    with pytest.raises(ValidationError, match="JSON"):
        store.catalog_register("dataset", "bad", {"x": object()})


def test_batch_is_one_transaction(store):
    out = store.batch([
        ("register_version", {"name": "churn", "artifacts": {"w": {"path": "p", "sha256": SHA}}}),
        ("append_event", {"kind": "note", "subject": "model:churn"}),
        ("get_version", {"name": "churn", "version": 1}),
    ])
    assert out[0].version == 1 and out[1].kind == "note" and out[2] == out[0]
    seq = store.last_seq()
    with pytest.raises(InvalidTransition):
        store.batch([("register_version", {"name": "churn"}), ("transition", {"name": "churn", "version": 1, "state": "CANARY"})])
    assert store.last_seq() == seq and len(store.list_versions("churn")) == 1  # all or nothing
    with pytest.raises(ValidationError, match="unknown method"):
        store.batch([("drop_table", {})])
    r1 = store.batch([("register_version", {"name": "churn"})], idempotency_key="b1")
    assert store.batch([("register_version", {"name": "churn"})], idempotency_key="b1") == r1
    assert len(store.list_versions("churn")) == 2
    reads = store.read_batch([("get_model", {"name": "churn"}), ("last_seq", {})])
    assert reads[0].name == "churn" and reads[1] == store.last_seq()
    with pytest.raises(ValidationError):
        store.read_batch([("register_version", {"name": "churn"})])


def test_reopen_keeps_everything(registry_url):
    path = registry_url
    a = RegistryStore(path)
    v = validated(a)
    a.promote("churn", v)
    a.register_version("churn", idempotency_key="k")
    a.catalog_register("dataset", "clicks", {"u": 1})
    snapshot = (a.list_versions("churn"), a.aliases("churn"), a.events_since(0), a.catalog_list("dataset"))
    a.close()
    b = RegistryStore(path)
    assert (b.list_versions("churn"), b.aliases("churn"), b.events_since(0), b.catalog_list("dataset")) == snapshot
    assert b.register_version("churn", idempotency_key="k").version == 2  # key survived the reopen
    assert b.register_version("churn").version == 3


def test_threads_share_one_store(store):
    errors = []

    def work(i):
        try:
            for j in range(20):
                store.register_version(f"m{i % 3}", idempotency_key=f"{i}-{j}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(len(store.list_versions(f"m{i}")) for i in range(3)) == 120
    for i in range(3):
        assert [v.version for v in store.list_versions(f"m{i}")] == list(range(1, 41))


def test_approval_gate_review_and_promotion(store):
    approved, rejected = validated_awaiting_approval(store, "gated"), validated_awaiting_approval(store, "gated")
    assert store.get_version("gated", approved).approval.state is ApprovalState.PENDING
    with pytest.raises(InvalidTransition, match="approval is PENDING"):
        store.promote("gated", approved)
    with pytest.raises(ValidationError, match="reviewer"):
        store.review("gated", approved, "APPROVED", by="")
    ok = store.review("gated", approved, ApprovalState.APPROVED, by="alice", note="looks good")
    assert (ok.state, ok.approval.state, ok.approval.by, ok.approval.note) == (S.VALIDATED, ApprovalState.APPROVED, "alice", "looks good")
    assert ok.approval.at is not None
    with pytest.raises(InvalidTransition, match="APPROVED -> REJECTED"):
        store.review("gated", approved, "REJECTED", by="bob")
    no = store.review("gated", rejected, "rejected", by="bob", note="slice eu regressed")
    assert no.state is S.REJECTED and no.approval.state is ApprovalState.REJECTED
    assert no.error == "rejected by bob: slice eu regressed"
    event = store.events_since(0, kinds=["version_reviewed"])[-1]
    assert event.payload == {"approval": "REJECTED", "by": "bob", "note": "slice eu regressed", "from": "VALIDATED", "to": "REJECTED"}
    with pytest.raises(InvalidTransition, match="REJECTED -> PRODUCTION"):
        store.promote("gated", rejected)
    waiting = validated_awaiting_approval(store, "gated")
    for target in (S.CANARY, S.PRODUCTION):  # no way around the reviewer through transition()
        with pytest.raises(InvalidTransition, match="approval is PENDING"):
            store.transition("gated", waiting, target)
    assert store.promote("gated", approved).state is S.PRODUCTION
    plain = validated(store, "plain")  # no approval required: promotable, and review is refused
    with pytest.raises(InvalidTransition, match="NOT_REQUIRED -> APPROVED"):
        store.review("plain", plain, "APPROVED", by="alice")
    with pytest.raises(ValidationError, match="require_approval"):
        store.transition("plain", store.register_version("plain").version, S.TRAINING, require_approval=True)


def test_catalog_get_latest_with_status(store):
    store.catalog_register("dataset", "clicks", {"status": "ready"})
    store.catalog_register("dataset", "clicks", {"status": "ready"})
    store.catalog_register("dataset", "clicks", {"status": "pending"})
    store.catalog_register("dataset", "clicks-extra", {"status": "ready"})
    assert store.catalog_get("dataset", "clicks").version == 3
    assert store.catalog_get("dataset", "clicks", status="ready").version == 2
    with pytest.raises(NotFound, match="'failed' version"):
        store.catalog_get("dataset", "clicks", status="failed")


def test_read_batch_versions_equal_single_reads_and_missing_ones_raise(store):
    for i in range(12):
        store.register_version(f"m{i % 3}", metrics={"i": i})
    calls = [("get_version", {"name": f"m{i % 3}", "version": 1 + i // 3}) for i in range(12)]
    batched = store.read_batch([*calls, ("get_model", {"name": "m1"}), ("get_version", {"name": "m0", "version": "v2"})])
    assert batched[:12] == [store.get_version(**kw) for _, kw in calls]
    assert batched[12].name == "m1" and batched[13] == store.get_version("m0", 2)
    with pytest.raises(NotFound, match="no version 9"):
        store.read_batch([*calls, ("get_version", {"name": "m0", "version": 9})])
    with pytest.raises(InvalidName):
        store.read_batch([*calls, ("get_version", {"name": "../x", "version": 1})])


def test_run_queue_order_cancel_during_retry_and_finished_runs(store):
    for i, priority in enumerate([0, 5, 0, 5, 1]):
        store.enqueue_run(f"r{i}", kind="train", model="a" if i % 2 else "b", request={}, priority=priority)
    head = store.list_runs(state="QUEUED", limit=2)  # the head of the queue, not the newest
    assert [(r.run_id, r.queue_position) for r in head] == [("r1", 1), ("r3", 2)]
    assert [(r.run_id, r.queue_position) for r in store.list_runs(state="QUEUED", model="b")] == [("r4", 3), ("r0", 4), ("r2", 5)]
    assert [r.run_id for r in store.list_runs()] == ["r4", "r3", "r2", "r1", "r0"]  # others: newest first
    run = store.claim_next_run("cluster-a/s1")
    assert run.run_id == "r1" and store.get_run("r3").queue_position == 1
    store.cancel_run("r1")  # RUNNING: cancel requested, the runner is stopped by its scheduler
    retried = store.update_run("r1", state="QUEUED", expected_state="RUNNING")  # a lost-runner retry races it
    assert retried.state is RunState.CANCELLED and retried.error == "cancelled by request"
    assert "r1" not in [r.run_id for r in store.list_runs(state="QUEUED")]
    store.claim_next_run("cluster-a/s1", run_id="r3")
    store.update_run("r3", state="SUCCEEDED", metrics={"auc": 0.9})
    with pytest.raises(InvalidTransition, match="SUCCEEDED -> SUCCEEDED"):  # a finished run never changes
        store.update_run("r3", state="SUCCEEDED", error="late")
    assert store.get_run("r3").error is None


def test_a_call_that_died_half_way_leaves_no_transaction_behind(store):
    store.register_version("churn")
    store._backend.begin_write()  # as if a call died between BEGIN and COMMIT (lock wait cancelled, ...)
    with pytest.raises(Exception):  # noqa: B017  (the backend's own error: sqlite3 or psycopg)
        store._backend.execute("SELECT * FROM no_such_table")
    assert store.register_version("churn").version == 2  # the next call starts clean
    assert [v.version for v in store.list_versions("churn")] == [1, 2]
