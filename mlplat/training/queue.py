"""Asynchronous training requests: a durable queue in the registry and a scheduler actor.

- :func:`submit` writes the request to the registry's run queue and returns its run id at once.
- The scheduler (one named detached actor per namespace, ``num_cpus=0``, ``max_restarts=-1``)
  claims queued runs atomically (``claim_next_run``) while they fit the cluster's free resources
  and the concurrency limit, and starts one detached *runner* actor per run, named after it.
- The runner runs :func:`mlplat.training.runner.train` (or a sweep), mirrors ``progress.json``
  into the run record, and records the outcome. A run whose runner died is re-queued with the same
  run id and version, so Ray Train resumes it from its last checkpoint; it is never run by two
  runners at once (the claim is durable and the runner's name is unique).
- The queue lives in SQLite: it survives the submitting process and a scheduler restart.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from typing import Any

from mlplat.config import PlatformConfig
from mlplat.errors import ConfigError, MlplatError, NotFound
from mlplat.names import validate_name
from mlplat.records import ModelState
from mlplat.storage import Storage, open_root
from mlplat.training.config import TrainingConfig, config_hash, parse_training_config
from mlplat.training.inputs import resolve_training_data
from mlplat.training.policy import concurrency_limit, run_footprint, worker_resources
from mlplat.training.runner import cluster_resources, fail_version, new_run_id, read_progress

__all__ = ["SCHEDULER_NAME", "submit", "publish", "ensure_scheduler", "wait_for_run", "run_status", "runner_name",
           "TrainScheduler", "TrainRunner", "MAX_ATTEMPTS"]

log = logging.getLogger(__name__)

SCHEDULER_NAME = "mlplat-train-scheduler"
#: A run whose runner vanished is retried (resumed) this many times in all before it is FAILED.
MAX_ATTEMPTS = 3
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def runner_name(run_id: str) -> str:
    return f"mlplat-run-{run_id}"


def submit(registry: Any, config: TrainingConfig | dict[str, Any], *, kind: str = "train", version: int | None = None,
           priority: int = 0, run_id: str | None = None) -> dict[str, Any]:
    """Queue a training (``kind="train"``) or sweep (``kind="tune"``) request; returns the run record."""
    config = parse_training_config(config)
    if kind == "tune" and (config.search is None or not config.search.space):
        raise ConfigError("a sweep needs `search.space` in the training config")
    run_id = run_id or new_run_id(config.model)
    request = {"config": config.model_dump(mode="json"), "version": version}
    return registry.enqueue_run(run_id, kind=kind, model=config.model, request=request, version=version,
                                priority=priority, idempotency_key=f"enqueue:{run_id}")


def publish(registry: Any, storage: Storage, model: str, code_version: str, *, config: TrainingConfig | dict | None = None,
            priority: int = 0) -> tuple[Any, dict[str, Any]]:
    """The CI hook: register a new version of ``model`` at ``code_version`` (REGISTERED, with its
    lineage) and queue its training. Without ``config`` the recipe of the model's latest version is reused."""
    validate_name(model, "model name")
    if not code_version or not isinstance(code_version, str):
        raise ConfigError("publish needs a code version (e.g. the git SHA of the merge)")
    if config is None:
        try:
            versions = registry.list_versions(model)
        except NotFound:
            versions = []
        recipes = [v.extra.get("config") for v in reversed(versions) if v.extra.get("config")]
        if not recipes:
            raise ConfigError(f"model {model!r} has no earlier training config to reuse; pass --config configs/train-<x>.yaml")
        config = recipes[0]
    cfg = parse_training_config(config)
    if cfg.model != model:
        raise ConfigError(f"the config trains model {cfg.model!r}, not {model!r}")
    data = resolve_training_data(registry, storage, cfg.feature_set.name, cfg.feature_set.version, cfg.label)
    # Pin the feature-set version so the registered lineage is what gets trained.
    cfg = cfg.model_copy(update={"code_version": code_version,
                                 "feature_set": cfg.feature_set.model_copy(update={"version": data.feature_set.version})})
    run_id = new_run_id(model)
    mv = registry.register_version(model, config_hash=config_hash(cfg), code_version=code_version,
                                   datasets=[d.model_dump() for d in data.datasets], feature_set=data.feature_set.model_dump(),
                                   run_id=run_id, extra={"config": cfg.model_dump(mode="json"), "published": True},
                                   idempotency_key=f"publish:{run_id}")
    run = submit(registry, cfg, version=mv.version, priority=priority, run_id=run_id)
    return mv, run


def run_status(registry: Any, storage: Storage, run_id: str) -> dict[str, Any]:
    """The run record plus live progress (epoch, metrics) from ``runs/<run-id>/progress.json``."""
    run = registry.get_run(run_id)
    live = read_progress(storage, run_id)
    if live:
        run["progress"] = {**(run.get("progress") or {}), **_progress_summary(live)}
    return run


def _progress_summary(progress: dict[str, Any]) -> dict[str, Any]:
    history = progress.get("history") or []
    return {"status": progress.get("status"), "epoch": progress.get("epoch"), "epochs": progress.get("epochs"),
            "last": history[-1] if history else None, "history": history, "resumes": progress.get("resumes", []),
            "best_epoch": progress.get("best_epoch")}


def wait_for_run(registry: Any, run_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> dict[str, Any]:
    """Block until the run is SUCCEEDED, FAILED or CANCELLED; returns its record."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        run = registry.get_run(run_id)
        if run["state"] in TERMINAL:
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} is still {run['state']} after {timeout_s:g} s")
        time.sleep(poll_s)


def ensure_scheduler(config: PlatformConfig, *, max_concurrent: int | None = None, poll_s: float = 1.0) -> Any:
    """Get or start the scheduler actor of ``config.namespace`` and wake it."""
    import ray

    actor = ray.remote(TrainScheduler).options(
        name=SCHEDULER_NAME, namespace=config.namespace, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8,
    ).remote(config, max_concurrent, poll_s)
    ray.get(actor.wake.remote())
    return actor


def _registry_for(config: PlatformConfig) -> Any:
    from mlplat.registry import RegistryClient

    return RegistryClient.connect(config)


class TrainRunner:
    """Runs one claimed request to the end, then exits. Detached, named ``mlplat-run-<run-id>``."""

    def __init__(self, config: PlatformConfig, run_id: str, worker: str):
        self._config, self._run_id, self._worker = config, run_id, worker

    def ping(self) -> bool:
        return True

    def run(self) -> str:
        import ray

        registry = _registry_for(self._config)
        storage = open_root(self._config.root, self._config.s3)
        run = registry.get_run(self._run_id)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(registry, storage, stop), daemon=True)
        beat.start()
        state, version = "FAILED", run.get("version")
        try:
            request = run["request"]
            cfg = parse_training_config(request["config"])
            version = run.get("version") or request.get("version")

            def started(mv: Any) -> None:
                registry.update_run(self._run_id, version=mv.version)

            if run["kind"] == "tune":
                from mlplat.training.sweep import tune

                result = tune(cfg, registry=registry, storage=storage, run_id=self._run_id, version=version, on_start=started)
            else:
                from mlplat.training.runner import train

                result = train(cfg, registry=registry, storage=storage, run_id=self._run_id, version=version, on_start=started)
            state = "SUCCEEDED" if result.ok else "FAILED"
            stop.set()
            registry.update_run(self._run_id, state=state, version=result.version, error=result.error,
                                result={k: v for k, v in result.to_dict().items() if k != "history"},
                                progress=_progress_summary(read_progress(storage, self._run_id) or {}))
        except Exception as exc:
            stop.set()
            message = f"{type(exc).__name__}: {exc}"
            log.error("run %s failed: %s\n%s", self._run_id, message, traceback.format_exc())
            try:
                registry.update_run(self._run_id, state="FAILED", error=message)
            except MlplatError:
                pass
        finally:
            stop.set()
        ray.actor.exit_actor()
        return state

    def _heartbeat(self, registry: Any, storage: Storage, stop: threading.Event) -> None:
        last = None
        while not stop.wait(2.0):
            try:
                progress = read_progress(storage, self._run_id)
                summary = _progress_summary(progress) if progress else {}
                if summary != last:
                    registry.update_run(self._run_id, progress=summary)
                    last = summary
            except Exception:  # advisory only
                pass


class TrainScheduler:
    """Claims queued runs while they fit, starts their runners, notices lost runners and cancels.

    Holds nothing that is not in the registry: a restarted scheduler adopts the runs whose runner
    actors are still alive and re-queues (resumes) the others."""

    def __init__(self, config: PlatformConfig, max_concurrent: int | None = None, poll_s: float = 1.0):
        self._config, self._max, self._poll_s = config, max_concurrent, poll_s
        self._id = f"scheduler-{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._last_error: str | None = None
        self._ticks = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def wake(self) -> str:
        self._wake.set()
        return self._id

    def status(self) -> dict[str, Any]:
        return {"id": self._id, "ticks": self._ticks, "last_error": self._last_error, "limit": self._limit()}

    def _limit(self) -> int:
        return concurrency_limit(cluster_resources(), {"CPU": 1.0}, self._max)

    def _loop(self) -> None:
        registry = None
        while True:
            try:
                registry = registry or _registry_for(self._config)
                self._tick(registry)
                self._last_error = None
            except Exception as exc:  # keep scheduling; the error is visible in status()
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("scheduler tick failed: %s", self._last_error)
            self._ticks += 1
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def _tick(self, registry: Any) -> None:
        import ray

        running = registry.list_runs(state="RUNNING", limit=1000)
        alive = 0
        for run in running:
            handle = _get_actor(runner_name(run["run_id"]), self._config.namespace)
            if run["cancel_requested"]:
                if handle is not None:
                    ray.kill(handle, no_restart=True)
                self._finish_lost(registry, run, "CANCELLED", "cancelled by request")
                continue
            if handle is not None:
                alive += 1
                continue
            # The runner is gone without recording an outcome (node lost, killed, scheduler restart race).
            fresh = registry.get_run(run["run_id"])
            if fresh["state"] != "RUNNING":
                continue
            if fresh["attempts"] < MAX_ATTEMPTS:
                registry.update_run(run["run_id"], state="QUEUED", error="runner lost; re-queued to resume from its checkpoint")
            else:
                self._finish_lost(registry, run, "FAILED", f"runner lost {fresh['attempts']} times")
        limit = self._limit()
        while alive < limit:
            queued = registry.list_runs(state="QUEUED", limit=1000)
            if not queued:
                return
            nxt = min(queued, key=lambda r: (r["queue_position"] or 0))
            if not _fits_now(nxt):
                return
            claimed = registry.claim_next_run(self._id, run_id=nxt["run_id"])
            if claimed is None:
                continue
            self._start_runner(registry, claimed)
            alive += 1

    def _start_runner(self, registry: Any, run: dict[str, Any]) -> None:
        import ray

        try:
            handle = ray.remote(TrainRunner).options(
                name=runner_name(run["run_id"]), namespace=self._config.namespace, lifetime="detached",
                num_cpus=0, max_restarts=0, max_concurrency=2,
            ).remote(self._config, run["run_id"], self._id)
            handle.run.remote()
        except ValueError:  # a runner with this name exists: it is already running this request
            return
        except Exception as exc:
            registry.update_run(run["run_id"], state="FAILED", error=f"could not start runner: {exc}")

    def _finish_lost(self, registry: Any, run: dict[str, Any], state: str, error: str) -> None:
        registry.update_run(run["run_id"], state=state, error=error)
        version = run.get("version") or (run.get("request") or {}).get("version")
        if version:
            try:
                mv = registry.get_version(run["model"], version)
            except MlplatError:
                return
            if mv.state == ModelState.TRAINING:
                fail_version(registry, run["model"], version, error)
            elif mv.state == ModelState.REGISTERED:
                registry.transition(run["model"], version, ModelState.TRAINING)
                fail_version(registry, run["model"], version, error)


def _get_actor(name: str, namespace: str) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _fits_now(run: dict[str, Any]) -> bool:
    """Does the next request's worker footprint fit the cluster's free resources right now?"""
    import ray

    try:
        cfg = parse_training_config(run["request"]["config"])
        use_gpu, res, _ = worker_resources(cfg.scaling.num_workers, cfg.scaling.use_gpu, cfg.scaling.resources_per_worker,
                                           cluster_resources(), cfg.scaling.allow_cpu_fallback)
    except MlplatError:
        return True  # let the runner fail it with the clear error
    need = run_footprint(cfg.scaling.num_workers, res)
    free = ray.available_resources()
    return all(float(free.get(k, 0)) + 1e-9 >= v for k, v in need.items())
