"""The training scheduler without Ray: the pure decision (table-driven) and one executor tick with fakes."""

from __future__ import annotations

from typing import Any

import pytest

from mlplat.records import Run, RunState
from mlplat.training.scheduling import (
    CANCEL_REASON,
    MAX_ATTEMPTS,
    REQUEUE_REASON,
    RUNNER_LEASE_S,
    FinishLost,
    KillRunner,
    Requeue,
    SchedulerContext,
    StartRunner,
    claimed_here,
    decide,
    fits,
    request_footprint,
)


def _config(workers: int = 1, **scaling: Any) -> dict[str, Any]:
    return {"model": "m", "spec": {"task": "binary"}, "feature_set": {"name": "f"},
            "scaling": {"num_workers": workers, **scaling}}


def run(run_id: str, state: str = "QUEUED", *, workers: int | None = None, position: int | None = None,
        **fields: Any) -> Run:
    request = fields.pop("request", {"config": _config(workers)} if workers else {})
    if state == "QUEUED" and position is None:
        position = int(run_id.rsplit("-", 1)[-1]) if run_id[-1].isdigit() else 1
    fields.setdefault("created_at", 0.0)
    return Run(run_id=run_id, kind="train", model="m", state=state, request=request, updated_at=0.0,
               queue_position=position if state == "QUEUED" else None, **fields)


#: This cluster's id, another cluster's, and the time the contexts below are judged at.
HERE, THERE, NOW = "10.0.0.1:6379/mlplat", "10.0.0.2:6379/mlplat", 10_000.0
MINE, THEIRS = f"{HERE}/scheduler-1", f"{THERE}/scheduler-9"
FRESH, STALE = NOW - 5.0, NOW - RUNNER_LEASE_S - 1.0


def running(run_id: str, **fields: Any) -> Run:
    """A RUNNING run, claimed by this cluster unless ``claimed_by`` says otherwise."""
    fields.setdefault("claimed_by", MINE)
    fields.setdefault("heartbeat_at", FRESH)
    return run(run_id, "RUNNING", attempts=fields.pop("attempts", 1), **fields)


def foreign(run_id: str, **fields: Any) -> Run:
    """A RUNNING run claimed by another cluster (fresh heartbeat unless told)."""
    return running(run_id, claimed_by=THEIRS, **fields)


def Ctx(**fields: Any) -> SchedulerContext:
    """A context of this cluster at NOW."""
    return SchedulerContext(cluster_id=HERE, now=NOW, **fields)


CLUSTER = {"CPU": 8.0}

# (id, context, expected actions)
CASES = [
    ("nothing queued, nothing running",
     Ctx(limit=2, cluster=CLUSTER, free=CLUSTER), []),
    ("one queued run fits and starts",
     Ctx(queued=[run("q-1", workers=2)], limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1")]),
    ("the limit counts the alive runners: none starts",
     Ctx(running=[running("r-a"), running("r-b")], queued=[run("q-1")], alive=frozenset({"r-a", "r-b"}),
                      limit=2, cluster=CLUSTER, free=CLUSTER), []),
    ("one alive runner leaves one slot of two",
     Ctx(running=[running("r-a")], queued=[run("q-1"), run("q-2")], alive=frozenset({"r-a"}),
                      limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1")]),
    ("starts fill the limit in queue-position order",
     Ctx(queued=[run("q-3"), run("q-1"), run("q-2")], limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1"), StartRunner("q-2")]),
    ("the queue position decides, not the run id nor the list order",
     Ctx(queued=[run("q-a", position=3), run("q-c", position=1), run("q-b", position=2)], limit=2,
                      cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-c"), StartRunner("q-b")]),
    ("the next run does not fit: nothing overtakes it",
     Ctx(queued=[run("q-1", workers=4), run("q-2", workers=1)], limit=4, cluster=CLUSTER,
                      free={"CPU": 2.0}), []),
    ("started runs use up the free resources: the second stops the starts",
     Ctx(queued=[run("q-1", workers=2), run("q-2", workers=2), run("q-3", workers=1)], limit=4,
                      cluster=CLUSTER, free={"CPU": 3.0}),
     [StartRunner("q-1")]),
    ("a GPU run waits for a free GPU",
     Ctx(queued=[run("q-1").model_copy(update={"request": {"config": _config(1, use_gpu=True)}})],
                      limit=2, cluster={"CPU": 8.0, "GPU": 1.0}, free={"CPU": 8.0, "GPU": 0.0}), []),
    ("an unsizable request (no config) is started: the runner fails it with the error",
     Ctx(queued=[run("q-1")], limit=1, cluster=CLUSTER, free={}), [StartRunner("q-1")]),
    ("cancel requested, runner alive: kill, then CANCELLED; the slot is free again",
     Ctx(running=[running("r-a", cancel_requested=True, version=3)], queued=[run("q-1")],
                      alive=frozenset({"r-a"}), limit=1, cluster=CLUSTER, free=CLUSTER),
     [KillRunner("r-a"), FinishLost("r-a", RunState.CANCELLED, CANCEL_REASON, "m", 3, MINE), StartRunner("q-1")]),
    ("cancel requested, runner already gone: CANCELLED, nothing to kill",
     Ctx(running=[running("r-a", cancel_requested=True, attempts=MAX_ATTEMPTS)], limit=1),
     [FinishLost("r-a", RunState.CANCELLED, CANCEL_REASON, "m", None, MINE)]),
    ("lost runner below MAX_ATTEMPTS: re-queued, its slot not counted",
     Ctx(running=[running("r-a", attempts=MAX_ATTEMPTS - 1)], queued=[run("q-1")], limit=1,
                      cluster=CLUSTER, free=CLUSTER),
     [Requeue("r-a", REQUEUE_REASON, MINE), StartRunner("q-1")]),
    ("lost runner at MAX_ATTEMPTS: FAILED with the version from its request",
     Ctx(running=[running("r-a", attempts=MAX_ATTEMPTS, request={"config": {}, "version": 7})], limit=1),
     [FinishLost("r-a", RunState.FAILED, f"runner lost {MAX_ATTEMPTS} times", "m", 7, MINE)]),
    ("max_attempts comes from the context",
     Ctx(running=[running("r-a", attempts=1)], limit=1, max_attempts=1),
     [FinishLost("r-a", RunState.FAILED, "runner lost 1 times", "m", None, MINE)]),
    ("alive, lost and cancelled together, in the order of the running list",
     Ctx(running=[running("r-a"), running("r-b"), running("r-c", cancel_requested=True)],
                      queued=[run("q-1"), run("q-2")], alive=frozenset({"r-a", "r-c"}), limit=2,
                      cluster=CLUSTER, free=CLUSTER),
     [Requeue("r-b", claimed_by=MINE), KillRunner("r-c"),
      FinishLost("r-c", RunState.CANCELLED, CANCEL_REASON, "m", None, MINE),
      StartRunner("q-1")]),
    ("records in another state than their list's are ignored",
     Ctx(running=[run("r-a", "SUCCEEDED")], queued=[run("q-1", "CANCELLED")], limit=1), []),
]


def expired(claimed_by: str, age: float) -> str:
    return f"claim of {claimed_by} expired (no heartbeat for {age:.0f} s); re-queued to resume from its checkpoint"


# Several clusters on one registry: (id, context, expected actions)
CLUSTER_CASES = [
    ("another cluster's run with a fresh heartbeat: no requeue, no kill, not counted against the limit",
     Ctx(running=[foreign("r-f")], queued=[run("q-1")], limit=1, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1")]),
    ("another cluster's run at MAX_ATTEMPTS with a fresh heartbeat: not failed",
     Ctx(running=[foreign("r-f", attempts=MAX_ATTEMPTS)], limit=1), []),
    ("a runner of the same name here does not make another cluster's run ours (not counted)",
     Ctx(running=[foreign("r-f")], queued=[run("q-1")], alive=frozenset({"r-f"}), limit=1, cluster=CLUSTER,
         free=CLUSTER),
     [StartRunner("q-1")]),
    ("another cluster's run with a stale heartbeat: re-queued under the claim it had; the slot is free",
     Ctx(running=[foreign("r-f", heartbeat_at=STALE)], queued=[run("q-1")], limit=1, cluster=CLUSTER, free=CLUSTER),
     [Requeue("r-f", expired(THEIRS, NOW - STALE), THEIRS), StartRunner("q-1")]),
    ("another cluster's run with a stale heartbeat at MAX_ATTEMPTS: FAILED",
     Ctx(running=[foreign("r-f", heartbeat_at=STALE, attempts=MAX_ATTEMPTS, version=4)], limit=1),
     [FinishLost("r-f", RunState.FAILED, f"runner lost {MAX_ATTEMPTS} times", "m", 4, THEIRS)]),
    ("another cluster's cancel with a fresh heartbeat: left to its scheduler (no kill, no finish)",
     Ctx(running=[foreign("r-f", cancel_requested=True)], alive=frozenset({"r-f"}), limit=1), []),
    ("another cluster's cancel with a stale heartbeat: CANCELLED, nothing to kill here",
     Ctx(running=[foreign("r-f", cancel_requested=True, heartbeat_at=STALE)], alive=frozenset({"r-f"}), limit=1),
     [FinishLost("r-f", RunState.CANCELLED, CANCEL_REASON, "m", None, THEIRS)]),
    ("a heartbeat exactly lease_s old is still fresh",
     Ctx(running=[foreign("r-f", heartbeat_at=NOW - RUNNER_LEASE_S)], limit=1), []),
    ("lease_s comes from the context",
     Ctx(running=[foreign("r-f", heartbeat_at=NOW - 11.0)], limit=1, lease_s=10.0),
     [Requeue("r-f", expired(THEIRS, 11.0), THEIRS)]),
    ("no heartbeat: the claim time counts",
     Ctx(running=[foreign("r-f", heartbeat_at=None, claimed_at=FRESH)], limit=1), []),
    ("neither heartbeat nor claim time: stale",
     Ctx(running=[foreign("r-f", heartbeat_at=None)], limit=1),
     [Requeue("r-f", expired(THEIRS, float("inf")), THEIRS)]),
    ("a claim without a cluster part (older scheduler) is foreign: left alone while fresh",
     Ctx(running=[running("r-o", claimed_by="scheduler-1234")], queued=[run("q-1")], limit=1, cluster=CLUSTER,
         free=CLUSTER),
     [StartRunner("q-1")]),
    ("another namespace of the same Ray cluster is another cluster",
     Ctx(running=[running("r-n", claimed_by=f"{HERE}-dev/scheduler-1", heartbeat_at=STALE)], limit=1),
     [Requeue("r-n", expired(f"{HERE}-dev/scheduler-1", NOW - STALE), f"{HERE}-dev/scheduler-1")]),
    ("a restarted scheduler of this cluster adopts the runs of its predecessor by runner liveness",
     Ctx(running=[running("r-a", claimed_by=f"{HERE}/scheduler-old"), running("r-b", claimed_by=f"{HERE}/scheduler-old")],
         queued=[run("q-1")], alive=frozenset({"r-a"}), limit=1, cluster=CLUSTER, free=CLUSTER),
     [Requeue("r-b", REQUEUE_REASON, f"{HERE}/scheduler-old")]),
    ("our own run is judged by its runner even with a fresh heartbeat",
     Ctx(running=[running("r-a", heartbeat_at=NOW)], limit=1), [Requeue("r-a", REQUEUE_REASON, MINE)]),
    ("our own run with a stale heartbeat and a live runner is kept (and counted)",
     Ctx(running=[running("r-a", heartbeat_at=STALE)], queued=[run("q-1")], alive=frozenset({"r-a"}), limit=1,
         cluster=CLUSTER, free=CLUSTER), []),
    ("without a cluster id no run is ours",
     SchedulerContext(running=[running("r-a")], alive=frozenset({"r-a"}), limit=1, now=NOW), []),
]

# The queue: (id, context, expected actions)
QUEUE_CASES = [
    ("a queued run with cancel_requested is never started; the next one is",
     Ctx(queued=[run("q-1", cancel_requested=True), run("q-2")], limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-2")]),
    ("a cancel-requested queued run does not block the queue even when it would not fit",
     Ctx(queued=[run("q-1", workers=8, cancel_requested=True), run("q-2", workers=1)], limit=2, cluster=CLUSTER,
         free={"CPU": 2.0}),
     [StartRunner("q-2")]),
    ("runs without a position keep the registry's order (not created_at), after positioned ones",
     Ctx(queued=[run("q-b", created_at=5.0).model_copy(update={"queue_position": None}),
                 run("q-a", created_at=1.0).model_copy(update={"queue_position": None}),
                 run("q-c", position=7, created_at=9.0)], limit=3, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-c"), StartRunner("q-b"), StartRunner("q-a")]),
]

ALL_CASES = CASES + CLUSTER_CASES + QUEUE_CASES


@pytest.mark.parametrize("ctx, expected", [c[1:] for c in ALL_CASES], ids=[c[0] for c in ALL_CASES])
def test_decide(ctx: SchedulerContext, expected: list[Any]) -> None:
    assert decide(ctx) == expected


def test_claimed_here() -> None:
    assert claimed_here(running("r", claimed_by=MINE), HERE)
    assert not claimed_here(running("r", claimed_by=THEIRS), HERE)
    assert not claimed_here(running("r", claimed_by=None), HERE)
    assert not claimed_here(running("r", claimed_by="scheduler-1"), HERE)
    assert not claimed_here(running("r", claimed_by=f"{HERE}/x/scheduler-1"), HERE)  # namespace "mlplat/x"


def test_decide_is_pure() -> None:
    ctx = SchedulerContext(queued=[run("q-1", workers=2)], limit=1, cluster=CLUSTER, free={"CPU": 2.0})
    assert decide(ctx) == decide(ctx) == [StartRunner("q-1")]
    assert ctx.free == {"CPU": 2.0}


def test_footprint_and_fit() -> None:
    assert request_footprint(run("q-1", workers=2), {"CPU": 8.0}) == {"CPU": 2.0}
    assert request_footprint(run("q-1", workers=2), {"CPU": 2.0}) == {"CPU": 1.0}  # one CPU kept for Ray Data
    assert request_footprint(run("q-1"), CLUSTER) is None
    gpu = run("q-1").model_copy(update={"request": {"config": _config(1, use_gpu=True)}})
    assert request_footprint(gpu, {"CPU": 2.0}) is None  # no GPU at all: the runner fails it
    assert fits({"CPU": 2.0}, {"CPU": 2.0}) and not fits({"CPU": 2.0}, {"CPU": 1.5}) and fits(None, {})


# -- the executor, one tick with fakes ---------------------------------------------------------------


class FakeRunners:
    """Runner actors by run id; records kills and starts."""

    def __init__(self, alive: set[str]):
        self.alive = set(alive)
        self.killed: list[str] = []
        self.started: list[str] = []

    def lookup(self, run_id: str) -> object | None:
        return f"handle:{run_id}" if run_id in self.alive else None

    def kill(self, handle: object) -> None:
        run_id = str(handle).split(":", 1)[1]
        self.killed.append(run_id)
        self.alive.discard(run_id)

    def start(self, run: Run, worker: str) -> bool:
        self.started.append(run.run_id)
        self.alive.add(run.run_id)
        return True


class FakeCluster:
    def __init__(self, total: dict[str, float], free: dict[str, float], cluster_id: str = HERE):
        self._total, self._free, self._id = total, free, cluster_id

    def cluster_id(self) -> str:
        return self._id

    def total(self) -> dict[str, float]:
        return dict(self._total)

    def free(self) -> dict[str, float]:
        return dict(self._free)


def test_executor_tick_with_a_fake_registry(tmp_path) -> None:
    from mlplat.config import PlatformConfig
    from mlplat.records import ModelState
    from mlplat.registry import RegistryStore
    from mlplat.training.actors import TrainScheduler

    registry = RegistryStore(str(tmp_path / "r.db"))
    mv = registry.register_version("m")
    registry.transition("m", mv.version, ModelState.TRAINING)
    req = {"config": _config(1), "version": None}
    for run_id in ("alive", "lost", "dead", "cancel", "q1", "q2", "q3"):
        registry.enqueue_run(run_id, kind="train", model="m", request=req,
                             version=mv.version if run_id == "cancel" else None)
    old = f"{HERE}/scheduler-old"  # this cluster's previous scheduler: its runs are adopted
    for run_id in ("alive", "lost", "dead", "cancel"):
        registry.claim_next_run(old, run_id=run_id)
    for _ in range(MAX_ATTEMPTS - 1):  # "dead" lost its runner on every attempt
        registry.update_run("dead", state="QUEUED", error="lost")
        registry.claim_next_run(old, run_id="dead")
    registry.cancel_run("cancel")
    runners = FakeRunners(alive={"alive", "cancel"})
    scheduler = TrainScheduler(PlatformConfig(root=str(tmp_path)), max_concurrent=3, registry_factory=lambda: registry, runners=runners,
                               cluster=FakeCluster({"CPU": 16.0}, {"CPU": 16.0}), background=False)

    actions = scheduler.tick()

    assert runners.killed == ["cancel"]
    assert runners.started == ["q1", "q2"]  # "alive" + two new runners = the limit of 3
    states = {r.run_id: r.state for r in registry.list_runs(limit=100)}
    assert states == {"alive": RunState.RUNNING, "lost": RunState.QUEUED, "dead": RunState.FAILED,
                      "cancel": RunState.CANCELLED, "q1": RunState.RUNNING, "q2": RunState.RUNNING,
                      "q3": RunState.QUEUED}
    assert registry.get_run("dead").error == f"runner lost {MAX_ATTEMPTS} times"
    assert registry.get_run("q1").claimed_by == scheduler.wake()
    assert scheduler.wake().startswith(f"{HERE}/scheduler-") and scheduler.status()["cluster_id"] == HERE
    assert registry.get_version("m", mv.version).state == ModelState.FAILED  # the cancelled run's version
    assert sum(isinstance(a, StartRunner) for a in actions) == 2
    # Next tick: q2's runner died too (re-queued); the run re-queued last tick restarts before q3
    # (its queue position), filling the one free slot.
    runners.alive.discard("q2")
    scheduler.tick()
    assert registry.get_run("q2").state == RunState.QUEUED
    assert runners.started == ["q1", "q2", "lost"] and registry.get_run("lost").attempts == 2
    assert registry.get_run("q3").state == RunState.QUEUED
    registry.close()


def test_executor_records_a_runner_that_cannot_start(tmp_path) -> None:
    from mlplat.config import PlatformConfig
    from mlplat.registry import RegistryStore
    from mlplat.training.actors import TrainScheduler

    class Broken(FakeRunners):
        def start(self, run: Run, worker: str) -> bool:
            raise RuntimeError("no actor for you")

    registry = RegistryStore(str(tmp_path / "r.db"))
    registry.enqueue_run("q1", kind="train", model="m", request={"config": _config(1)})
    scheduler = TrainScheduler(PlatformConfig(root=str(tmp_path)), registry_factory=lambda: registry, runners=Broken(set()),
                               cluster=FakeCluster({"CPU": 2.0}, {"CPU": 2.0}), background=False)
    scheduler.tick()
    failed = registry.get_run("q1")
    assert failed.state == RunState.FAILED and "could not start runner" in (failed.error or "")
    registry.close()


def test_doctests() -> None:
    import doctest

    from mlplat.training import scheduling

    result = doctest.testmod(scheduling)
    assert result.attempted >= 3 and result.failed == 0


def test_executor_leaves_a_run_that_just_finished(tmp_path) -> None:
    """The runner records its outcome and exits between the tick's list and its actor lookup:
    the run is re-read, found SUCCEEDED, and neither re-queued nor failed."""
    from mlplat.config import PlatformConfig
    from mlplat.registry import RegistryStore
    from mlplat.training.actors import TrainScheduler

    registry = RegistryStore(str(tmp_path / "r.db"))
    registry.enqueue_run("done", kind="train", model="m", request={"config": _config(1)})
    registry.claim_next_run(f"{HERE}/old", run_id="done")

    class FinishingRunners(FakeRunners):
        def lookup(self, run_id: str) -> object | None:
            registry.update_run(run_id, state=RunState.SUCCEEDED, metrics={"val_loss": 0.1})
            return None

    scheduler = TrainScheduler(PlatformConfig(root=str(tmp_path)), registry_factory=lambda: registry,
                               runners=FinishingRunners(set()), cluster=FakeCluster({"CPU": 2.0}, {"CPU": 2.0}),
                               background=False)
    assert scheduler.tick() == []
    done = registry.get_run("done")
    assert done.state == RunState.SUCCEEDED and done.error is None and done.metrics == {"val_loss": 0.1}
    registry.close()


# -- several clusters on one registry ----------------------------------------------------------------


class Racing:
    """The store, with something else happening right after the scheduler re-reads a run."""

    def __init__(self, store: Any, races: dict[str, Any]):
        self._store, self._races = store, dict(races)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_run(self, run_id: str) -> Run:
        seen = self._store.get_run(run_id)
        race = self._races.pop(run_id, None)
        if race is not None:
            race(self._store)
        return seen


def test_executor_requeue_and_finish_are_conditional(tmp_path) -> None:
    """Cluster B, its clock past A's lease, finds A's runs stale. One is plainly lost and is
    re-queued; one is re-claimed by cluster C, one finishes, between B's read and B's write:
    those are left as the others made them (the ConflictError is swallowed)."""
    import time

    from mlplat.config import PlatformConfig
    from mlplat.records import ModelState
    from mlplat.registry import RegistryStore
    from mlplat.training.actors import TrainScheduler

    registry = RegistryStore(str(tmp_path / "r.db"))
    mv = registry.register_version("m")
    registry.transition("m", mv.version, ModelState.TRAINING)
    for run_id in ("lost", "taken", "done"):
        registry.enqueue_run(run_id, kind="train", model="m", request={"config": _config(1)},
                             version=mv.version if run_id == "done" else None)
        registry.claim_next_run("clusterA/s1", run_id=run_id)
    for _ in range(MAX_ATTEMPTS - 1):  # "done" is at its last attempt: B would fail it and its version
        registry.update_run("done", state="QUEUED", error="lost")
        registry.claim_next_run("clusterA/s1", run_id="done")

    def taken(store: Any) -> None:
        store.update_run("taken", state="QUEUED", expected_state="RUNNING", claimed_by="clusterA/s1", error="lost")
        assert store.claim_next_run("clusterC/s7", run_id="taken") is not None

    def done(store: Any) -> None:
        store.update_run("done", state="SUCCEEDED", metrics={"val_loss": 0.1})

    runners = FakeRunners(set())
    scheduler = TrainScheduler(PlatformConfig(root=str(tmp_path)), registry_factory=lambda: Racing(registry, {"taken": taken, "done": done}),
                               runners=runners, cluster=FakeCluster({"CPU": 2.0}, {"CPU": 0.0}, "clusterB"),
                               clock=lambda: time.time() + RUNNER_LEASE_S + 60, background=False)
    actions = scheduler.tick()

    # B decided on what it read: all three lost, under A's claim ...
    assert sorted((type(a).__name__, a.run_id, getattr(a, "claimed_by", None)) for a in actions) == [
        ("FinishLost", "done", "clusterA/s1"), ("Requeue", "lost", "clusterA/s1"), ("Requeue", "taken", "clusterA/s1")]
    # ... but only the run still held by A was moved.
    lost = registry.get_run("lost")
    assert lost.state == RunState.QUEUED and lost.claimed_by is None and "clusterA/s1" in (lost.error or "")
    taken_run = registry.get_run("taken")
    assert taken_run.state == RunState.RUNNING and taken_run.claimed_by == "clusterC/s7" and taken_run.attempts == 2
    done_run = registry.get_run("done")
    assert done_run.state == RunState.SUCCEEDED and done_run.error == "lost"
    assert registry.get_version("m", mv.version).state == ModelState.TRAINING  # not failed by B
    assert runners.killed == [] and runners.started == []
    registry.close()


def test_executor_leaves_another_clusters_live_run_alone(tmp_path) -> None:
    """A run claimed by cluster A, heartbeat fresh: cluster B neither looks up a runner for it nor
    re-queues it, and starts its own queued run even with a limit of 1."""
    from mlplat.config import PlatformConfig
    from mlplat.registry import RegistryStore
    from mlplat.training.actors import TrainScheduler

    registry = RegistryStore(str(tmp_path / "r.db"))
    registry.enqueue_run("theirs", kind="train", model="m", request={"config": _config(1)})
    registry.claim_next_run("clusterA/s1", run_id="theirs")
    registry.cancel_run("theirs")  # A's scheduler handles it, not B's
    registry.enqueue_run("ours", kind="train", model="m", request={"config": _config(1)})

    class NoLookups(FakeRunners):
        def lookup(self, run_id: str) -> object | None:
            raise AssertionError(f"looked up a runner for {run_id}")

    runners = NoLookups(set())
    scheduler = TrainScheduler(PlatformConfig(root=str(tmp_path)), max_concurrent=1, registry_factory=lambda: registry,
                               runners=runners, cluster=FakeCluster({"CPU": 4.0}, {"CPU": 4.0}, "clusterB"),
                               background=False)
    assert scheduler.tick() == [StartRunner("ours")]
    theirs = registry.get_run("theirs")
    assert theirs.state == RunState.RUNNING and theirs.claimed_by == "clusterA/s1" and theirs.cancel_requested
    assert registry.get_run("ours").claimed_by == scheduler.wake() and scheduler.wake().startswith("clusterB/")
    registry.close()


def test_runner_heartbeats_even_without_progress(tmp_path) -> None:
    """No progress.json change for a minute: the runner still writes (refreshing heartbeat_at)
    at least every HEARTBEAT_S, well inside the lease."""
    import threading

    from mlplat.config import PlatformConfig
    from mlplat.storage import open_root
    from mlplat.training.actors import TrainRunner
    from mlplat.training.scheduling import HEARTBEAT_S

    assert RUNNER_LEASE_S >= 6 * HEARTBEAT_S
    clock = [0.0]

    class Ticks(threading.Event):
        """Each wait is one 2 s poll of a fake clock; stops after a minute."""

        def wait(self, timeout: float | None = None) -> bool:
            clock[0] += timeout or 0.0
            return clock[0] > 60.0

    class Registry:
        def __init__(self) -> None:
            self.writes: list[tuple[float, dict[str, Any]]] = []

        def update_run(self, run_id: str, **fields: Any) -> None:
            assert run_id == "r" and set(fields) == {"progress", "claimed_by"} and fields["claimed_by"] == "here/s1"
            self.writes.append((clock[0], fields["progress"]))

    registry = Registry()
    runner = TrainRunner(PlatformConfig(root=str(tmp_path)), "r", "here/s1")
    runner._heartbeat(registry, open_root(str(tmp_path)), Ticks(), poll_s=2.0,  # type: ignore[arg-type]
                      clock=lambda: clock[0])
    times = [t for t, _ in registry.writes]
    assert times[0] == 2.0 and all(p == {} for _, p in registry.writes)  # the first summary, then unchanged
    assert max(b - a for a, b in zip([0.0, *times], [*times, 60.0], strict=True)) <= HEARTBEAT_S


def test_runner_stops_heartbeating_once_its_claim_is_taken_over(tmp_path) -> None:
    """The registry answers ConflictError (the claim is someone else's now): the runner stops
    renewing a lease that is not its own."""
    import threading

    from mlplat.config import PlatformConfig
    from mlplat.errors import ConflictError
    from mlplat.storage import open_root
    from mlplat.training.actors import TrainRunner

    clock = [0.0]

    class Ticks(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            clock[0] += timeout or 0.0
            return clock[0] > 120.0

    class TakenOver:
        def __init__(self) -> None:
            self.calls = 0

        def update_run(self, run_id: str, **fields: Any) -> None:
            self.calls += 1
            if self.calls >= 2:
                raise ConflictError("run r is held by 'there/s9', not 'here/s1'")

    registry = TakenOver()
    TrainRunner(PlatformConfig(root=str(tmp_path)), "r", "here/s1")._heartbeat(
        registry, open_root(str(tmp_path)), Ticks(), poll_s=2.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert registry.calls == 2 and clock[0] < 120.0  # stopped at the conflict, long before the minute ran out
