"""The training request: a strict config loaded from ``configs/train-*.yaml``.

Everything that decides what gets trained lives here, so a config hash identifies a
training recipe (see :func:`config_hash`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlplat.config import StrictModel, load_config, parse_config
from mlplat.errors import ConfigError
from mlplat.models import ModelSpec
from mlplat.names import NAME_PATTERN

__all__ = [
    "FeatureSetSelector",
    "EarlyStopping",
    "HyperParams",
    "ScalingSpec",
    "FailureSpec",
    "CheckpointSpec",
    "PerformanceSpec",
    "SearchSpec",
    "TrainingConfig",
    "load_training_config",
    "parse_training_config",
    "config_hash",
    "apply_overrides",
]


class FeatureSetSelector(StrictModel):
    """Which materialized feature set to train on; the latest ready version when unset."""

    name: str = Field(pattern=NAME_PATTERN.pattern)
    version: int | None = Field(None, ge=1)


class EarlyStopping(StrictModel):
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs."""

    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class HyperParams(StrictModel):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)


class ScalingSpec(StrictModel):
    """``resources_per_worker`` unset = automatic: leaves a CPU free for the Ray Data stage that
    feeds the workers (on 2 CPUs, 2 workers get 0.5 CPU each: ray-2.60-notes.md, 2-CPU hang)."""

    num_workers: int = Field(1, ge=1, le=1024)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    allow_cpu_fallback: bool = False

    @field_validator("resources_per_worker")
    @classmethod
    def _non_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            bad = {k: v for k, v in value.items() if v < 0}
            if bad:
                raise ValueError(f"resources must be >= 0, got {bad}")
        return value


class FailureSpec(StrictModel):
    max_failures: int = Field(1, ge=-1)


class CheckpointSpec(StrictModel):
    """Checkpoints kept per run; at least 2 so a corrupted latest one has a fallback."""

    keep: int = Field(2, ge=1)


class PerformanceSpec(StrictModel):
    """How each training step runs on its device. None of these changes what is trained (the
    same batches, the same updates), so none enters :func:`config_hash`.

    - ``ddp_bucket_cap_mb``: DDP's gradient bucket size in MiB (None: DDP's default, 25). Smaller
      buckets start the all-reduce earlier in the backward pass (more overlap, more calls).
    - ``ddp_static_graph``: tell DDP every step uses the same parameters (it then skips its
      per-step search for unused ones). None: on for the zoo's models, off for ``custom``.
    - ``fused_optimizer``: on CUDA, Adam/AdamW/SGD run their fused kernel (one launch per step
      instead of a few per parameter tensor); no effect on CPU.
    - ``cuda_graphs``: on CUDA (one worker, or several with ``grad_sync`` flat), the whole step
      (forward, backward, all-reduce, optimizer) is captured once per batch shape as a CUDA graph
      and replayed per batch: no Python or launch cost per kernel. Each epoch's last, partial
      batch gets a graph of its own the first time it comes (up to 4 shapes; past those a batch
      steps eagerly), so every row is trained on as without graphs. ``auto`` (the default): on for the zoo's models (``mlp``, ``linear``),
      whose steps have a fixed kernel sequence; off for ``custom`` modules, whose Python may
      branch per step (a replay would repeat the captured branch). ``true``: also for
      ``custom``. Under DDP or on CPU the step runs eagerly (with ``true``, the run's progress
      notes say so); a capture that fails falls back to eager steps, noted the same way.
    - ``grad_sync``: how workers average gradients. ``ddp``: PyTorch DDP (buckets all-reduced
      during the backward pass). ``flat``: after the backward pass the gradients are gathered into
      one flat buffer (one kernel) and averaged by one all-reduce (DDP's per-step Python and hook
      cost is most of a small model's step). ``auto``: ``flat`` when the
      parameters fit in one DDP bucket (``ddp_bucket_cap_mb``, 25 MiB by default: DDP would not
      overlap them with the backward pass either), share one dtype and the model has no buffers
      (DDP would broadcast those every step); else ``ddp``.
    - ``capture_grad_sync``: with ``flat`` on CUDA and eager steps, the all-reduce of the flat
      gradient buffer is captured once as a CUDA graph (after 3 eager steps) and replayed every
      step: the NCCL call's ~0.2 ms of host time becomes a few microseconds. A failed capture
      falls back to eager all-reduces and the run's progress notes say so.
    - ``capture_optimizer``: on CUDA with eager steps (one worker, or several with ``flat``),
      the optimizer update joins that graph (gradients go through the flat buffer on one worker
      too; the optimizer is built ``capturable``): its per-step Python becomes part of one
      replay. Off by default: it has not been timed on a GPU yet.
    - ``profile_steps``: rank 0 records that many steps of its first epoch with
      ``torch.profiler`` and writes a Chrome trace and a top-kernels table under
      ``runs/<run-id>/profile/`` (0: off). The profiled epoch runs slower; its ``epoch_s`` says so.
    """

    ddp_bucket_cap_mb: float | None = Field(None, gt=0)
    ddp_static_graph: bool | None = None
    fused_optimizer: bool = True
    cuda_graphs: bool | Literal["auto"] = "auto"
    profile_steps: int = Field(0, ge=0, le=10_000)
    grad_sync: Literal["auto", "ddp", "flat"] = "auto"
    capture_grad_sync: bool = True
    capture_optimizer: bool = False


class SearchSpec(StrictModel):
    """A Tune sweep. ``space`` maps dotted config keys to a distribution, e.g.
    ``hyperparameters.lr: {loguniform: [1.0e-4, 1.0e-1]}`` or ``hyperparameters.batch_size: {choice: [16, 32]}``.
    Distributions: choice, grid, uniform, loguniform, randint, quniform."""

    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    num_samples: int = Field(2, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str | None = None  # default: hyperparameters.early_stopping.metric
    mode: Literal["min", "max"] | None = None
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    seed: int | None = 0

    @field_validator("space")
    @classmethod
    def _distributions(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, dist in space.items():
            if not key.startswith(("hyperparameters.", "spec.")):
                raise ValueError(f"search key {key!r}: only 'hyperparameters.*' and 'spec.*' can be searched")
            if len(dist) != 1 or next(iter(dist)) not in _DISTRIBUTIONS:
                raise ValueError(f"search key {key!r}: expected one of {sorted(_DISTRIBUTIONS)} as the only key, got {dist}")
            kind, args = next(iter(dist.items()))
            if kind in ("choice", "grid"):
                if not isinstance(args, list) or not args:
                    raise ValueError(f"search key {key!r}: {kind} needs a non-empty list")
            elif not isinstance(args, list) or len(args) != _DISTRIBUTIONS[kind]:
                raise ValueError(f"search key {key!r}: {kind} needs a list of {_DISTRIBUTIONS[kind]} numbers")
        return space


_DISTRIBUTIONS = {"choice": 0, "grid": 0, "uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}


class TrainingConfig(StrictModel):
    """One training request (see docs/training.md for every key)."""

    model: str = Field(pattern=NAME_PATTERN.pattern)
    spec: ModelSpec
    feature_set: FeatureSetSelector
    label: str | None = None  # default: the feature set's first label column
    code_version: str | None = None
    description: str = ""
    hyperparameters: HyperParams = Field(default_factory=HyperParams)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    search: SearchSpec | None = None

    @model_validator(mode="after")
    def _metric_known(self) -> TrainingConfig:
        metric = self.hyperparameters.early_stopping.metric
        known = {"val_loss", "train_loss", "val_accuracy"}
        if metric not in known:
            raise ValueError(f"hyperparameters.early_stopping.metric {metric!r}: expected one of {sorted(known)}")
        if metric == "val_accuracy" and self.spec.task == "regression":
            raise ValueError("hyperparameters.early_stopping.metric 'val_accuracy' needs a binary or multiclass task")
        return self

    @property
    def metric(self) -> str:
        return (self.search.metric if self.search and self.search.metric else None) or self.hyperparameters.early_stopping.metric

    @property
    def mode(self) -> str:
        return (self.search.mode if self.search and self.search.mode else None) or self.hyperparameters.early_stopping.mode


def load_training_config(path: str | os.PathLike[str]) -> TrainingConfig:
    """Load ``configs/train-*.yaml``; ConfigError names each bad key."""
    return load_config(path, TrainingConfig)


def parse_training_config(data: TrainingConfig | Mapping[str, Any], source: str = "training config") -> TrainingConfig:
    if isinstance(data, TrainingConfig):
        return data
    return parse_config(data, TrainingConfig, source=source)


def config_hash(config: TrainingConfig) -> str:
    """sha256 of the recipe: canonical JSON of the config without ``search``, ``description``
    and ``performance`` (code is identified by ``code_version``, recorded separately). The
    ``performance`` settings change how fast a step runs, not what it computes, so configs written
    before the section existed keep their hash."""
    data = config.model_dump(mode="json", exclude={"search", "description", "code_version", "performance"})
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def apply_overrides(config: TrainingConfig, overrides: Mapping[str, Any]) -> TrainingConfig:
    """A copy of ``config`` with dotted keys replaced (``hyperparameters.lr: 0.01``), re-validated."""
    data = copy.deepcopy(config.model_dump(mode="json"))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        target = data
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section of the training config")
            target = target[part]
        target[leaf] = value
    return parse_config(data, TrainingConfig, source="training config (with overrides)")
