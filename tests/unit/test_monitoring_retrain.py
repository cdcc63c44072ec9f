"""Retraining (no Ray): the decision table, policy errors, requests and their decisions in an
in-process registry, new-row counting, the executors (start, approve, finish) with the Ray
steps (feature rebuild, validation, scheduler wake-up) replaced by fakes, the event follower,
the CLI and jobs/retrain.py."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mlplat.errors import ConfigError, ConflictError, NotFound
from mlplat.lifecycle import retrain as lr
from mlplat.monitoring import retrain as mr
from mlplat.monitoring.retrain import RetrainPolicy, decide_retrain
from mlplat.records import (
    CATALOG_DATASET,
    CATALOG_FEATURE_SET,
    EVENT_PARTITION_COMPLETED,
    DatasetRef,
    DatasetVersion,
    Event,
    FeatureSetVersion,
    ModelState,
    PartitionInfo,
    RunState,
)
from mlplat.registry import RegistryStore
from mlplat.storage import open_root

H = 3600.0
AUTO = RetrainPolicy(mode="auto", cooldown_s=H, min_new_rows=100, triggers=("drift", "partition_completed"))
MANUAL = AUTO.model_copy(update={"mode": "manual"})
SCHED = RetrainPolicy(mode="auto", cooldown_s=H, min_new_rows=0, triggers=("schedule",), schedule_s=24 * H)
NOW = 1_000_000.0

# (trigger, policy, last_retrain_at (hours ago, None = never), new_rows, pending, in_flight) -> (action, reason part)
DECISIONS = [
    ("drift", AUTO, 2, 500, None, None, "start", "500 new rows >= 100; mode auto"),
    ("drift", MANUAL, 2, 500, None, None, "request", "mode manual"),
    ("partition_completed", AUTO, None, 100, None, None, "start", "100 new rows >= 100"),
    ("drift", AUTO, 0.5, 500, None, None, "skip",
     "cooldown: last training, retrain attempt or dismissal 30 min ago, next allowed in 30 min"),
    ("drift", AUTO, 2, 99, None, None, "skip", "99 new rows < min_new_rows 100"),
    ("partition_completed", AUTO, 2, None, None, None, "skip", "0 new rows (unknown: no data lineage) < min_new_rows 100"),
    ("drift", AUTO, 2, None, None, None, "skip", "0 new rows (unknown: no data lineage): retraining on the data"),
    ("drift", AUTO, 2, 500, None, "run churn-run-1 of this model is already queued or running", "skip",
     "in flight: run churn-run-1 of this model is already queued or running"),
    ("drift", AUTO, 2, 500, None, "deployment d-1 of v3 is CANARY", "skip", "in flight: deployment d-1 of v3 is CANARY"),
    # the drift trigger needs new data whatever min_new_rows says: retraining on the same rows cannot fix drift
    ("drift", AUTO.model_copy(update={"min_new_rows": 0}), 2, 0, None, None, "skip", "cannot fix drift"),
    ("drift", AUTO.model_copy(update={"min_new_rows": 0}), 2, None, None, None, "skip", "cannot fix drift"),
    ("drift", AUTO.model_copy(update={"min_new_rows": 0}), 2, 1, None, None, "start", "1 new rows >= 0"),
    ("partition_completed", AUTO.model_copy(update={"min_new_rows": 0}), 2, 0, None, None, "start", "0 new rows >= 0"),
    ("drift", MANUAL, 2, 500, 42, None, "skip", "retrain request 42 is already pending"),
    ("schedule", AUTO, 2, 500, None, None, "skip", "schedule: not a trigger of this model (triggers: drift, partition_completed)"),
    ("drift", None, 2, 500, None, None, "skip", "the model has no retrain policy"),
    ("sunrise", AUTO, 2, 500, None, None, "skip", "unknown trigger 'sunrise'"),
    ("schedule", SCHED, 25, 0, None, None, "start", "schedule: 0 new rows >= 0; mode auto"),
    ("schedule", SCHED, 23, 0, None, None, "skip", "schedule: not due for 1 h"),
    ("schedule", SCHED, None, 0, None, None, "skip", "never trained"),
    ("schedule", SCHED, 0.5, 0, None, None, "skip", "cooldown"),
    # a person: no cooldown, no row count, no trigger list; still one run / one request at a time
    ("manual", AUTO, 0.01, 0, None, None, "start", "manual: mode auto"),
    ("manual", MANUAL, 0.01, 0, None, None, "request", "manual: mode manual"),
    ("manual", None, None, None, None, None, "request", "manual: mode manual"),
    ("manual", MANUAL, 0.01, 0, 7, None, "skip", "approve or dismiss it with `mlplat retrain approve|dismiss`"),
    ("manual", AUTO, 0.01, 0, None, "run r-9 of this model is already queued or running", "skip",
     "already queued or running"),
    (
        "partition_completed", RetrainPolicy(mode="auto", cooldown_s=0, min_new_rows=0, triggers=()), None, 5, None, None,
        "skip", "not a trigger of this model (triggers: none)",
    ),
]


@pytest.mark.parametrize(("trigger", "policy", "ago_h", "rows", "pending", "in_flight", "action", "reason"), DECISIONS)
def test_decide_retrain_table(trigger, policy, ago_h, rows, pending, in_flight, action, reason):
    last = None if ago_h is None else NOW - ago_h * H
    decision = decide_retrain(trigger, policy, now=NOW, last_retrain_at=last, new_rows=rows, pending_request=pending,
                              in_flight=in_flight)
    assert decision.action == action, decision
    assert reason in decision.reason, decision


def test_policy_parsing_and_errors_name_the_field():
    assert RetrainPolicy.from_serving_policy({}) is None
    assert RetrainPolicy.from_serving_policy({"retrain": "auto"}) == RetrainPolicy(mode="auto")
    p = RetrainPolicy.from_serving_policy({"retrain": {"mode": "auto", "triggers": "schedule", "schedule_s": 60}})
    assert p is not None and p.triggers == ("schedule",) and p.cooldown_s == 6 * H and p.min_new_rows == 1000
    assert RetrainPolicy().mode == "manual"
    cases = {
        "mode": {"mode": "sometimes"},
        "cooldown_s": {"cooldown_s": -5},
        "min_new_rows": {"min_new_rows": "many"},
        "triggers.1": {"triggers": ["drift", "moon"]},
        "schedule_s": {"schedule_s": 0, "triggers": ["schedule"]},
        "typo": {"typo": 1},
    }
    for field, raw in cases.items():
        with pytest.raises(ConfigError) as info:
            RetrainPolicy.from_serving_policy({"retrain": raw})
        assert f"serving_policy.retrain.{field}" in str(info.value), (field, str(info.value))
    with pytest.raises(ConfigError, match="serving_policy.retrain: triggers lists 'schedule' but schedule_s is not set"):
        RetrainPolicy.from_serving_policy({"retrain": {"triggers": ["schedule"]}})
    with pytest.raises(ConfigError, match="schedule_s is set but 'schedule' is not in triggers"):
        RetrainPolicy.from_serving_policy({"retrain": {"schedule_s": 60}})
    with pytest.raises(ConfigError, match="serving_policy.retrain: got 'often'"):
        RetrainPolicy.from_serving_policy({"retrain": "often"})
    with pytest.raises(ConfigError, match="serving_policy.retrain: got int"):
        RetrainPolicy.from_serving_policy({"retrain": 3})


# -- fixtures: a trained model with its data lineage -----------------------------------------

SPEC = {"name": "clicks-features", "source": {"dataset": "clicks"}, "entity_key": "user_id", "labels": ["clicked"],
        "features": [{"column": "age", "encoder": "standardize"}], "partitions": {"key": "date", "start": "2026-11-01"}}
CONFIG = {"model": "churn", "spec": {"task": "binary"}, "feature_set": {"name": "clicks-features", "version": 1},
          "hyperparameters": {"epochs": 2}}


def _partition(day: str, rows: int, complete: bool = True) -> PartitionInfo:
    return PartitionInfo(key=f"date={day}", values={"date": day}, files=(f"date={day}/part-0.parquet",), num_rows=rows,
                         complete=complete)


def _dataset(reg: RegistryStore, *parts: PartitionInfo, version: int = 1) -> DatasetVersion:
    dv = DatasetVersion(name="clicks", version=version, path=f"datasets/clicks/v{version}", partition_keys=("date",),
                        partitions=parts, num_rows=sum(p.num_rows for p in parts))
    try:
        reg.catalog_get(CATALOG_DATASET, "clicks", version)
        reg.catalog_update(CATALOG_DATASET, "clicks", version, dv.payload())
    except NotFound:
        reg.catalog_register(CATALOG_DATASET, "clicks", dv.payload())
    return dv


def _feature_set(reg: RegistryStore, num_rows: int, dataset_version: int = 1, spec: dict | None = None) -> FeatureSetVersion:
    entry = reg.catalog_register(CATALOG_FEATURE_SET, "clicks-features", {"status": "pending", "spec": spec or SPEC,
                                                                          "source": {"name": "clicks", "version": 1}})
    fsv = FeatureSetVersion(name="clicks-features", version=entry.version, spec=spec or SPEC,
                            source=DatasetRef(name="clicks", version=dataset_version), path=f"features/clicks-features/v{entry.version}",
                            data_path=f"features/clicks-features/v{entry.version}/data", num_rows=num_rows,
                            output_columns=("user_id", "clicked", "age", "split"), feature_columns=("age",),
                            label_columns=("clicked",), entity_key="user_id", split={"method": "hash", "column": "split"})
    return FeatureSetVersion.from_catalog(reg.catalog_update(CATALOG_FEATURE_SET, "clicks-features", entry.version, fsv.payload()))


def _train(reg: RegistryStore, run_id: str, fs_version: int = 1, state: str = "SUCCEEDED", request: dict | None = None) -> Any:
    mv = reg.register_version("churn", feature_set={"name": "clicks-features", "version": fs_version},
                              datasets=[{"name": "clicks", "version": 1}], run_id=run_id)
    reg.enqueue_run(run_id, kind="train", model="churn", request=request or {"config": CONFIG, "version": None},
                    version=mv.version)
    reg.claim_next_run("test-worker", run_id=run_id)
    if state == "SUCCEEDED":
        for s in ("TRAINING", "TRAINED"):
            reg.transition("churn", mv.version, s)
    return reg.update_run(run_id, state=state, version=mv.version)


@pytest.fixture
def reg(tmp_path) -> RegistryStore:
    return RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture
def storage(tmp_path):
    return open_root(str(tmp_path / "root"))


@pytest.fixture
def trained(reg) -> RegistryStore:
    """churn v1 TRAINED on clicks-features v1 = clicks v1's 1,000 rows of 2026-11-01 and -02."""
    reg.create_model("churn", serving_policy={"retrain": {"mode": "auto", "cooldown_s": 3600, "min_new_rows": 100}})
    _dataset(reg, _partition("2026-11-01", 400), _partition("2026-11-02", 600))
    _feature_set(reg, num_rows=1000)
    _train(reg, "churn-run-1")
    return reg


class FakeBuild:
    """Stands in for the Ray Data rebuild: registers a ready feature-set version over the
    dataset's eligible rows, as rebuild_features would."""

    def __init__(self) -> None:
        self.calls: list[mr.DataStatus] = []

    def __call__(self, registry, storage, status):
        self.calls.append(status)
        rows = mr.eligible_rows(status.dataset, start="2026-11-01")
        return _feature_set(registry, num_rows=rows, dataset_version=status.dataset.version)


def _serve(reg: RegistryStore, version: int) -> None:
    """Validate a TRAINED version and make it production (what the rollout would do)."""
    for state in ("VALIDATING", "VALIDATED"):
        reg.transition("churn", version, state)
    reg.promote("churn", version)


def _drift_payload(*, ago_s: float = 60.0, window: str = "1h", **extra: Any) -> dict[str, Any]:
    """A drifted ``drift_checked`` payload whose window ended ``ago_s`` before now."""
    end = time.time() - ago_s
    return {"drifted": True, "drifted_features": ["age"], "window": window, "start_s": end - 3600, "end_s": end,
            "status": "drift", **extra}


@pytest.fixture
def registry_clock(monkeypatch):
    """Moves the registry's clock (event ``ts``, ``created_at``, ``updated_at``) by ``shift[0]`` seconds."""
    import types

    import mlplat.registry.tx as tx

    shift = [0.0]
    monkeypatch.setattr(tx, "time", types.SimpleNamespace(time=lambda: time.time() + shift[0]))
    return shift


@pytest.fixture
def fakes():
    woken: list[int] = []
    return FakeBuild(), (lambda: woken.append(1)), woken


# -- new rows ---------------------------------------------------------------------------------


def test_new_rows_count_complete_partitions_the_model_has_not_seen(trained):
    status = mr.data_status(trained, "churn")
    assert status.new_rows == 0 and status.latest_covers and status.seen is not None and status.seen.version == 1
    _dataset(trained, _partition("2026-11-01", 400), _partition("2026-11-02", 600), _partition("2026-11-03", 250),
             _partition("2026-11-04", 999, complete=False))
    status = mr.data_status(trained, "churn")
    assert status.new_rows == 250 and not status.latest_covers  # the incomplete partition never counts
    _dataset(trained, _partition("2026-10-31", 50), _partition("2026-11-05", 70), version=2)  # a new dataset version
    status = mr.data_status(trained, "churn")
    assert status.dataset.version == 2 and status.new_rows == 70  # from partitions.start on
    assert mr.source_datasets(trained, "churn") == {"clicks"}


# -- requests ---------------------------------------------------------------------------------


def test_request_approve_dismiss_and_list(reg):
    reg.create_model("churn", serving_policy={"retrain": "manual"})
    req = mr.request_retrain(reg, "churn", trigger="drift", cause={"trigger": "drift", "seq": 3, "kind": "drift_checked"},
                             by="retrain-controller", reason="drift: 500 new rows")
    assert req.status == "pending" and req.id == reg.last_seq()
    again = mr.request_retrain(reg, "churn", trigger="schedule", by="x")
    assert again.id == req.id  # one pending request at a time
    assert [r.id for r in mr.pending(reg, "churn")] == [req.id]
    done = mr.approve(reg, "churn", by="alice", note="looks right")
    assert done.status == "approved" and done.decided_by == "alice" and done.note == "looks right"
    with pytest.raises(ConflictError, match="already approved by alice"):
        mr.dismiss(reg, "churn", request_id=req.id, by="bob")
    with pytest.raises(NotFound, match="no pending retrain request"):
        mr.approve(reg, "churn", by="alice")
    with pytest.raises(NotFound, match="no retrain request 999"):
        mr.approve(reg, "churn", request_id=999, by="alice")
    second = mr.request_retrain(reg, "churn", trigger="manual", by="carol")
    gone = mr.dismiss(reg, "churn", by="bob", note="not now")
    assert gone.id == second.id and gone.status == "dismissed"
    listed = mr.requests(reg, "churn")
    assert [(r.id, r.status, r.decided_by) for r in listed] == [(req.id, "approved", "alice"), (second.id, "dismissed", "bob")]
    assert listed[0].cause == {"trigger": "drift", "seq": 3, "kind": "drift_checked"}
    kinds = [e.kind for e in reg.events_since(0, subject="model:churn") if e.kind.startswith("retrain_")]
    assert kinds == ["retrain_requested", "retrain_approved", "retrain_requested", "retrain_dismissed"]
    with pytest.raises(NotFound):
        mr.requests(reg, "nobody")


def test_several_pending_need_an_id_and_folding_follows_the_run(reg):
    reg.create_model("churn")
    e1 = reg.append_event(mr.EVENT_REQUESTED, "model:churn", {"trigger": "drift", "by": "x"})
    e2 = reg.append_event(mr.EVENT_REQUESTED, "model:churn", {"trigger": "manual", "by": "y"})
    with pytest.raises(ConfigError, match=f"2 pending retrain requests \\({e1.seq}, {e2.seq}\\); pick one with --request ID"):
        mr.approve(reg, "churn", by="alice")
    mr.approve(reg, "churn", request_id=e1.seq, by="alice")
    reg.append_event(mr.EVENT_STARTED, "model:churn", {"request_id": e1.seq, "run_id": "churn-r", "version": 4})
    reg.append_event(mr.EVENT_FAILED, "model:churn", {"request_id": e1.seq, "run_id": "churn-r", "error": "boom"})
    reqs = {r.id: r for r in mr.requests(reg)}
    assert reqs[e1.seq].status == "failed" and reqs[e1.seq].run_id == "churn-r" and reqs[e1.seq].error == "boom"
    assert reqs[e2.seq].status == "pending"


def test_concurrent_decisions_one_wins(reg):
    reg.create_model("churn")
    req = mr.request_retrain(reg, "churn", trigger="manual", by="x")
    results: list[str] = []
    barrier = threading.Barrier(6)

    def decide(i: int) -> None:
        store = RegistryStore(reg.backend_url())  # each thread its own connection, like separate processes
        barrier.wait()
        try:
            (mr.approve if i % 2 else mr.dismiss)(store, "churn", request_id=req.id, by=f"user{i}")
            results.append("ok")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict"] * 5 + ["ok"]
    decisions = reg.events_since(0, kinds=[mr.EVENT_APPROVED, mr.EVENT_DISMISSED])
    assert len(decisions) == 1


# -- executors --------------------------------------------------------------------------------


def test_start_retrain_rebuilds_features_and_queues_with_lineage(trained, storage, fakes):
    build, wake, woken = fakes
    _dataset(trained, _partition("2026-11-01", 400), _partition("2026-11-02", 600), _partition("2026-11-03", 250))
    cause = {"trigger": "drift", "seq": 77, "kind": "drift_checked", "subject": "model:churn"}
    run = lr.start_retrain(trained, storage, "churn", cause=cause, build_features=build, wake=wake)
    assert run.state == RunState.QUEUED and run.kind == "train" and woken == [1]
    assert len(build.calls) == 1 and build.calls[0].new_rows == 250
    assert run.request["cause"] == cause and run.request["retrain"]["base_run"] == "churn-run-1"
    assert run.request["config"]["feature_set"] == {"name": "clicks-features", "version": 2}  # the rebuilt version
    assert run.request["config"]["hyperparameters"]["epochs"] == 2  # the recipe of the last successful run
    mv = trained.get_version("churn", run.version)
    assert mv.state == ModelState.REGISTERED and mv.run_id == run.run_id
    assert mv.feature_set is not None and mv.feature_set.version == 2
    assert mv.extra["retrain"]["cause"] == cause and mv.extra["retrain"]["rebuilt_features"] is True
    assert mv.extra["retrain"]["new_rows"] == 250 and mv.extra["config"] == run.request["config"]
    (started,) = trained.events_since(0, kinds=[mr.EVENT_STARTED])
    assert started.payload["run_id"] == run.run_id and started.payload["trigger"] == "drift"
    # the same cause again (a replayed event) queues nothing new
    again = lr.start_retrain(trained, storage, "churn", cause=cause, build_features=build, wake=wake)
    assert again.run_id == run.run_id and len(trained.list_runs(model="churn", state="QUEUED")) == 1


def test_start_retrain_without_new_data_reuses_the_feature_set(trained, storage, fakes):
    build, wake, _ = fakes
    run = lr.start_retrain(trained, storage, "churn", cause={"trigger": "manual", "by": "alice"}, build_features=build,
                           wake=wake)
    assert build.calls == [] and run.request["config"]["feature_set"]["version"] == 1


def test_start_retrain_needs_a_successful_run(reg, storage, fakes):
    reg.create_model("churn")
    with pytest.raises(NotFound, match="no successful training run to retrain from"):
        lr.start_retrain(reg, storage, "churn", cause={"trigger": "manual"}, build_features=fakes[0])


def test_handle_trigger_starts_requests_skips_and_records_failures(trained, storage, fakes):
    build, wake, _ = fakes
    now = trained.list_runs(model="churn")[0].created_at + 2 * H
    drift = {"trigger": "drift", "seq": 5, "kind": "drift_checked"}
    out = lr.handle_trigger(trained, storage, "churn", "drift", drift, now=now, build_features=build, wake=wake)
    assert out.decision.action == "skip" and "0 new rows: retraining on the data" in out.decision.reason
    (skipped,) = trained.events_since(0, kinds=[mr.EVENT_SKIPPED])
    assert skipped.payload["cause"] == drift
    _dataset(trained, _partition("2026-11-01", 400), _partition("2026-11-02", 600), _partition("2026-11-03", 250))
    out = lr.handle_trigger(trained, storage, "churn", "drift", {**drift, "seq": 6}, now=now, build_features=build, wake=wake)
    assert out.decision.action == "start" and out.run is not None, out
    out = lr.handle_trigger(trained, storage, "churn", "drift", {**drift, "seq": 7}, now=now, build_features=build, wake=wake)
    assert out.decision.action == "skip" and "already queued or running" in out.decision.reason
    # manual mode: a request, then no second one
    trained.update_model("churn", serving_policy={"retrain": {"mode": "manual", "cooldown_s": 0, "min_new_rows": 0}})
    trained.cancel_run(out.run.run_id if out.run else trained.list_runs(model="churn", state="QUEUED")[0].run_id)
    out = lr.handle_trigger(trained, storage, "churn", "partition_completed", {"trigger": "partition_completed", "seq": 8},
                            now=now, build_features=build, wake=wake)
    assert out.decision.action == "request" and out.request is not None and out.request.trigger == "partition_completed"
    out2 = lr.handle_trigger(trained, storage, "churn", "drift", {**drift, "seq": 9}, now=now, build_features=build)
    assert out2.decision.action == "skip" and f"request {out.request.id} is already pending" in out2.decision.reason
    # a bad policy: a skip that says why
    trained.update_model("churn", serving_policy={"retrain": {"mode": "always"}})
    out = lr.handle_trigger(trained, storage, "churn", "drift", {**drift, "seq": 10}, now=now)
    assert out.decision.action == "skip" and "serving_policy.retrain.mode" in out.decision.reason


def test_a_start_that_cannot_prepare_is_recorded_not_raised(reg, storage):
    reg.create_model("churn", serving_policy={"retrain": {"mode": "auto", "min_new_rows": 0, "cooldown_s": 0}})
    out = lr.handle_trigger(reg, storage, "churn", "manual", {"trigger": "manual", "by": "alice"})
    assert out.decision.action == "start" and "no successful training run" in (out.error or "")
    (failed,) = reg.events_since(0, kinds=[mr.EVENT_FAILED])
    assert failed.payload["stage"] == "prepare" and failed.payload["cause"]["by"] == "alice"


def test_approve_and_start_then_finish_validates(trained, storage, fakes):
    build, wake, _ = fakes
    req = mr.request_retrain(trained, "churn", trigger="drift", cause={"trigger": "drift", "seq": 3, "kind": "drift_checked"},
                             by="retrain-controller")
    done, run = lr.approve_and_start(trained, storage, "churn", by="alice", note="ok", build_features=build, wake=wake)
    assert done.status == "started" and run.request["retrain"]["request_id"] == req.id
    assert run.request["cause"]["approved_by"] == "alice" and run.request["cause"]["seq"] == 3
    assert [r.status for r in mr.requests(trained, "churn")] == ["started"]
    # the runner trains it: REGISTERED -> TRAINING -> TRAINED and the run SUCCEEDED
    trained.claim_next_run("w", run_id=run.run_id)
    for s in ("TRAINING", "TRAINED"):
        trained.transition("churn", run.version, s)
    trained.update_run(run.run_id, state="SUCCEEDED")
    calls: list[tuple[str, int]] = []

    class Outcome:
        state, passed, approval, report_path = ModelState.VALIDATED, True, None, "mem://report"
        decision = type("D", (), {"reasons": ("auc 0.8 >= 0.7",)})()

    def validate(registry, storage_, name, version):
        calls.append((name, version))
        for s in ("VALIDATING", "VALIDATED"):
            registry.transition(name, version, s)
        return Outcome()

    assert lr.finish_retrain(trained, storage, run.run_id, validate_fn=validate) == f"churn v{run.version}: VALIDATED"
    assert lr.finish_retrain(trained, storage, run.run_id, validate_fn=validate) == f"churn v{run.version}: already VALIDATED"
    assert calls == [("churn", run.version)]
    (validated,) = trained.events_since(0, kinds=[mr.EVENT_VALIDATED])
    assert validated.payload["passed"] and validated.payload["request_id"] == req.id
    assert lr.finish_retrain(trained, storage, "churn-run-1") == "run churn-run-1: not a retrain"


def test_finish_records_a_failed_run_and_a_failed_validation(trained, storage, fakes):
    build, wake, _ = fakes
    run = lr.start_retrain(trained, storage, "churn", cause={"trigger": "manual"}, build_features=build, wake=wake)
    trained.claim_next_run("w", run_id=run.run_id)
    trained.update_run(run.run_id, state="FAILED", error="non-finite loss at epoch 1")
    assert lr.finish_retrain(trained, storage, run.run_id) == f"run {run.run_id}: FAILED"
    (failed,) = trained.events_since(0, kinds=[mr.EVENT_FAILED])
    assert failed.payload == {**failed.payload, "stage": "training", "error": "non-finite loss at epoch 1", "run_id": run.run_id}
    trained.update_model("churn", serving_policy={"retrain": {"mode": "auto", "cooldown_s": 0, "min_new_rows": 0}})
    run2 = lr.start_retrain(trained, storage, "churn", cause={"trigger": "manual"}, build_features=build, wake=wake)
    trained.claim_next_run("w", run_id=run2.run_id)
    for s in ("TRAINING", "TRAINED"):
        trained.transition("churn", run2.version, s)
    trained.update_run(run2.run_id, state="SUCCEEDED")

    def broken(*_: Any) -> None:
        raise RuntimeError("inference actor died")

    assert "validation failed: RuntimeError: inference actor died" in lr.finish_retrain(trained, storage, run2.run_id,
                                                                                         validate_fn=broken)
    assert [e.payload["stage"] for e in trained.events_since(0, kinds=[mr.EVENT_FAILED])] == ["training", "validation"]


# -- the follower -----------------------------------------------------------------------------


def test_controller_follows_drift_partitions_and_runs(trained, storage, fakes):
    build, wake, _ = fakes
    validated: list[int] = []

    def validate(registry, storage_, name, version):
        validated.append(version)
        raise RuntimeError("no Ray here")

    clock = [trained.list_runs(model="churn")[0].created_at + 2 * H]
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build, validate_fn=validate,
                               clock=lambda: clock[0])
    trained.append_event("drift_checked", "model:churn", {"drifted": True, "drifted_features": ["age"]})  # before start
    assert ctl.tick() == [] and trained.get_cursor(lr.CURSOR) == trained.last_seq()  # a first start replays nothing
    # a partition completes: churn (auto, listed) retrains on it
    _dataset(trained, _partition("2026-11-01", 400), _partition("2026-11-02", 600), _partition("2026-11-03", 250))
    trained.append_event(EVENT_PARTITION_COMPLETED, "dataset:clicks", {"partition": "date=2026-11-03", "kind": "facts"})
    trained.append_event(EVENT_PARTITION_COMPLETED, "dataset:other", {"partition": "date=2026-11-03", "kind": "facts"})
    done = ctl.tick()
    assert len(done) == 1 and "start run" in done[0], done  # no alarm: retrain_started is not in the default `on`
    assert [e.payload["alarm"] for e in trained.events_since(0, kinds=["alarm_raised"])] == []
    (run,) = trained.list_runs(model="churn", state="QUEUED")
    assert run.request["cause"]["kind"] == EVENT_PARTITION_COMPLETED and run.request["cause"]["dataset"] == "clicks"
    # a drift check of production while it is queued: the drift alarm, and the retrain is skipped (in flight)
    _serve(trained, 1)
    drift = trained.append_event("drift_checked", "model:churn", _drift_payload(rows=900), version=1)
    done = ctl.tick()
    assert "alarm drift" in done[0] and "already queued or running" in done[0]
    alarm = trained.events_since(drift.seq, kinds=["alarm_raised"])[0]
    assert alarm.payload["details"]["drifted_features"] == ["age"] and alarm.payload["details"]["cause"]["seq"] == drift.seq
    assert alarm.version == 1 and alarm.payload["details"]["status"] == "drift"
    # the run succeeds; validation fails -> retrain_failed, then its alarm
    trained.claim_next_run("w", run_id=run.run_id)
    for s in ("TRAINING", "TRAINED"):
        trained.transition("churn", run.version, s)
    trained.update_run(run.run_id, state="SUCCEEDED")
    done = ctl.tick()
    assert validated == [run.version] and any("validation failed" in d for d in done)
    assert any("alarm retrain_failed" in d for d in done), done
    assert ctl.tick() == []  # nothing new, nothing twice


def test_controller_schedule_and_manual_requests_alarm(trained, storage, fakes):
    build, wake, _ = fakes
    trained.update_model("churn", serving_policy={"retrain": {"mode": "manual", "triggers": ["schedule"], "schedule_s": 10 * H,
                                                              "min_new_rows": 0, "cooldown_s": 0}})
    t0 = trained.list_runs(model="churn")[0].created_at
    clock = [t0 + 5 * H]
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build, clock=lambda: clock[0], schedule_every_s=60)
    assert ctl.tick() == []  # not due
    clock[0] = t0 + 11 * H
    (done,) = ctl.tick()
    assert "request request" in done and "schedule" in done
    done = ctl.tick()  # too soon for another schedule check; the request's alarm
    assert len(done) == 1 and "alarm retrain_requested" in done[0]
    alarm = trained.events_since(0, kinds=["alarm_raised"])[-1]
    assert alarm.payload["details"]["approve"].startswith("mlplat retrain approve churn --request ")


def test_idle_wait_runs_until_the_schedule_is_due_and_not_while_an_event_awaits_its_retry(trained, storage, fakes):
    build, wake, _ = fakes
    clock = [1_000.0]
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build, clock=lambda: clock[0], schedule_every_s=60)
    assert ctl.idle_s(10.0) == 0.0  # the first schedule check is due now
    ctl.tick()
    assert ctl.seen_seq == trained.last_seq()  # the log's end as the tick read it
    assert ctl.idle_s(10.0) == 10.0 and ctl.idle_s(100.0) == 60.0
    clock[0] += 55
    assert ctl.idle_s(10.0) == 5.0
    clock[0] += 10
    assert ctl.idle_s(10.0) == 0.0  # overdue
    ctl.tick()
    ctl._attempts[123] = 1  # an event whose handling failed: retried on the next tick
    assert ctl.idle_s(10.0) == 0.0


def test_drift_triggers_only_for_the_serving_version_and_a_recent_window(trained, storage, fakes):
    build, wake, _ = fakes
    trained.update_model("churn", serving_policy={"retrain": {"mode": "auto", "cooldown_s": 0, "min_new_rows": 100}})
    _serve(trained, 1)
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build)
    ctl.tick()
    out_of_scope = [
        (_drift_payload(), 7, "v7 serves no traffic now (production v1)"),  # not production, not canary
        (_drift_payload(), None, "the check names no model version"),
        (_drift_payload(ago_s=3 * H), 1, "stale window: it ended 3 h before the check was recorded (more than 1 h)"),
        ({k: v for k, v in _drift_payload().items() if k != "end_s"}, 1, "the check records no window end"),
    ]
    for payload, version, reason in out_of_scope:
        event = trained.append_event("drift_checked", "model:churn", payload, version=version)
        (done,) = ctl.tick()
        assert "skip" in done and reason in done, done
        (skipped,) = trained.events_since(event.seq, kinds=[mr.EVENT_SKIPPED])
        assert reason in skipped.payload["reason"] and skipped.payload["cause"]["seq"] == event.seq
    assert trained.events_since(0, kinds=["alarm_raised"]) == []  # nothing out of scope raises an alarm
    # a week-long window may end up to a week before the check; production's recent window acts
    trained.append_event("drift_checked", "model:churn", _drift_payload(ago_s=3 * H, window="7d"), version=1)
    (done,) = ctl.tick()
    assert "alarm drift" in done and "cannot fix drift" in done, done  # in scope; no new rows, so no retrain
    assert len(trained.events_since(0, kinds=["alarm_raised"])) == 1
    # without a retrain policy listing drift, an out-of-scope check records nothing at all
    trained.update_model("churn", serving_policy={})
    event = trained.append_event("drift_checked", "model:churn", _drift_payload(), version=9)
    assert "serves no traffic" in ctl.tick()[0]
    assert trained.events_since(event.seq, kinds=[mr.EVENT_SKIPPED, "alarm_raised"]) == []


def test_in_flight_covers_unjudged_retrained_versions_and_active_deployments(trained, storage, fakes):
    build, wake, _ = fakes
    assert mr.retrain_status(trained, "churn").in_flight is None
    _serve(trained, 1)
    run = lr.start_retrain(trained, storage, "churn", cause={"trigger": "manual", "by": "alice"}, build_features=build,
                           wake=wake)
    assert "already queued or running" in (mr.retrain_status(trained, "churn").in_flight or "")
    trained.claim_next_run("w", run_id=run.run_id)
    for state in ("TRAINING", "TRAINED"):
        trained.transition("churn", run.version, state)
    trained.update_run(run.run_id, state="SUCCEEDED")
    # the run is over, but its version is not judged yet: still in flight
    assert mr.retrain_status(trained, "churn").in_flight == f"v{run.version} (a retrain's version) is still TRAINED: " \
                                                            "not validated yet"
    trained.transition("churn", run.version, "VALIDATING")
    assert "is still VALIDATING" in (mr.retrain_status(trained, "churn").in_flight or "")
    # ... unless it has been VALIDATING for too long (its validation died), or its failure is recorded
    later = time.time() + mr.VALIDATING_TIMEOUT_S + 60
    assert mr.retrain_status(trained, "churn", now=later).in_flight is None
    mr.record_failed(trained, "churn", stage="validation", error="inference actor died", run_id=run.run_id,
                     version=run.version)
    assert mr.retrain_status(trained, "churn").in_flight is None
    # a canary (any active deployment) of the model is in flight too
    trained.transition("churn", run.version, "VALIDATED")
    trained.update_version("churn", run.version, artifacts={"bundle": {"path": "models/churn/v2/bundle.json",
                                                                       "sha256": "0" * 64}})
    deployment = trained.start_deployment("churn", run.version, canary_percent=10)
    assert mr.retrain_status(trained, "churn").in_flight == f"deployment {deployment.id} of v{run.version} is PREWARMING " \
                                                            "(a rollout in progress)"
    trained.finish_prewarm(deployment.id, ok=True)
    status = mr.retrain_status(trained, "churn")
    assert status.in_flight is not None and "is CANARY" in status.in_flight
    trained.update_model("churn", serving_policy={"retrain": {"mode": "auto", "cooldown_s": 0, "min_new_rows": 0}})
    out = lr.handle_trigger(trained, storage, "churn", "manual", {"trigger": "manual", "by": "bob"}, build_features=build)
    assert out.decision.action == "skip" and f"in flight: deployment {deployment.id}" in out.decision.reason
    trained.finish_canary(deployment.id, promote=True)
    assert mr.retrain_status(trained, "churn").in_flight is None


def test_a_dismissal_counts_for_the_cooldown(trained, storage, fakes, registry_clock):
    build, wake, _ = fakes
    trained.update_model("churn", serving_policy={"retrain": {"mode": "manual", "cooldown_s": H, "min_new_rows": 100}})
    _dataset(trained, _partition("2026-11-01", 400), _partition("2026-11-02", 600), _partition("2026-11-03", 250))
    registry_clock[0] = 3 * H  # hours after the last training run
    now = time.time() + 3 * H
    first = lr.handle_trigger(trained, storage, "churn", "partition_completed",
                              {"trigger": "partition_completed", "seq": 1}, now=now, build_features=build)
    assert first.decision.action == "request" and first.request is not None
    mr.dismiss(trained, "churn", by="alice", note="holiday traffic")
    # the next trigger (an hourly drift check, say) within the cooldown does not ask again
    again = lr.handle_trigger(trained, storage, "churn", "partition_completed",
                              {"trigger": "partition_completed", "seq": 2}, now=now + 0.5 * H, build_features=build)
    assert again.decision.action == "skip" and "cooldown" in again.decision.reason and "dismissal" in again.decision.reason
    assert [r.status for r in mr.requests(trained, "churn")] == ["dismissed"]
    later = lr.handle_trigger(trained, storage, "churn", "partition_completed",
                              {"trigger": "partition_completed", "seq": 3}, now=now + 1.5 * H, build_features=build)
    assert later.decision.action == "request"


def test_a_validation_that_died_is_given_up_on_replay_and_by_the_sweep(trained, storage, fakes):
    build, wake, _ = fakes
    clock = [time.time()]
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build, clock=lambda: clock[0])
    ctl.tick()
    run = lr.start_retrain(trained, storage, "churn", cause={"trigger": "drift", "seq": 3, "kind": "drift_checked"},
                           build_features=build, wake=wake)
    trained.claim_next_run("w", run_id=run.run_id)
    for state in ("TRAINING", "TRAINED"):
        trained.transition("churn", run.version, state)
    trained.update_run(run.run_id, state="SUCCEEDED")
    trained.transition("churn", run.version, "VALIDATING")  # ... and the controller validating it died here
    # replayed soon after the restart: left alone (it may still be validated)
    assert lr.finish_retrain(trained, storage, run.run_id, now=clock[0] + 60) == f"churn v{run.version}: already VALIDATING"
    assert trained.events_since(0, kinds=[mr.EVENT_FAILED]) == []
    ctl.tick()
    assert trained.get_version("churn", run.version).state == ModelState.VALIDATING
    # replayed after the timeout: given up
    assert "validation given up" in lr.finish_retrain(trained, storage, run.run_id,
                                                      now=clock[0] + mr.VALIDATING_TIMEOUT_S + 60)
    mv = trained.get_version("churn", run.version)
    assert mv.state == ModelState.REJECTED and "did not finish" in (mv.error or "")
    (failed,) = trained.events_since(0, kinds=[mr.EVENT_FAILED])
    assert failed.payload["stage"] == "validation" and failed.payload["run_id"] == run.run_id
    assert "VALIDATING for" in failed.payload["error"] and failed.version == run.version
    # the follower raises the retrain_failed alarm (in the default `on`)
    assert any("alarm retrain_failed" in d for d in ctl.tick())
    assert [r.status for r in mr.requests(trained, "churn")] == []  # no request: a triggered auto retrain
    assert mr.retrain_status(trained, "churn").in_flight is None


def test_the_sweep_finds_a_dead_validation_whose_run_event_was_handled_long_ago(trained, storage, fakes):
    build, wake, _ = fakes
    clock = [time.time()]
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build, clock=lambda: clock[0],
                               schedule_every_s=60)
    run = lr.start_retrain(trained, storage, "churn", cause={"trigger": "manual", "by": "alice"}, build_features=build)
    trained.claim_next_run("w", run_id=run.run_id)
    for state in ("TRAINING", "TRAINED"):
        trained.transition("churn", run.version, state)
    trained.update_run(run.run_id, state="SUCCEEDED")
    trained.transition("churn", run.version, "VALIDATING")
    assert ctl.tick() == []  # not stale yet
    clock[0] += mr.VALIDATING_TIMEOUT_S + 120
    done = ctl.tick()
    assert done == [f"churn v{run.version}: validation given up (VALIDATING for over 1 h)"]
    assert trained.get_version("churn", run.version).state == ModelState.REJECTED
    clock[0] += 120
    done = ctl.tick()
    assert any("alarm retrain_failed" in d for d in done) and not any("given up" in d for d in done)
    assert len(trained.events_since(0, kinds=[mr.EVENT_FAILED])) == 1


def test_a_scheduled_retrain_is_keyed_by_its_due_time(trained, storage, fakes, monkeypatch):
    build, wake, _ = fakes
    trained.update_model("churn", serving_policy={"retrain": {"mode": "auto", "triggers": ["schedule"], "schedule_s": 10 * H,
                                                              "min_new_rows": 0, "cooldown_s": 0}})
    t0 = trained.list_runs(model="churn")[0].created_at
    ctl = lr.RetrainController(trained, storage, wake=wake, build_features=build, clock=lambda: t0 + 11 * H)

    class Crash(BaseException):
        """The process dies between registering the version and queueing its run."""

    def crash(*args: Any, **kwargs: Any) -> None:
        raise Crash()

    monkeypatch.setattr(trained, "enqueue_run", crash)
    with pytest.raises(Crash):
        ctl.on_schedule(t0 + 11 * H)
    monkeypatch.undo()
    assert [v.state for v in trained.list_versions("churn")] == [ModelState.TRAINED, ModelState.REGISTERED]
    (done,) = ctl.on_schedule(t0 + 11 * H + 60)  # the next tick: the same due time, so the same version
    assert "start run" in done
    versions = trained.list_versions("churn")
    assert len(versions) == 2, [(v.version, v.state) for v in versions]
    (run,) = trained.list_runs(model="churn", state="QUEUED")
    assert run.version == versions[-1].version and run.request["cause"]["due"] == round(t0 + 10 * H)


def test_on_event_ignores_what_is_not_its_business(trained, storage):
    ctl = lr.RetrainController(trained, storage)
    ev = Event(seq=1, ts=0.0, kind="drift_checked", subject="model:churn", payload={"drifted": False})
    assert ctl.on_event(ev) is None
    assert ctl.on_event(ev.model_copy(update={"kind": "state_changed"})) is None
    assert ctl.on_event(ev.model_copy(update={"kind": "run_succeeded", "payload": {"run_id": "churn-run-1"}})) is None
    assert ctl.on_event(ev.model_copy(update={"kind": EVENT_PARTITION_COMPLETED, "subject": "dataset:clicks",
                                              "payload": {"kind": "inference"}})) is None


def test_the_cursor_skips_ahead_over_other_events(trained, storage):
    ctl = lr.RetrainController(trained, storage)
    ctl.tick()
    start = trained.get_cursor(lr.CURSOR)
    trained.batch([("append_event", {"kind": "canary_stats", "subject": "deployment:d1", "payload": {"n": i}})
                   for i in range(lr.SKIP_AHEAD - 1)])
    ctl.tick()
    assert trained.get_cursor(lr.CURSOR) == start  # fewer than SKIP_AHEAD: no write
    trained.append_event("canary_stats", "deployment:d1", {})
    ctl.tick()
    assert trained.get_cursor(lr.CURSOR) == trained.last_seq() == start + lr.SKIP_AHEAD


# -- CLI and job ------------------------------------------------------------------------------


@pytest.fixture
def local_env(tmp_path, monkeypatch, reg):
    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")
    monkeypatch.setenv("MLPLAT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLPLAT_REGISTRY_URL", reg.backend_url())
    monkeypatch.setenv("MLPLAT_RAY_ADDRESS", "ray://nowhere:10001")  # never dialed: the hooks below are fakes
    monkeypatch.setenv("MLPLAT_USER", "alice")
    build = FakeBuild()
    monkeypatch.setattr(lr, "driver_hooks", lambda ensure_ray, config: (build, lambda: None))
    return reg


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from mlplat.cli import main

    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list_dismiss_approve(trained, local_env, capsys):
    code, out, _ = _cli(capsys, "retrain", "list")
    assert code == 0 and "no retrain requests" in out
    r1 = mr.request_retrain(trained, "churn", trigger="drift", by="retrain-controller", reason="drift: 500 new rows")
    code, out, _ = _cli(capsys, "retrain", "list", "--pending")
    assert code == 0 and "MODEL" in out and "pending" in out and "drift: 500 new rows" in out
    code, out, _ = _cli(capsys, "retrain", "dismiss", "churn", "--note", "holiday traffic", "--json")
    assert code == 0 and json.loads(out)["status"] == "dismissed" and json.loads(out)["decided_by"] == "alice"
    code, _, err = _cli(capsys, "retrain", "approve", "churn")
    assert code == 2 and "no pending retrain request" in err
    r2 = mr.request_retrain(trained, "churn", trigger="manual", by="bob")
    code, out, err = _cli(capsys, "retrain", "approve", "churn", "--request", str(r2.id), "--no-wait", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["request"]["status"] == "started" and body["run"]["state"] == "QUEUED"
    code, out, _ = _cli(capsys, "retrain", "list", "churn", "--json")
    assert [(r["id"], r["status"]) for r in json.loads(out)] == [(r1.id, "dismissed"), (r2.id, "started")]
    code, _, err = _cli(capsys, "retrain", "dismiss", "churn", "--request", str(r2.id))
    assert code == 2 and "already started" in err


def test_cli_approve_wait_timeout_says_the_run_goes_on(trained, local_env, capsys):
    req = mr.request_retrain(trained, "churn", trigger="manual", by="bob")
    code, out, err = _cli(capsys, "retrain", "approve", "churn", "--request", str(req.id), "--wait", "--timeout", "0")
    assert code == 1, (out, err)
    (run,) = trained.list_runs(model="churn", state="QUEUED")  # nothing picks it up here; nothing cancelled it
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"request {req.id} approved; run {run.run_id} (v{run.version}) is still QUEUED after 0 s" in err
    assert f"mlplat runs wait {run.run_id}" in err
    assert [r.status for r in mr.requests(trained, "churn")] == ["started"]
    req2 = mr.request_retrain(trained, "churn", trigger="manual", by="bob")
    trained.cancel_run(run.run_id)
    code, out, _ = _cli(capsys, "retrain", "approve", "churn", "--request", str(req2.id), "--wait", "--timeout", "0",
                        "--json")
    body = json.loads(out)
    assert code == 1 and body["waited"] == "timed out" and body["state"] == "QUEUED" and "approved" in body["message"]


def _job():
    path = Path(__file__).resolve().parents[2] / "jobs" / "retrain.py"
    spec = importlib.util.spec_from_file_location("jobs_retrain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_requests_for_manual_models_and_starts_with_approve(trained, local_env, capsys):
    job = _job()
    trained.update_model("churn", serving_policy={"retrain": "manual"})
    assert job.main(["--model", "churn", "--no-wait"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "request" and "mlplat retrain approve churn" in out["next"]
    assert job.main(["--model", "churn", "--no-wait"]) == 3  # already pending
    assert "already pending" in json.loads(capsys.readouterr().out)["reason"]
    assert job.main(["--model", "churn", "--approve", "--note", "go", "--no-wait"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "start" and out["run"]["state"] == "QUEUED" and out["request"]["decided_by"] == "alice"
    assert job.main(["--model", "nobody", "--no-wait"]) == 2


def test_doctests():
    import doctest

    for module in (mr, lr):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(mr).attempted >= 6
