"""``train(config)``: one training run end to end, synchronously, in the calling process.

REGISTERED -> TRAINING -> TRAINED (bundle written, ArtifactRef ``bundle`` stored) or FAILED (error
recorded, no bundle registered). Lineage on the version: feature-set version, dataset versions,
code version, config hash, run id, metrics per epoch (``extra.history``).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlplat.config import WeightStorageSettings
from mlplat.errors import ConfigError, MlplatError
from mlplat.models import build_model, save_bundle
from mlplat.models.bundle import placement_for, state_dict_bytes
from mlplat.names import validate_name
from mlplat.records import ArtifactRef, ModelState, ModelVersion
from mlplat.registry import Registry
from mlplat.storage import Storage
from mlplat.training.checkpoints import latest_valid_checkpoint
from mlplat.training.config import TrainingConfig, config_hash, parse_training_config
from mlplat.training.inputs import TrainingData, make_datasets, resolve_training_data
from mlplat.training.loop import progress_path, train_loop_per_worker
from mlplat.training.policy import best_index, worker_resources

__all__ = ["TrainResult", "TrainingFailed", "new_run_id", "train", "prepare", "register_for_training",
           "run_trainer", "finalize", "fail_version", "read_progress", "cluster_resources", "json_safe"]

log = logging.getLogger(__name__)


class TrainingFailed(MlplatError):
    """A run ended FAILED; the message names the epoch or the error."""


@dataclass
class TrainResult:
    run_id: str
    model: str
    version: int
    state: str
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    bundle: ArtifactRef | None = None
    error: str | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == ModelState.TRAINED.value

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model": self.model, "version": self.version, "state": self.state,
                "metrics": self.metrics, "history": self.history, "error": self.error, "resumes": self.resumes,
                "notes": self.notes, "bundle": None if self.bundle is None else self.bundle.model_dump(mode="json")}


def new_run_id(model: str) -> str:
    """``<model>-<utc time>-<6 hex>``: unique per attempt, so Ray never silently resumes another run."""
    return f"{validate_name(model, 'model name')}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def json_safe(value: Any) -> Any:
    """``value`` with each NaN/inf float replaced by its name: the registry stores strict JSON, and
    a diverged run's history holds them.

    >>> json_safe({"history": [{"train_loss": float("nan"), "epoch": 0}], "x": -float("inf")})
    {'history': [{'train_loss': 'nan', 'epoch': 0}], 'x': '-inf'}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def cluster_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def read_progress(storage: Storage, run_id: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(*progress_path(run_id))
    except MlplatError:
        return None


@dataclass(frozen=True)
class Prepared:
    config: TrainingConfig
    data: TrainingData
    use_gpu: bool
    resources_per_worker: dict[str, float]
    notes: tuple[str, ...]


def prepare(config: TrainingConfig | dict[str, Any], *, registry: Registry, storage: Storage,
            cluster: dict[str, float] | None = None) -> Prepared:
    """Every check that can fail before anything is registered: config, feature set, label,
    model factory, resources (ResourceError unless CPU fallback is allowed)."""
    config = parse_training_config(config)
    data = resolve_training_data(registry, storage, config.feature_set.name, config.feature_set.version, config.label)
    try:
        build_model(config.spec, data.input_dim)
    except MlplatError:
        raise
    except Exception as exc:  # the user's factory raising
        raise ConfigError(f"model {config.model!r}: building {config.spec.architecture} failed: {type(exc).__name__}: {exc}") from None
    cluster = cluster if cluster is not None else cluster_resources()
    use_gpu, res, note = worker_resources(config.scaling.num_workers, config.scaling.use_gpu,
                                          config.scaling.resources_per_worker, cluster, config.scaling.allow_cpu_fallback)
    return Prepared(config, data, use_gpu, res, (note,) if note else ())


def register_for_training(prepared: Prepared, *, registry: Registry, run_id: str, version: int | None = None,
                          extra: dict[str, Any] | None = None) -> ModelVersion:
    """Register a new version (or adopt ``version``, REGISTERED or resuming TRAINING) and move it to TRAINING."""
    cfg, data = prepared.config, prepared.data
    lineage = {
        "config": cfg.model_dump(mode="json"),
        "run_id": run_id,
        "label": data.label,
        "feature_columns": list(data.feature_columns),
        "scaling": {"num_workers": cfg.scaling.num_workers, "use_gpu": prepared.use_gpu,
                    "resources_per_worker": prepared.resources_per_worker},
        "notes": list(prepared.notes),
        **(extra or {}),
    }
    if version is None:
        mv = registry.register_version(cfg.model, config_hash=config_hash(cfg), code_version=cfg.code_version,
                                       datasets=[d.model_dump() for d in data.datasets],
                                       feature_set=data.feature_set.model_dump(), run_id=run_id, extra=lineage,
                                       idempotency_key=f"train-register:{run_id}")
        version = mv.version
    else:
        mv = registry.get_version(cfg.model, version)
        if mv.state == ModelState.TRAINING and mv.run_id == run_id:
            return mv  # resuming this very run
        registry.update_version(cfg.model, version, extra={**lineage, "feature_set": data.feature_set.model_dump(),
                                                           "datasets": [d.model_dump() for d in data.datasets],
                                                           "config_hash": config_hash(cfg)},
                                expected_state=ModelState.REGISTERED)
    return registry.transition(cfg.model, version, ModelState.TRAINING, expected_state=ModelState.REGISTERED,
                               idempotency_key=f"train-start:{run_id}")


def run_trainer(prepared: Prepared, *, storage: Storage, run_id: str, callbacks: list[Any] | None = None,
                metric: str | None = None, mode: str | None = None, datasets: dict[str, Any] | None = None) -> Any:
    """Build and fit the TorchTrainer; returns the ``ray.train.Result``."""
    from ray.data.dataset import MaterializedDataset
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = prepared.config
    if datasets is None:
        datasets = make_datasets(storage, prepared.data, cfg.spec.task)
    in_memory = all(isinstance(d, MaterializedDataset) for d in datasets.values())
    # Materialized (small) datasets go whole to every worker, which keeps its equal part of the
    # rows (loop.ShardBatches): Ray Train then starts no split coordinator actor per dataset
    # (~2 s each on 2 CPUs, before the first step). Streamed ones are split by Ray Train.
    in_memory_rows = {name: d.count() for name, d in datasets.items()} if in_memory else {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "storage": storage, "run_id": run_id,
                           "input_dim": prepared.data.input_dim, "metric": metric or cfg.hyperparameters.early_stopping.metric,
                           "in_memory_rows": in_memory_rows,
                           "mode": mode or cfg.hyperparameters.early_stopping.mode},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=prepared.use_gpu,
                                     resources_per_worker=prepared.resources_per_worker),
        run_config=RunConfig(name=run_id, storage_path=storage.path("runs"), storage_filesystem=storage.fs,
                             failure_config=FailureConfig(max_failures=cfg.failure.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.checkpoint.keep, 1)),
                             callbacks=callbacks or None),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[] if in_memory else "all"),
    )
    return trainer.fit()


def fail_version(registry: Registry, model: str, version: int, error: str, *, history: list[dict[str, Any]] | None = None,
                 resumes: list[dict[str, Any]] | None = None) -> None:
    """Move a TRAINING version to FAILED with the error (and whatever history there is)."""
    try:
        if history is not None:
            registry.update_version(model, version, extra=json_safe({"history": history, "resumes": resumes or []}))
        registry.transition(model, version, ModelState.FAILED, expected_state=ModelState.TRAINING, error=error[:4000])
    except MlplatError as exc:
        log.warning("could not mark %s v%s FAILED: %s", model, version, exc)


def finalize(prepared: Prepared, *, registry: Registry, storage: Storage, run_id: str, version: int,
             preferred_checkpoint: str | None = None, extra: dict[str, Any] | None = None,
             metric: str | None = None, mode: str | None = None,
             weights: WeightStorageSettings | None = None) -> TrainResult:
    """After fit: verify the newest checkpoint, write the bundle of the best epoch, register it TRAINED.
    A non-finite loss or a missing checkpoint ends FAILED instead. ``weights`` (the platform's
    settings) places the weights by size; None keeps them in model.safetensors."""
    cfg, data = prepared.config, prepared.data
    metric = metric or cfg.hyperparameters.early_stopping.metric
    mode = mode or cfg.hyperparameters.early_stopping.mode
    progress = read_progress(storage, run_id) or {}
    history = list(progress.get("history", []))
    resumes = list(progress.get("resumes", []))
    result = TrainResult(run_id=run_id, model=cfg.model, version=version, state=ModelState.FAILED.value,
                         history=history, resumes=resumes, notes=list(prepared.notes))
    if progress.get("status") == "nonfinite":
        result.error = progress.get("error") or f"non-finite loss at epoch {progress.get('nonfinite_epoch')}"
        fail_version(registry, cfg.model, version, result.error, history=history, resumes=resumes)
        return result
    rejected: list[dict[str, str]] = []
    ckpt = latest_valid_checkpoint(storage.fs, storage.path("runs", run_id), preferred=preferred_checkpoint, rejected=rejected)
    if ckpt is None:
        result.error = f"run {run_id} left no valid checkpoint under {storage.uri_of('runs', run_id)}"
        fail_version(registry, cfg.model, version, result.error, history=history, resumes=resumes)
        return result
    history = list(ckpt.state.get("history", history))
    # A resume after the last checkpoint (worker lost after the final epoch) is only in progress.json.
    ckpt_resumes = list(ckpt.state.get("resumes", []))
    resumes = resumes if len(resumes) > len(ckpt_resumes) else ckpt_resumes
    idx = best_index([h.get(metric) for h in history], mode, cfg.hyperparameters.early_stopping.min_delta)
    best = history[idx] if idx is not None else history[-1]
    metrics: dict[str, Any] = {k: v for k, v in best.items() if isinstance(v, (int, float)) and k != "epoch_s"}
    metrics.update({"best_epoch": best["epoch"], "epochs_run": len(history), "metric": metric,
                    "stopped_early": bool(ckpt.state.get("stopped_early"))})
    model = build_model(cfg.spec, data.input_dim)
    model.load_state_dict(ckpt.model_weights(best=True), strict=True)
    bundle = save_bundle(storage, cfg.model, version, model, spec=cfg.spec, input_columns=list(data.feature_columns),
                         label_columns=[data.label], encoder=data.encoder, feature_set=data.feature_set.model_dump(),
                         metrics=metrics, extra={"run_id": run_id, "config_hash": config_hash(cfg),
                                                 "code_version": cfg.code_version,
                                                 "datasets": [d.model_dump() for d in data.datasets]},
                         weights=weights)
    weight_bytes = state_dict_bytes(model.state_dict())
    lineage = {"history": history, "resumes": resumes, "checkpoint": ckpt.path, "rejected_checkpoints": rejected,
               "weights": {"placement": placement_for(weight_bytes, weights), "bytes": weight_bytes}, **(extra or {})}
    registry.batch([
        ("update_version", {"name": cfg.model, "version": version, "artifacts": {"bundle": bundle.model_dump(mode="json")},
                            "extra": json_safe(lineage), "expected_state": ModelState.TRAINING.value}),
        ("transition", {"name": cfg.model, "version": version, "state": ModelState.TRAINED.value,
                        "expected_state": ModelState.TRAINING.value, "metrics": metrics}),
    ], idempotency_key=f"train-finish:{run_id}")
    result.state, result.metrics, result.history, result.resumes, result.bundle = (
        ModelState.TRAINED.value, metrics, history, resumes, bundle)
    return result


def train(config: TrainingConfig | dict[str, Any], *, registry: Registry, storage: Storage, run_id: str | None = None,
          version: int | None = None, extra: dict[str, Any] | None = None,
          on_start: Callable[[ModelVersion], None] | None = None,
          weights: WeightStorageSettings | None = None) -> TrainResult:
    """Run one training request to the end in this process (Ray must be initialized).

    Config problems (unknown model type, factory that does not import, feature set without the
    label, GPUs that do not exist) raise before anything is registered when ``version`` is None;
    with a ``version`` given (publish), that version ends FAILED with the error.
    """
    config = parse_training_config(config)
    run_id = run_id or new_run_id(config.model)
    try:
        prepared = prepare(config, registry=registry, storage=storage)
    except MlplatError as exc:
        if version is not None:
            _fail_registered(registry, config.model, version, f"{type(exc).__name__}: {exc}")
        raise
    mv = register_for_training(prepared, registry=registry, run_id=run_id, version=version, extra=extra)
    try:
        if on_start is not None:
            on_start(mv)
        fit_result = run_trainer(prepared, storage=storage, run_id=run_id)
        error = getattr(fit_result, "error", None)
        if error is not None:
            raise error
        preferred = fit_result.checkpoint.path if fit_result.checkpoint is not None else None
        return finalize(prepared, registry=registry, storage=storage, run_id=run_id, version=mv.version,
                        preferred_checkpoint=preferred, weights=weights)
    except Exception as exc:
        progress = read_progress(storage, run_id) or {}
        message = f"{type(exc).__name__}: {exc}"
        log.error("training run %s failed: %s\n%s", run_id, message, traceback.format_exc())
        fail_version(registry, config.model, mv.version, message, history=progress.get("history"), resumes=progress.get("resumes"))
        return TrainResult(run_id=run_id, model=config.model, version=mv.version, state=ModelState.FAILED.value,
                           history=progress.get("history", []), error=message, resumes=progress.get("resumes", []))


def _fail_registered(registry: Registry, model: str, version: int, error: str) -> None:
    """A published version whose request cannot even start: REGISTERED -> TRAINING -> FAILED."""
    try:
        mv = registry.get_version(model, version)
        if mv.state == ModelState.REGISTERED:
            registry.transition(model, version, ModelState.TRAINING, expected_state=ModelState.REGISTERED)
            mv = registry.get_version(model, version)
        if mv.state == ModelState.TRAINING:
            registry.transition(model, version, ModelState.FAILED, expected_state=ModelState.TRAINING, error=error[:4000])
    except MlplatError as exc:
        log.warning("could not mark %s v%s FAILED: %s", model, version, exc)
