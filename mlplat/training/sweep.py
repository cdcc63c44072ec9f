"""Sweeps: a Ray Tune search over ``search.space`` with early-stopping trials (ASHA).

The Train V2 pattern (ray-2.60-notes.md, "Tune"): each trial is a Tune *function* that builds and
fits its own TorchTrainer with ``TuneReportCallback``; the trial driver reserves 0.01 CPU and
``max_concurrent_trials`` caps how many trainers compete for the workers. The best trial becomes
the model version (bundle + TRAINED); every trial is recorded on it (``extra.sweep``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from mlplat.config import WeightStorageSettings
from mlplat.errors import ConfigError, MlplatError
from mlplat.records import ModelState, ModelVersion
from mlplat.registry import Registry
from mlplat.storage import Storage
from mlplat.training.config import SearchSpec, TrainingConfig, apply_overrides, parse_training_config
from mlplat.training.inputs import make_datasets
from mlplat.training.runner import (
    Prepared,
    TrainResult,
    fail_version,
    finalize,
    new_run_id,
    prepare,
    read_progress,
    register_for_training,
    run_trainer,
)

__all__ = ["tune", "search_space", "trial_run_id", "TRIAL_DRIVER_CPU"]

#: CPU reserved by each trial's driver (Tune refuses an all-zero request); the trainer's workers
#: reserve their own.
TRIAL_DRIVER_CPU = 0.01


def search_space(search: SearchSpec) -> dict[str, Any]:
    """``search.space`` as Ray Tune distributions (keys stay dotted)."""
    from ray import tune as rt

    space: dict[str, Any] = {}
    for key, dist in search.space.items():
        kind, args = next(iter(dist.items()))
        if kind == "choice":
            space[key] = rt.choice(args)
        elif kind == "grid":
            space[key] = rt.grid_search(args)
        elif kind == "uniform":
            space[key] = rt.uniform(*args)
        elif kind == "loguniform":
            space[key] = rt.loguniform(*args)
        elif kind == "randint":
            space[key] = rt.randint(*args)
        elif kind == "quniform":
            space[key] = rt.quniform(*args)
    return space


def trial_run_id(sweep_run_id: str, trial_id: str) -> str:
    return f"{sweep_run_id}-t{re.sub(r'[^a-z0-9_-]', '-', trial_id.lower())}"


def _trial_fn(prepared: Prepared, storage: Storage, sweep_run_id: str, metric: str, mode: str,
              datasets: dict[str, Any]) -> Callable[[dict], None]:
    def trial(trial_config: dict[str, Any]) -> None:
        from ray import tune as rt
        from ray.tune.integration.ray_train import TuneReportCallback

        cfg = apply_overrides(prepared.config, trial_config)
        run_id = trial_run_id(sweep_run_id, rt.get_context().get_trial_id())
        result = run_trainer(dataclasses.replace(prepared, config=cfg), storage=storage, run_id=run_id,
                             callbacks=[TuneReportCallback()], metric=metric, mode=mode, datasets=datasets)
        if getattr(result, "error", None) is not None:
            raise result.error

    return trial


def tune(config: TrainingConfig | dict[str, Any], *, registry: Registry, storage: Storage, run_id: str | None = None,
         version: int | None = None, on_start: Callable[[ModelVersion], None] | None = None,
         weights: WeightStorageSettings | None = None) -> TrainResult:
    """Run the sweep and register its best trial as one version (TRAINED), or FAILED; ``weights``
    (the platform's settings) places the best trial's weights by size."""
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = parse_training_config(config)
    if cfg.search is None or not cfg.search.space:
        raise ConfigError("a sweep needs `search.space` in the training config (see docs/training.md)")
    run_id = run_id or new_run_id(cfg.model)
    prepared = prepare(cfg, registry=registry, storage=storage)
    if cfg.scaling.resources_per_worker is None and not prepared.use_gpu:
        # Observed on 2 CPUs: after a trial ends its trainer's CPU is not free in time for the next
        # trial's workers; fractional CPUs per trial worker keep the next trial schedulable.
        share = {**prepared.resources_per_worker, "CPU": min(prepared.resources_per_worker.get("CPU", 1.0), 0.5)}
        prepared = dataclasses.replace(prepared, resources_per_worker=share)
    search, metric, mode = cfg.search, cfg.metric, cfg.mode
    mv = register_for_training(prepared, registry=registry, run_id=run_id, version=version,
                               extra={"sweep": {"space": search.space, "num_samples": search.num_samples,
                                                "metric": metric, "mode": mode, "scheduler": search.scheduler}})
    if on_start is not None:
        on_start(mv)
    try:
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.hyperparameters.epochs,
                                   grace_period=search.grace_period, reduction_factor=search.reduction_factor)
                     if search.scheduler == "asha" else FIFOScheduler())
        # Read the feature set once, here: read tasks started inside a trial would be scheduled in the
        # trial's tiny placement group (Tune captures child tasks) and wait forever.
        datasets = make_datasets(storage, prepared.data, cfg.spec.task, materialize=True)
        tuner = rt.Tuner(
            rt.with_resources(_trial_fn(prepared, storage, run_id, metric, mode, datasets), {"CPU": TRIAL_DRIVER_CPU}),
            param_space=search_space(search),
            tune_config=rt.TuneConfig(metric=metric, mode=mode, num_samples=search.num_samples,
                                      max_concurrent_trials=search.max_concurrent_trials, scheduler=scheduler,
                                      reuse_actors=False),  # a fresh trial process per trial
            run_config=rt.RunConfig(name=f"{run_id}-tune", storage_path=storage.path("runs"), storage_filesystem=storage.fs),
        )
        grid = tuner.fit()
        trials: list[dict[str, Any]] = []
        for res in (grid[i] for i in range(len(grid))):  # ResultGrid: indexable, no __iter__ in its type
            trial_id = res.path.rstrip("/").rsplit("/", 1)[-1] if res.path else None
            tid = (res.metrics or {}).get("trial_id")
            trun = trial_run_id(run_id, tid) if tid else None
            progress = read_progress(storage, trun) if trun else None
            best_value = None
            if progress and progress.get("history"):
                values = [h.get(metric) for h in progress["history"] if h.get(metric) is not None]
                best_value = (min(values) if mode == "min" else max(values)) if values else None
            trials.append({"trial": trial_id, "trial_id": tid, "run_id": trun, "config": res.config,
                           "best": best_value, "epochs": len((progress or {}).get("history", [])),
                           "stopped_early_by_asha": bool(progress and progress.get("status") == "running"),
                           "error": None if res.error is None else str(res.error)[:500]})
        candidates = [t for t in trials if t["best"] is not None and t["error"] is None]
        if not candidates:
            raise MlplatError(f"no trial of sweep {run_id} finished an epoch: {[t['error'] for t in trials]}")
        best = (min if mode == "min" else max)(candidates, key=lambda t: t["best"])
        best_cfg = apply_overrides(cfg, best["config"])
        result = finalize(dataclasses.replace(prepared, config=best_cfg), registry=registry, storage=storage,
                          run_id=best["run_id"], version=mv.version, metric=metric, mode=mode, weights=weights,
                          extra={"sweep": {"run_id": run_id, "best_trial": best, "trials": trials, "metric": metric,
                                           "mode": mode}, "config": best_cfg.model_dump(mode="json")})
        result.run_id = run_id
        return result
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        current = registry.get_version(cfg.model, mv.version)
        if current.state == ModelState.TRAINING:
            fail_version(registry, cfg.model, mv.version, message)
        return TrainResult(run_id=run_id, model=cfg.model, version=mv.version, state=ModelState.FAILED.value, error=message)
