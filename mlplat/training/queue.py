"""Asynchronous training requests: a durable queue in the registry and a scheduler actor.

- :func:`submit` writes the request to the registry's run queue and returns its run id at once.
- The scheduler (one named detached actor per namespace, ``num_cpus=0``, ``max_restarts=-1``)
  claims queued runs atomically (``claim_next_run``) while they fit the cluster's free resources
  and the concurrency limit, and starts one detached *runner* actor per run, named after it.
  What it does each tick is the pure :func:`mlplat.training.scheduling.decide`; the actors
  (:class:`TrainScheduler`, its executor, and :class:`TrainRunner`) live in :mod:`mlplat.training.actors`.
- The runner runs :func:`mlplat.training.runner.train` (or a sweep), mirrors ``progress.json``
  into the run record, and records the outcome (and the version's metrics, ``Run.metrics``). A run whose runner died is re-queued with the same
  run id and version, so Ray Train resumes it from its last checkpoint; the claim is durable and
  names the claiming cluster, the runner's name is unique in its cluster, and only that
  cluster's scheduler judges the run while its heartbeat is fresh (``RUNNER_LEASE_S``).
- The queue lives in the registry (SQLite or PostgreSQL, possibly shared by several clusters): it
  survives the submitting process and a scheduler restart.
"""

from __future__ import annotations

import time
from typing import Any

from mlplat.config import PlatformConfig
from mlplat.errors import ConfigError, NotFound
from mlplat.names import validate_name
from mlplat.records import ModelVersion, Run
from mlplat.registry import Registry
from mlplat.storage import Storage
from mlplat.training.actors import SCHEDULER_NAME, TrainRunner, TrainScheduler, progress_summary, runner_name
from mlplat.training.config import TrainingConfig, config_hash, parse_training_config
from mlplat.training.inputs import resolve_training_data
from mlplat.training.runner import new_run_id, read_progress
from mlplat.training.scheduling import MAX_ATTEMPTS

__all__ = ["SCHEDULER_NAME", "submit", "publish", "ensure_scheduler", "wait_for_run", "run_status", "runner_name",
           "TrainScheduler", "TrainRunner", "MAX_ATTEMPTS"]


def submit(registry: Registry, config: TrainingConfig | dict[str, Any], *, kind: str = "train",
           version: int | None = None, priority: int = 0, run_id: str | None = None) -> Run:
    """Queue a training (``kind="train"``) or sweep (``kind="tune"``) request; returns the run record."""
    config = parse_training_config(config)
    if kind == "tune" and (config.search is None or not config.search.space):
        raise ConfigError("a sweep needs `search.space` in the training config")
    run_id = run_id or new_run_id(config.model)
    request = {"config": config.model_dump(mode="json"), "version": version}
    return registry.enqueue_run(run_id, kind=kind, model=config.model, request=request, version=version,
                                priority=priority, idempotency_key=f"enqueue:{run_id}")


def publish(registry: Registry, storage: Storage, model: str, code_version: str, *,
            config: TrainingConfig | dict[str, Any] | None = None, priority: int = 0) -> tuple[ModelVersion, Run]:
    """The CI hook: register a new version of ``model`` at ``code_version`` (REGISTERED, with its
    lineage) and queue its training. Without ``config`` the recipe of the model's latest version is reused."""
    validate_name(model, "model name")
    if not code_version or not isinstance(code_version, str):
        raise ConfigError("publish needs a code version (e.g. the git SHA of the merge)")
    cfg = parse_training_config(config if config is not None else _latest_recipe(registry, model))
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


def _latest_recipe(registry: Registry, model: str) -> dict[str, Any]:
    """The training config of the model's latest version that has one."""
    try:
        versions = registry.list_versions(model)
    except NotFound:
        versions = []
    recipes = [v.extra["config"] for v in reversed(versions) if v.extra.get("config")]
    if not recipes:
        raise ConfigError(f"model {model!r} has no earlier training config to reuse; pass --config configs/train-<x>.yaml")
    return dict(recipes[0])


def run_status(registry: Registry, storage: Storage, run_id: str) -> Run:
    """The run record plus live progress (epoch, metrics) from ``runs/<run-id>/progress.json``."""
    run = registry.get_run(run_id)
    live = read_progress(storage, run_id)
    if live:
        run = run.model_copy(update={"progress": {**run.progress, **progress_summary(live)}})
    return run


def wait_for_run(registry: Registry, run_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> Run:
    """Block until the run is SUCCEEDED, FAILED or CANCELLED; returns its record."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        run = registry.get_run(run_id)
        if run.state.is_terminal:
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} is still {run.state.value} after {timeout_s:g} s")
        time.sleep(poll_s)


def ensure_scheduler(config: PlatformConfig, *, max_concurrent: int | None = None, poll_s: float = 1.0) -> Any:
    """Get or start the scheduler actor of ``config.namespace`` and wake it; returns its handle."""
    import ray

    scheduler_cls: Any = ray.remote(TrainScheduler)
    actor = scheduler_cls.options(
        name=SCHEDULER_NAME, namespace=config.namespace, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8,
    ).remote(config, max_concurrent, poll_s)
    ray.get(actor.wake.remote())
    return actor
