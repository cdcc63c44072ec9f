"""The durable run queue in the registry store (no Ray)."""

from __future__ import annotations

import threading

import pytest

from mlplat.errors import AlreadyExists, ConfigError, ConflictError, InvalidTransition, NotFound, ValidationError
from mlplat.records import Run, RunState
from mlplat.registry import RegistryStore


@pytest.fixture
def store(tmp_path):
    s = RegistryStore(str(tmp_path / "reg.db"))
    yield s
    s.close()


def test_enqueue_claim_finish(store):
    a = store.enqueue_run("run-a", kind="train", model="churn", request={"config": {"x": 1}})
    b = store.enqueue_run("run-b", kind="train", model="churn", request={})
    assert isinstance(a, Run) and a.state == RunState.QUEUED and a.queue_position == 1
    assert store.get_run("run-b").queue_position == 2
    claimed = store.claim_next_run("sched-1")
    assert claimed is not None
    assert claimed.run_id == "run-a" and claimed.state == RunState.RUNNING and claimed.attempts == 1
    assert store.get_run("run-b").queue_position == 1
    store.update_run("run-a", progress={"epoch": 1}, claimed_by="sched-1")
    with pytest.raises(ConflictError):
        store.update_run("run-a", progress={"epoch": 2}, claimed_by="someone-else")
    done = store.update_run("run-a", state=RunState.SUCCEEDED, result={"version": 1}, metrics={"val_loss": 0.25},
                            expected_state=RunState.RUNNING)
    assert done.state == RunState.SUCCEEDED and done.state.is_terminal and done.finished_at
    assert done.result == {"version": 1} and done.metrics == {"val_loss": 0.25}
    assert store.get_run("run-a").metrics == {"val_loss": 0.25}
    with pytest.raises(InvalidTransition):
        store.update_run("run-a", state="RUNNING")
    assert store.claim_next_run("sched-1").run_id == b.run_id
    assert store.claim_next_run("sched-1") is None
    kinds = [e.kind for e in store.events_since(0) if e.kind.startswith("run_")]
    assert kinds[:3] == ["run_queued", "run_queued", "run_running"] and "run_succeeded" in kinds


def test_priority_and_errors(store):
    store.enqueue_run("low", kind="train", model="m", request={})
    store.enqueue_run("high", kind="train", model="m", request={}, priority=5)
    assert store.get_run("high").queue_position == 1
    with pytest.raises(AlreadyExists):
        store.enqueue_run("low", kind="train", model="m", request={})
    with pytest.raises(ValidationError):
        store.enqueue_run("../x", kind="train", model="m", request={})
    with pytest.raises(NotFound):
        store.get_run("nope")
    assert store.claim_next_run("s").run_id == "high"


def test_cancel_queued_and_running(store):
    store.enqueue_run("q", kind="train", model="m", request={})
    store.enqueue_run("r", kind="train", model="m", request={})
    store.claim_next_run("s", run_id="r")
    assert store.cancel_run("q").state == RunState.CANCELLED
    running = store.cancel_run("r")
    assert running.state == RunState.RUNNING and running.cancel_requested
    assert store.claim_next_run("s") is None  # the cancelled one is never claimed
    assert store.update_run("r", state=RunState.CANCELLED).state == RunState.CANCELLED
    assert [r.run_id for r in store.list_runs(state=RunState.CANCELLED)] == ["r", "q"]


def test_requeue_after_lost_runner(store):
    store.enqueue_run("x", kind="train", model="m", request={})
    store.claim_next_run("s1")
    back = store.update_run("x", state="QUEUED", claimed_by="s1", error="runner lost")
    assert back.state == RunState.QUEUED and back.claimed_by is None
    again = store.claim_next_run("s2")
    assert again is not None and again.attempts == 2 and again.claimed_by == "s2"


def test_claim_is_exclusive_across_threads_and_stores(tmp_path):
    """Many claimers (two store objects on one file, several threads): each run claimed once."""
    path = str(tmp_path / "reg.db")
    stores = [RegistryStore(path), RegistryStore(path)]
    for i in range(40):
        stores[0].enqueue_run(f"run-{i:02d}", kind="train", model="m", request={})
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(store, name):
        while (run := store.claim_next_run(name)) is not None:
            with lock:
                claimed.append(run.run_id)

    threads = [threading.Thread(target=claimer, args=(stores[i % 2], f"w{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"run-{i:02d}" for i in range(40)]
    for s in stores:
        s.close()


def test_retried_enqueue_and_batch(store):
    store.enqueue_run("c1", kind="train", model="m", request={"a": 1}, idempotency_key="k1")
    again = store.enqueue_run("c1", kind="train", model="m", request={"a": 1}, idempotency_key="k1")  # retried call
    assert again.run_id == "c1"
    assert store.claim_next_run("w").request == {"a": 1}
    assert store.list_runs(model="m")[0].state == RunState.RUNNING
    assert store.batch([("update_run", {"run_id": "c1", "state": "FAILED", "error": "boom"})])[0].error == "boom"


CONFIG = {"model": "m", "spec": {"task": "binary"}, "feature_set": {"name": "f"}}


def test_submit_status_and_wait(store, tmp_path):
    from mlplat.storage import open_root
    from mlplat.training.loop import progress_path
    from mlplat.training.queue import run_status, submit, wait_for_run

    storage = open_root(str(tmp_path / "root"))
    run = submit(store, CONFIG, priority=2)
    assert isinstance(run, Run) and run.state == RunState.QUEUED and run.priority == 2
    assert run.request["config"]["model"] == "m" and run.request["version"] is None
    with pytest.raises(ConfigError, match="search.space"):
        submit(store, CONFIG, kind="tune")
    with pytest.raises(TimeoutError, match="still QUEUED"):
        wait_for_run(store, run.run_id, timeout_s=0.0, poll_s=0.01)
    store.claim_next_run("w", run_id=run.run_id)
    storage.write_json({"status": "running", "epoch": 1, "epochs": 3, "history": [{"epoch": 0}, {"epoch": 1}]},
                       *progress_path(run.run_id))
    shown = run_status(store, storage, run.run_id)
    assert shown.progress["epoch"] == 1 and shown.progress["last"] == {"epoch": 1}
    assert store.get_run(run.run_id).progress == {}  # the record is not written by a status read
    store.update_run(run.run_id, state=RunState.SUCCEEDED, metrics={"val_loss": 0.5})
    done = wait_for_run(store, run.run_id, timeout_s=5, poll_s=0.01)
    assert done.state == RunState.SUCCEEDED and done.metrics == {"val_loss": 0.5}


def test_a_diverged_runs_progress_is_stored(store):
    """NaN/inf losses (a diverged run) reach the strict-JSON record as strings, not as an error."""
    from mlplat.training.actors import progress_summary

    store.enqueue_run("nan", kind="train", model="m", request={})
    store.claim_next_run("w")
    summary = progress_summary({"status": "nonfinite", "epoch": 0, "history": [{"epoch": 0, "train_loss": float("nan")}]})
    assert summary["last"] == {"epoch": 0, "train_loss": "nan"}
    run = store.update_run("nan", state=RunState.FAILED, progress=summary, error="non-finite loss at epoch 0")
    assert run.progress["history"] == [{"epoch": 0, "train_loss": "nan"}]
