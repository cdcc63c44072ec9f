"""The training scheduler without Ray: the pure decision (table-driven) and one executor tick with fakes."""

from __future__ import annotations

from typing import Any

import pytest

from mlplat.records import Run, RunState
from mlplat.training.scheduling import (
    CANCEL_REASON,
    MAX_ATTEMPTS,
    REQUEUE_REASON,
    FinishLost,
    KillRunner,
    Requeue,
    SchedulerContext,
    StartRunner,
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
    return Run(run_id=run_id, kind="train", model="m", state=state, request=request, created_at=0.0, updated_at=0.0,
               queue_position=position if state == "QUEUED" else None, **fields)


def running(run_id: str, **fields: Any) -> Run:
    return run(run_id, "RUNNING", attempts=fields.pop("attempts", 1), **fields)


CLUSTER = {"CPU": 8.0}

# (id, context, expected actions)
CASES = [
    ("nothing queued, nothing running",
     SchedulerContext(limit=2, cluster=CLUSTER, free=CLUSTER), []),
    ("one queued run fits and starts",
     SchedulerContext(queued=[run("q-1", workers=2)], limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1")]),
    ("the limit counts the alive runners: none starts",
     SchedulerContext(running=[running("r-a"), running("r-b")], queued=[run("q-1")], alive=frozenset({"r-a", "r-b"}),
                      limit=2, cluster=CLUSTER, free=CLUSTER), []),
    ("one alive runner leaves one slot of two",
     SchedulerContext(running=[running("r-a")], queued=[run("q-1"), run("q-2")], alive=frozenset({"r-a"}),
                      limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1")]),
    ("starts fill the limit in queue-position order",
     SchedulerContext(queued=[run("q-3"), run("q-1"), run("q-2")], limit=2, cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-1"), StartRunner("q-2")]),
    ("the queue position decides, not the run id nor the list order",
     SchedulerContext(queued=[run("q-a", position=3), run("q-c", position=1), run("q-b", position=2)], limit=2,
                      cluster=CLUSTER, free=CLUSTER),
     [StartRunner("q-c"), StartRunner("q-b")]),
    ("the next run does not fit: nothing overtakes it",
     SchedulerContext(queued=[run("q-1", workers=4), run("q-2", workers=1)], limit=4, cluster=CLUSTER,
                      free={"CPU": 2.0}), []),
    ("started runs use up the free resources: the second stops the starts",
     SchedulerContext(queued=[run("q-1", workers=2), run("q-2", workers=2), run("q-3", workers=1)], limit=4,
                      cluster=CLUSTER, free={"CPU": 3.0}),
     [StartRunner("q-1")]),
    ("a GPU run waits for a free GPU",
     SchedulerContext(queued=[run("q-1").model_copy(update={"request": {"config": _config(1, use_gpu=True)}})],
                      limit=2, cluster={"CPU": 8.0, "GPU": 1.0}, free={"CPU": 8.0, "GPU": 0.0}), []),
    ("an unsizable request (no config) is started: the runner fails it with the error",
     SchedulerContext(queued=[run("q-1")], limit=1, cluster=CLUSTER, free={}), [StartRunner("q-1")]),
    ("cancel requested, runner alive: kill, then CANCELLED; the slot is free again",
     SchedulerContext(running=[running("r-a", cancel_requested=True, version=3)], queued=[run("q-1")],
                      alive=frozenset({"r-a"}), limit=1, cluster=CLUSTER, free=CLUSTER),
     [KillRunner("r-a"), FinishLost("r-a", RunState.CANCELLED, CANCEL_REASON, "m", 3), StartRunner("q-1")]),
    ("cancel requested, runner already gone: CANCELLED, nothing to kill",
     SchedulerContext(running=[running("r-a", cancel_requested=True, attempts=MAX_ATTEMPTS)], limit=1),
     [FinishLost("r-a", RunState.CANCELLED, CANCEL_REASON, "m", None)]),
    ("lost runner below MAX_ATTEMPTS: re-queued, its slot not counted",
     SchedulerContext(running=[running("r-a", attempts=MAX_ATTEMPTS - 1)], queued=[run("q-1")], limit=1,
                      cluster=CLUSTER, free=CLUSTER),
     [Requeue("r-a", REQUEUE_REASON), StartRunner("q-1")]),
    ("lost runner at MAX_ATTEMPTS: FAILED with the version from its request",
     SchedulerContext(running=[running("r-a", attempts=MAX_ATTEMPTS, request={"config": {}, "version": 7})], limit=1),
     [FinishLost("r-a", RunState.FAILED, f"runner lost {MAX_ATTEMPTS} times", "m", 7)]),
    ("max_attempts comes from the context",
     SchedulerContext(running=[running("r-a", attempts=1)], limit=1, max_attempts=1),
     [FinishLost("r-a", RunState.FAILED, "runner lost 1 times", "m", None)]),
    ("alive, lost and cancelled together, in the order of the running list",
     SchedulerContext(running=[running("r-a"), running("r-b"), running("r-c", cancel_requested=True)],
                      queued=[run("q-1"), run("q-2")], alive=frozenset({"r-a", "r-c"}), limit=2,
                      cluster=CLUSTER, free=CLUSTER),
     [Requeue("r-b"), KillRunner("r-c"), FinishLost("r-c", RunState.CANCELLED, CANCEL_REASON, "m", None),
      StartRunner("q-1")]),
    ("records in another state than their list's are ignored",
     SchedulerContext(running=[run("r-a", "SUCCEEDED")], queued=[run("q-1", "CANCELLED")], limit=1), []),
]


@pytest.mark.parametrize("ctx, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(ctx: SchedulerContext, expected: list[Any]) -> None:
    assert decide(ctx) == expected


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
    def __init__(self, total: dict[str, float], free: dict[str, float]):
        self._total, self._free = total, free

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
    for run_id in ("alive", "lost", "dead", "cancel"):
        registry.claim_next_run("old-scheduler", run_id=run_id)
    for _ in range(MAX_ATTEMPTS - 1):  # "dead" lost its runner on every attempt
        registry.update_run("dead", state="QUEUED", error="lost")
        registry.claim_next_run("old-scheduler", run_id="dead")
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
    registry.claim_next_run("old", run_id="done")

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
