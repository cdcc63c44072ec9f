"""The actors of the run queue: the scheduler (a thin executor of :func:`~mlplat.training.scheduling.decide`)
and one runner per run.

- :class:`TrainScheduler`: one named detached actor per namespace. Each tick it gathers a
  :class:`~mlplat.training.scheduling.SchedulerContext` (registry reads, a runner lookup per
  RUNNING run claimed by this cluster, the cluster's resources and id, the time), calls
  ``decide`` and applies the actions. Its claims are ``"<cluster id>/<scheduler id>"``, so
  several clusters can share one registry. Its collaborators (registry factory, runner
  control, cluster view, clock) come through the constructor: the Ray ones by default, fakes in
  unit tests.
- :class:`TrainRunner`: runs one claimed request to the end, mirrors ``progress.json`` into the
  run record (a heartbeat at least every :data:`~mlplat.training.scheduling.HEARTBEAT_S`),
  records the outcome and the trained version's metrics, then exits.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from mlplat.config import PlatformConfig
from mlplat.errors import ConflictError, MlplatError
from mlplat.records import ModelState, ModelVersion, Run, RunState
from mlplat.registry import Registry
from mlplat.storage import Storage, open_root
from mlplat.training.config import parse_training_config
from mlplat.training.policy import concurrency_limit
from mlplat.training.runner import TrainResult, cluster_resources, fail_version, json_safe, read_progress
from mlplat.training.scheduling import (
    HEARTBEAT_S,
    MAX_ATTEMPTS,
    RUNNER_LEASE_S,
    Action,
    FinishLost,
    KillRunner,
    Requeue,
    SchedulerContext,
    StartRunner,
    claimed_here,
    decide,
    heartbeat_age,
)

__all__ = ["SCHEDULER_NAME", "runner_name", "progress_summary", "registry_for", "RunnerControl", "ClusterView",
           "RayRunners", "RayCluster", "TrainScheduler", "TrainRunner"]

log = logging.getLogger(__name__)

SCHEDULER_NAME = "mlplat-train-scheduler"
#: How many runs of each state one tick reads.
_LIST_LIMIT = 1000


def runner_name(run_id: str) -> str:
    return f"mlplat-run-{run_id}"


def registry_for(config: PlatformConfig) -> Registry:
    """The registry as an actor sees it: through the detached registry actor of the namespace."""
    from mlplat.registry import connect_actor

    return connect_actor(config)


def progress_summary(progress: dict[str, Any]) -> dict[str, Any]:
    """The part of ``progress.json`` kept in the run record: status, epoch, last metrics, resumes
    (NaN/inf losses as strings: the record is strict JSON)."""
    history = progress.get("history") or []
    summary = {"status": progress.get("status"), "epoch": progress.get("epoch"), "epochs": progress.get("epochs"),
               "last": history[-1] if history else None, "history": history, "resumes": progress.get("resumes", []),
               "best_epoch": progress.get("best_epoch")}
    return {k: json_safe(v) for k, v in summary.items()}


# -- the scheduler's collaborators -------------------------------------------------------------------


class RunnerControl(Protocol):
    """The runner actors, by run id."""

    def lookup(self, run_id: str) -> object | None:
        """The live runner of ``run_id`` (a handle), or None."""
        ...

    def kill(self, handle: object) -> None: ...

    def start(self, run: Run, worker: str) -> bool:
        """Start the runner of a claimed run; False if one with its name already exists."""
        ...


class ClusterView(Protocol):
    """This cluster: its id, its CPU/GPU in all, and free right now."""

    def cluster_id(self) -> str:
        """What identifies this Ray cluster and namespace among all that share the registry
        (stable across a scheduler restart; the prefix of this cluster's claims)."""
        ...

    def total(self) -> dict[str, float]: ...

    def free(self) -> dict[str, float]: ...


class RayRunners:
    """Runner actors in Ray: detached, named :func:`runner_name`, in the platform's namespace."""

    def __init__(self, config: PlatformConfig):
        self._config = config

    def lookup(self, run_id: str) -> object | None:
        import ray

        try:
            return ray.get_actor(runner_name(run_id), namespace=self._config.namespace)
        except ValueError:
            return None

    def kill(self, handle: Any) -> None:
        import ray

        ray.kill(handle, no_restart=True)

    def start(self, run: Run, worker: str) -> bool:
        import ray

        try:
            runner_cls: Any = ray.remote(TrainRunner)
            handle = runner_cls.options(
                name=runner_name(run.run_id), namespace=self._config.namespace, lifetime="detached",
                num_cpus=0, max_restarts=0, max_concurrency=2,
            ).remote(self._config, run.run_id, worker)
        except ValueError:  # a runner with this name exists: it is already running this request
            return False
        handle.run.remote()
        return True


class RayCluster:
    """The Ray cluster this process is connected to; its id is ``<GCS address>/<namespace>``."""

    def __init__(self, namespace: str):
        self._namespace = namespace

    def cluster_id(self) -> str:
        import ray

        return f"{ray.get_runtime_context().gcs_address}/{self._namespace}"

    def total(self) -> dict[str, float]:
        return cluster_resources()

    def free(self) -> dict[str, float]:
        import ray

        return {k: float(v) for k, v in ray.available_resources().items()}


# -- the scheduler -----------------------------------------------------------------------------------


class TrainScheduler:
    """Claims queued runs while they fit, starts their runners, notices lost runners and cancels.

    Holds nothing that is not in the registry. It claims as ``"<cluster id>/scheduler-<hex>"``;
    a restarted scheduler (same cluster id, new hex) adopts this cluster's runs whose runner
    actors are still alive and re-queues (resumes) the others. Runs claimed by another cluster
    are left to it while their heartbeat is younger than ``lease_s``. ``background=False``: no
    polling thread; call :meth:`tick` yourself (unit tests)."""

    def __init__(self, config: PlatformConfig, max_concurrent: int | None = None, poll_s: float = 1.0, *,
                 registry_factory: Callable[[], Registry] | None = None, runners: RunnerControl | None = None,
                 cluster: ClusterView | None = None, clock: Callable[[], float] = time.time,
                 lease_s: float = RUNNER_LEASE_S, background: bool = True):
        self._config, self._max, self._poll_s = config, max_concurrent, poll_s
        self._registry_factory = registry_factory or (lambda: registry_for(config))
        self._runners: RunnerControl = runners or RayRunners(config)
        self._cluster: ClusterView = cluster or RayCluster(config.namespace)
        self._clock, self._lease_s = clock, lease_s
        self._registry: Registry | None = None
        self._cluster_id = self._cluster.cluster_id()
        #: The worker id of this scheduler's claims (``Run.claimed_by``) and of its runners.
        self._id = f"{self._cluster_id}/scheduler-{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._last_error: str | None = None
        self._ticks = 0
        if background:
            threading.Thread(target=self._loop, daemon=True).start()

    def wake(self) -> str:
        self._wake.set()
        return self._id

    def status(self) -> dict[str, Any]:
        return {"id": self._id, "cluster_id": self._cluster_id, "ticks": self._ticks, "last_error": self._last_error,
                "limit": self._limit(self._cluster.total())}

    def _limit(self, cluster: dict[str, float]) -> int:
        return concurrency_limit(cluster, {"CPU": 1.0}, self._max)

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
                self._last_error = None
            except Exception as exc:  # keep scheduling; the error is visible in status()
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("scheduler tick failed: %s", self._last_error)
            self._ticks += 1
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def tick(self) -> list[Action]:
        """One round: gather the context, decide, apply each action; returns the actions."""
        if self._registry is None:
            self._registry = self._registry_factory()
        registry = self._registry
        ctx, handles = self._gather(registry)
        actions = decide(ctx)
        for action in actions:
            self._apply(registry, action, handles)
        return actions

    def _gather(self, registry: Registry) -> tuple[SchedulerContext, dict[str, object]]:
        now = self._clock()  # read first: a heartbeat written during the gather only looks younger
        running: list[Run] = []
        handles: dict[str, object] = {}
        for run in registry.list_runs(state=RunState.RUNNING, limit=_LIST_LIMIT):
            handle, settled = self._look(run, now)
            if not settled:
                # Looks lost: re-read (it may have finished, heartbeated or been re-claimed since the list).
                run = registry.get_run(run.run_id)
                if run.state != RunState.RUNNING:
                    continue
                handle, _ = self._look(run, now)
            if handle is not None:
                handles[run.run_id] = handle
            running.append(run)
        # The registry lists the queue head first, with queue positions: taken as given.
        queued = registry.list_runs(state=RunState.QUEUED, limit=_LIST_LIMIT)
        cluster = self._cluster.total()
        free = self._cluster.free() if queued else {}
        ctx = SchedulerContext(running=tuple(running), queued=tuple(queued), alive=frozenset(handles),
                               limit=self._limit(cluster), cluster=cluster, free=free, max_attempts=MAX_ATTEMPTS,
                               cluster_id=self._cluster_id, now=now, lease_s=self._lease_s)
        return ctx, handles

    def _look(self, run: Run, now: float) -> tuple[object | None, bool]:
        """The run's runner if this cluster claimed it and it is alive, and whether the record
        settles the run (runner alive, cancel requested, or another cluster's live claim)."""
        if claimed_here(run, self._cluster_id):
            handle = self._runners.lookup(run.run_id)
            return handle, handle is not None or run.cancel_requested
        return None, heartbeat_age(run, now) <= self._lease_s

    def _apply(self, registry: Registry, action: Action, handles: dict[str, object]) -> None:
        if isinstance(action, StartRunner):
            claimed = registry.claim_next_run(self._id, run_id=action.run_id)
            if claimed is not None:  # None: cancelled or claimed elsewhere since the list was read
                self._start_runner(registry, claimed)
        elif isinstance(action, KillRunner):
            self._runners.kill(handles[action.run_id])
        elif isinstance(action, Requeue):
            try:  # only if still RUNNING under the claim the decision saw
                registry.update_run(action.run_id, state=RunState.QUEUED, expected_state=RunState.RUNNING,
                                    claimed_by=action.claimed_by, error=action.reason)
            except ConflictError as exc:
                log.debug("requeue of run %s skipped, someone acted first: %s", action.run_id, exc)
        elif isinstance(action, FinishLost):
            self._finish_lost(registry, action)

    def _start_runner(self, registry: Registry, run: Run) -> None:
        try:
            self._runners.start(run, self._id)
        except Exception as exc:
            registry.update_run(run.run_id, state=RunState.FAILED, error=f"could not start runner: {exc}")

    def _finish_lost(self, registry: Registry, action: FinishLost) -> None:
        try:  # only if still RUNNING under the claim the decision saw
            registry.update_run(action.run_id, state=action.state, expected_state=RunState.RUNNING,
                                claimed_by=action.claimed_by, error=action.reason)
        except ConflictError as exc:
            log.debug("finishing run %s as %s skipped, someone acted first: %s", action.run_id, action.state.value, exc)
            return
        model, version = action.model, action.version
        if version:
            try:
                mv = registry.get_version(model, version)
            except MlplatError:
                return
            if mv.state == ModelState.TRAINING:
                fail_version(registry, model, version, action.reason)
            elif mv.state == ModelState.REGISTERED:
                registry.transition(model, version, ModelState.TRAINING)
                fail_version(registry, model, version, action.reason)


# -- the runner --------------------------------------------------------------------------------------


class TrainRunner:
    """Runs one claimed request to the end, then exits. Detached, named ``mlplat-run-<run-id>``."""

    def __init__(self, config: PlatformConfig, run_id: str, worker: str):
        self._config, self._run_id, self._worker = config, run_id, worker

    def ping(self) -> bool:
        return True

    def run(self) -> str:
        import ray

        registry = registry_for(self._config)
        storage = open_root(self._config.root, self._config.s3)
        run = registry.get_run(self._run_id)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(registry, storage, stop), daemon=True)
        beat.start()
        state = RunState.FAILED
        try:
            result = self._train(registry, storage, run)
            state = RunState.SUCCEEDED if result.ok else RunState.FAILED
            stop.set()
            registry.update_run(self._run_id, state=state, version=result.version, error=result.error,
                                metrics=result.metrics, claimed_by=self._worker,
                                result={k: v for k, v in result.to_dict().items() if k != "history"},
                                progress=progress_summary(read_progress(storage, self._run_id) or {}))
        except ConflictError:  # our claim was taken over (its lease expired): the new holder records the outcome
            stop.set()
            log.warning("run %s: claim of %s was taken over; this runner's outcome is not recorded",
                        self._run_id, self._worker)
        except Exception as exc:
            stop.set()
            message = f"{type(exc).__name__}: {exc}"
            log.error("run %s failed: %s\n%s", self._run_id, message, traceback.format_exc())
            try:
                registry.update_run(self._run_id, state=RunState.FAILED, error=message, claimed_by=self._worker)
            except MlplatError:
                pass
        finally:
            stop.set()
        ray.actor.exit_actor()
        return state.value

    def _train(self, registry: Registry, storage: Storage, run: Run) -> TrainResult:
        cfg = parse_training_config(run.request["config"])
        version = run.version or run.request.get("version")

        def started(mv: ModelVersion) -> None:
            registry.update_run(self._run_id, version=mv.version, claimed_by=self._worker)

        if run.kind == "tune":
            from mlplat.training.sweep import tune

            return tune(cfg, registry=registry, storage=storage, run_id=self._run_id, version=version, on_start=started,
                        weights=self._config.weights)
        from mlplat.training.runner import train

        return train(cfg, registry=registry, storage=storage, run_id=self._run_id, version=version, on_start=started,
                     weights=self._config.weights)

    def _heartbeat(self, registry: Registry, storage: Storage, stop: threading.Event,
                   poll_s: float = 2.0, heartbeat_s: float = HEARTBEAT_S,
                   clock: Callable[[], float] = time.monotonic) -> None:
        """Mirror ``progress.json`` into the run record when it changes (checked every ``poll_s``),
        and write at least every ``heartbeat_s`` even when it does not: each write refreshes
        ``heartbeat_at``, which other clusters' schedulers read as this claim's lease."""
        last: dict[str, Any] | None = None
        written = clock()
        while not stop.wait(poll_s):
            try:
                progress = read_progress(storage, self._run_id)
                summary = progress_summary(progress) if progress else {}
                if summary != last or clock() - written >= heartbeat_s:
                    registry.update_run(self._run_id, progress=summary, claimed_by=self._worker)
                    last, written = summary, clock()
            except ConflictError:  # the claim is no longer ours: stop renewing its lease
                log.warning("run %s: claim of %s was taken over; heartbeat stopped", self._run_id, self._worker)
                return
            except Exception:  # advisory only; the next round tries again
                log.debug("heartbeat of run %s failed", self._run_id, exc_info=True)
