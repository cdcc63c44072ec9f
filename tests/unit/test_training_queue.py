"""The durable run queue in the registry store (no Ray)."""

from __future__ import annotations

import threading

import pytest

from mlplat.errors import AlreadyExists, ConflictError, InvalidTransition, NotFound, ValidationError
from mlplat.registry import RegistryClient, RegistryStore


@pytest.fixture
def store(tmp_path):
    s = RegistryStore(str(tmp_path / "reg.db"))
    yield s
    s.close()


def test_enqueue_claim_finish(store):
    a = store.enqueue_run("run-a", kind="train", model="churn", request={"config": {"x": 1}})
    b = store.enqueue_run("run-b", kind="train", model="churn", request={})
    assert a["state"] == "QUEUED" and a["queue_position"] == 1
    assert store.get_run("run-b")["queue_position"] == 2
    claimed = store.claim_next_run("sched-1")
    assert claimed["run_id"] == "run-a" and claimed["state"] == "RUNNING" and claimed["attempts"] == 1
    assert store.get_run("run-b")["queue_position"] == 1
    store.update_run("run-a", progress={"epoch": 1}, claimed_by="sched-1")
    with pytest.raises(ConflictError):
        store.update_run("run-a", progress={"epoch": 2}, claimed_by="someone-else")
    done = store.update_run("run-a", state="SUCCEEDED", result={"version": 1}, expected_state="RUNNING")
    assert done["state"] == "SUCCEEDED" and done["finished_at"] and done["result"] == {"version": 1}
    with pytest.raises(InvalidTransition):
        store.update_run("run-a", state="RUNNING")
    assert store.claim_next_run("sched-1")["run_id"] == b["run_id"]
    assert store.claim_next_run("sched-1") is None
    kinds = [e.kind for e in store.events_since(0) if e.kind.startswith("run_")]
    assert kinds[:3] == ["run_queued", "run_queued", "run_running"] and "run_succeeded" in kinds


def test_priority_and_errors(store):
    store.enqueue_run("low", kind="train", model="m", request={})
    store.enqueue_run("high", kind="train", model="m", request={}, priority=5)
    assert store.get_run("high")["queue_position"] == 1
    with pytest.raises(AlreadyExists):
        store.enqueue_run("low", kind="train", model="m", request={})
    with pytest.raises(ValidationError):
        store.enqueue_run("../x", kind="train", model="m", request={})
    with pytest.raises(NotFound):
        store.get_run("nope")
    assert store.claim_next_run("s")["run_id"] == "high"


def test_cancel_queued_and_running(store):
    store.enqueue_run("q", kind="train", model="m", request={})
    store.enqueue_run("r", kind="train", model="m", request={})
    store.claim_next_run("s", run_id="r")
    assert store.cancel_run("q")["state"] == "CANCELLED"
    running = store.cancel_run("r")
    assert running["state"] == "RUNNING" and running["cancel_requested"]
    assert store.claim_next_run("s") is None  # the cancelled one is never claimed
    assert store.update_run("r", state="CANCELLED")["state"] == "CANCELLED"
    assert [r["run_id"] for r in store.list_runs(state="CANCELLED")] == ["r", "q"]


def test_requeue_after_lost_runner(store):
    store.enqueue_run("x", kind="train", model="m", request={})
    store.claim_next_run("s1")
    back = store.update_run("x", state="QUEUED", claimed_by="s1", error="runner lost")
    assert back["state"] == "QUEUED" and back["claimed_by"] is None
    again = store.claim_next_run("s2")
    assert again["attempts"] == 2 and again["claimed_by"] == "s2"


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
                claimed.append(run["run_id"])

    threads = [threading.Thread(target=claimer, args=(stores[i % 2], f"w{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"run-{i:02d}" for i in range(40)]
    for s in stores:
        s.close()


def test_client_local_mode_and_batch(tmp_path):
    client = RegistryClient.local(str(tmp_path / "reg.db"))
    client.enqueue_run("c1", kind="train", model="m", request={"a": 1}, idempotency_key="k1")
    again = client.enqueue_run("c1", kind="train", model="m", request={"a": 1}, idempotency_key="k1")  # retried call
    assert again["run_id"] == "c1"
    assert client.claim_next_run("w")["request"] == {"a": 1}
    assert client.list_runs(model="m")[0]["state"] == "RUNNING"
    assert client.batch([("update_run", {"run_id": "c1", "state": "FAILED", "error": "boom"})])[0]["error"] == "boom"
