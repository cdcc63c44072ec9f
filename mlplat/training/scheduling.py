"""The training scheduler's decision, pure: queue state + cluster state -> actions (no Ray, no I/O).

:func:`decide` looks at one snapshot (:class:`SchedulerContext`: the RUNNING and QUEUED runs,
which runner actors are alive in this cluster, this cluster's id, the time, the concurrency
limit, the cluster's total and free resources) and returns what to do, in order.

Several clusters (each with its own scheduler) may share one registry. A claim names its cluster:
``Run.claimed_by`` is ``"<cluster id>/<scheduler id>"`` (:func:`claimed_here`). Runner actors
are only visible in their own cluster, so:

- a RUNNING run claimed by THIS cluster is judged by its runner: cancel requested ->
  :class:`KillRunner` (if its runner is alive) and :class:`FinishLost` ``CANCELLED`` (the run's
  version is failed too); runner gone -> :class:`Requeue` (it resumes from its checkpoint) while
  it has had fewer than ``max_attempts`` attempts, else :class:`FinishLost` ``FAILED``;
- a RUNNING run claimed ELSEWHERE is left alone (not judged, not counted against the limit, a
  cancel left to its own cluster) while its ``heartbeat_at`` is within ``lease_s`` of ``now``;
  once the heartbeat is older (its cluster died or lost the registry), it is treated as lost the
  same way (a requested cancel -> ``CANCELLED``; there is no runner here to kill);
- then :class:`StartRunner` for queued runs (never one with ``cancel_requested``) in
  queue-position order while this cluster's live runners stay below the limit and the next run's
  worker footprint fits the free resources; the first one that does not fit stops the starts
  (strict priority order: a big run is not overtaken).

:class:`Requeue` and :class:`FinishLost` carry the ``claimed_by`` the decision saw: the executor
applies them only if the run is still RUNNING under that claim.

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
    "RUNNER_LEASE_S",
    "HEARTBEAT_S",
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
    "claimed_here",
    "heartbeat_age",
]

#: A run whose runner vanished is retried (resumed) this many times in all before it is FAILED.
MAX_ATTEMPTS = 3
#: The error recorded on a run re-queued after its runner was lost.
REQUEUE_REASON = "runner lost; re-queued to resume from its checkpoint"
CANCEL_REASON = "cancelled by request"
#: A runner refreshes its run's ``heartbeat_at`` at least this often (seconds).
HEARTBEAT_S = 10.0
#: A run claimed by another cluster whose heartbeat is older than this (seconds) is treated as
#: lost by any cluster's scheduler. Well above :data:`HEARTBEAT_S`, registry latency and clock skew.
RUNNER_LEASE_S = 120.0


@dataclass(frozen=True)
class SchedulerContext:
    """One snapshot of the queue and the cluster.

    ``running`` / ``queued``: the runs in state RUNNING / QUEUED (``queued`` in queue order, as
    the registry lists it); ``alive``: the run ids whose runner actor exists in this cluster;
    ``limit``: how many runners may live at once in this cluster; ``cluster``: the cluster's
    total CPU/GPU (to size a request's workers); ``free``: the resources free right now;
    ``cluster_id``: this cluster's id (the prefix of its claims); ``now``: the time (epoch
    seconds) to judge heartbeats against; ``lease_s``: how old a foreign claim's heartbeat may be."""

    running: Sequence[Run] = ()
    queued: Sequence[Run] = ()
    alive: frozenset[str] = frozenset()
    limit: int = 1
    cluster: Mapping[str, float] = field(default_factory=dict)
    free: Mapping[str, float] = field(default_factory=dict)
    max_attempts: int = MAX_ATTEMPTS
    cluster_id: str = ""
    now: float = 0.0
    lease_s: float = RUNNER_LEASE_S


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
    claimed_by: str | None = None


@dataclass(frozen=True)
class FinishLost:
    """End a run the runner will not finish: the run goes to ``state`` (CANCELLED or FAILED) with
    ``reason``, and its model version, if any, ends FAILED with the same reason."""

    run_id: str
    state: RunState
    reason: str
    model: str
    version: int | None = None
    claimed_by: str | None = None


Action = StartRunner | KillRunner | Requeue | FinishLost


def run_version(run: Run) -> int | None:
    """The model version a run trains: the one it recorded, else the one its request named."""
    version = run.version or run.request.get("version")
    return int(version) if version else None


def claimed_here(run: Run, cluster_id: str) -> bool:
    """Was the run claimed by a scheduler of cluster ``cluster_id``? A claim is
    ``"<cluster id>/<scheduler id>"`` (the scheduler id has no ``/``); the cluster part must match
    exactly. A claim without a cluster part (made before claims carried one) is nobody's here.

    >>> run = Run(run_id="r", kind="train", model="m", state="RUNNING", created_at=0, updated_at=0,
    ...           claimed_by="10.0.0.1:6379/mlplat/scheduler-1")
    >>> [claimed_here(run, c) for c in ("10.0.0.1:6379/mlplat", "10.0.0.1:6379", "10.0.0.1:6379/ml", "")]
    [True, False, False, False]
    """
    return bool(cluster_id) and (run.claimed_by or "").rpartition("/")[0] == cluster_id


def heartbeat_age(run: Run, now: float) -> float:
    """Seconds since the run's last heartbeat (its claim when it has none; infinite when neither)."""
    last = run.heartbeat_at if run.heartbeat_at is not None else run.claimed_at
    return float("inf") if last is None else now - last


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
    >>> decide(SchedulerContext(running=[run("a", "RUNNING", attempts=1, claimed_by="A/s"),
    ...                                  run("b", "RUNNING", attempts=3, claimed_by="A/s"),
    ...                                  run("f", "RUNNING", attempts=1, claimed_by="B/s", heartbeat_at=95.0)],
    ...                         queued=[run("c", queue_position=1)], alive=frozenset(), limit=1,
    ...                         cluster_id="A", now=100.0))
    ... # doctest: +NORMALIZE_WHITESPACE
    [Requeue(run_id='a', reason='runner lost; re-queued to resume from its checkpoint', claimed_by='A/s'),
     FinishLost(run_id='b', state=<RunState.FAILED: 'FAILED'>, reason='runner lost 3 times', model='m', version=None,
                claimed_by='A/s'),
     StartRunner(run_id='c')]
    """
    actions: list[Action] = []
    alive = 0
    for run in ctx.running:
        if run.state != RunState.RUNNING:
            continue
        here = claimed_here(run, ctx.cluster_id)
        if not here:
            age = heartbeat_age(run, ctx.now)
            if age <= ctx.lease_s:
                continue  # another cluster's live claim: its own scheduler judges it
        if run.cancel_requested:
            if here and run.run_id in ctx.alive:
                actions.append(KillRunner(run.run_id))
            actions.append(FinishLost(run.run_id, RunState.CANCELLED, CANCEL_REASON, run.model, run_version(run),
                                      claimed_by=run.claimed_by))
        elif here and run.run_id in ctx.alive:
            alive += 1
        elif run.attempts < ctx.max_attempts:
            reason = REQUEUE_REASON if here else (f"claim of {run.claimed_by} expired (no heartbeat for {age:.0f} s); "
                                                  "re-queued to resume from its checkpoint")
            actions.append(Requeue(run.run_id, reason, claimed_by=run.claimed_by))
        else:
            # The runner is gone without recording an outcome (node lost, killed, scheduler restart
            # race), or its cluster stopped heartbeating.
            actions.append(FinishLost(run.run_id, RunState.FAILED, f"runner lost {run.attempts} times", run.model,
                                      run_version(run), claimed_by=run.claimed_by))
    free = {k: float(v) for k, v in ctx.free.items()}
    # The registry lists the queue in order with positions; a stable sort keeps that order
    # (and puts any run without a position after those with one).
    queued = sorted((r for r in ctx.queued if r.state == RunState.QUEUED and not r.cancel_requested),
                    key=lambda r: (r.queue_position is None, r.queue_position or 0))
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
