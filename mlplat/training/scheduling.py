"""The training scheduler's decision, pure: queue state + cluster state -> actions (no Ray, no I/O).

:func:`decide` looks at one snapshot (:class:`SchedulerContext`: the RUNNING and QUEUED runs,
which runner actors are alive, the concurrency limit, the cluster's total and free resources) and
returns what to do, in order:

- a RUNNING run whose cancel was requested: :class:`KillRunner` (if its runner is alive) and
  :class:`FinishLost` ``CANCELLED`` (the run's version is failed too);
- a RUNNING run whose runner is gone: :class:`Requeue` (it resumes from its checkpoint) while it
  has had fewer than ``max_attempts`` attempts, else :class:`FinishLost` ``FAILED``;
- then :class:`StartRunner` for queued runs in queue-position order while the live runners stay
  below the limit and the next run's worker footprint fits the free resources; the first one
  that does not fit stops the starts (strict priority order: a big run is not overtaken).

The executor (:class:`mlplat.training.actors.TrainScheduler`) gathers the context, calls
:func:`decide` and applies the actions; the same split as Ray Train v2's
``FailurePolicy.make_decision`` and :mod:`mlplat.training.policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mlplat.errors import MlplatError
from mlplat.records import Run, RunState
from mlplat.training.config import parse_training_config
from mlplat.training.policy import run_footprint, worker_resources

__all__ = [
    "MAX_ATTEMPTS",
    "SchedulerContext",
    "StartRunner",
    "KillRunner",
    "Requeue",
    "FinishLost",
    "Action",
    "decide",
    "request_footprint",
    "fits",
    "run_version",
]

#: A run whose runner vanished is retried (resumed) this many times in all before it is FAILED.
MAX_ATTEMPTS = 3
#: The error recorded on a run re-queued after its runner was lost.
REQUEUE_REASON = "runner lost; re-queued to resume from its checkpoint"
CANCEL_REASON = "cancelled by request"


@dataclass(frozen=True)
class SchedulerContext:
    """One snapshot of the queue and the cluster.

    ``running`` / ``queued``: the runs in state RUNNING / QUEUED; ``alive``: the run ids whose
    runner actor exists; ``limit``: how many runners may live at once; ``cluster``: the cluster's
    total CPU/GPU (to size a request's workers); ``free``: the resources free right now."""

    running: Sequence[Run] = ()
    queued: Sequence[Run] = ()
    alive: frozenset[str] = frozenset()
    limit: int = 1
    cluster: Mapping[str, float] = field(default_factory=dict)
    free: Mapping[str, float] = field(default_factory=dict)
    max_attempts: int = MAX_ATTEMPTS


@dataclass(frozen=True)
class StartRunner:
    """Claim the queued run and start its runner actor."""

    run_id: str


@dataclass(frozen=True)
class KillRunner:
    """Kill the run's (live) runner actor."""

    run_id: str


@dataclass(frozen=True)
class Requeue:
    """Move the RUNNING run back to QUEUED (its runner was lost; it resumes from its checkpoint)."""

    run_id: str
    reason: str = REQUEUE_REASON


@dataclass(frozen=True)
class FinishLost:
    """End a run the runner will not finish: the run goes to ``state`` (CANCELLED or FAILED) with
    ``reason``, and its model version, if any, ends FAILED with the same reason."""

    run_id: str
    state: RunState
    reason: str
    model: str
    version: int | None = None


Action = StartRunner | KillRunner | Requeue | FinishLost


def run_version(run: Run) -> int | None:
    """The model version a run trains: the one it recorded, else the one its request named."""
    version = run.version or run.request.get("version")
    return int(version) if version else None


def request_footprint(run: Run, cluster: Mapping[str, float]) -> dict[str, float] | None:
    """The resources a queued run's workers hold while training, on a cluster of ``cluster``;
    None when its request cannot be sized (bad config, GPUs that do not exist): the runner fails
    it with the clear error, so it must not wait for resources.

    >>> run = Run(run_id="r", kind="train", model="m", state="QUEUED", created_at=0, updated_at=0,
    ...           request={"config": {"model": "m", "spec": {"task": "binary"}, "feature_set": {"name": "f"},
    ...                               "scaling": {"num_workers": 2}}})
    >>> request_footprint(run, {"CPU": 8})
    {'CPU': 2.0}
    >>> request_footprint(run.model_copy(update={"request": {}}), {"CPU": 8}) is None
    True
    """
    try:
        cfg = parse_training_config(run.request["config"])
        _, res, _ = worker_resources(cfg.scaling.num_workers, cfg.scaling.use_gpu, cfg.scaling.resources_per_worker,
                                     cluster, cfg.scaling.allow_cpu_fallback)
    except (MlplatError, KeyError, TypeError):
        return None
    return run_footprint(cfg.scaling.num_workers, res)


def fits(need: Mapping[str, float] | None, free: Mapping[str, float]) -> bool:
    """Does a footprint fit the free resources (an unknown footprint always does)?

    >>> fits({"CPU": 1.0}, {"CPU": 1.0}), fits({"GPU": 1.0}, {"CPU": 4.0}), fits(None, {})
    (True, False, True)
    """
    if need is None:
        return True
    return all(float(free.get(k, 0)) + 1e-9 >= v for k, v in need.items())


def decide(ctx: SchedulerContext) -> list[Action]:
    """What the scheduler does with this snapshot (see the module doc for the rules).

    >>> def run(run_id, state="QUEUED", **kw):
    ...     return Run(run_id=run_id, kind="train", model="m", state=state, created_at=0, updated_at=0, **kw)
    >>> decide(SchedulerContext(running=[run("a", "RUNNING", attempts=1), run("b", "RUNNING", attempts=3)],
    ...                         queued=[run("c", queue_position=1)], alive=frozenset(), limit=1))
    ... # doctest: +NORMALIZE_WHITESPACE
    [Requeue(run_id='a', reason='runner lost; re-queued to resume from its checkpoint'),
     FinishLost(run_id='b', state=<RunState.FAILED: 'FAILED'>, reason='runner lost 3 times', model='m', version=None),
     StartRunner(run_id='c')]
    """
    actions: list[Action] = []
    alive = 0
    for run in ctx.running:
        if run.state != RunState.RUNNING:
            continue
        if run.cancel_requested:
            if run.run_id in ctx.alive:
                actions.append(KillRunner(run.run_id))
            actions.append(FinishLost(run.run_id, RunState.CANCELLED, CANCEL_REASON, run.model, run_version(run)))
        elif run.run_id in ctx.alive:
            alive += 1
        elif run.attempts < ctx.max_attempts:
            actions.append(Requeue(run.run_id))
        else:
            # The runner is gone without recording an outcome (node lost, killed, scheduler restart race).
            actions.append(FinishLost(run.run_id, RunState.FAILED, f"runner lost {run.attempts} times", run.model,
                                      run_version(run)))
    free = {k: float(v) for k, v in ctx.free.items()}
    queued = sorted((r for r in ctx.queued if r.state == RunState.QUEUED), key=lambda r: r.queue_position or 0)
    for run in queued:
        if alive >= ctx.limit:
            break
        need = request_footprint(run, ctx.cluster)
        if not fits(need, free):
            break  # strict priority: nothing overtakes the next run in the queue
        for key, value in (need or {}).items():
            free[key] = free.get(key, 0.0) - value  # the started run's workers will hold these
        actions.append(StartRunner(run.run_id))
        alive += 1
    return actions
