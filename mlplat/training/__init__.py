"""Training (layer 3): Ray Train runs from a strict config, checkpoints with manifests, a durable
run queue with a scheduler, and Ray Tune sweeps. See docs/training.md."""

from mlplat.training.config import (
    CheckpointSpec,
    EarlyStopping,
    FailureSpec,
    FeatureSetSelector,
    HyperParams,
    ScalingSpec,
    SearchSpec,
    TrainingConfig,
    apply_overrides,
    config_hash,
    load_training_config,
    parse_training_config,
)
from mlplat.training.runner import TrainingFailed, TrainResult, new_run_id, read_progress, train

__all__ = [
    "TrainingConfig",
    "HyperParams",
    "EarlyStopping",
    "ScalingSpec",
    "FailureSpec",
    "CheckpointSpec",
    "SearchSpec",
    "FeatureSetSelector",
    "load_training_config",
    "parse_training_config",
    "config_hash",
    "apply_overrides",
    "train",
    "TrainResult",
    "TrainingFailed",
    "new_run_id",
    "read_progress",
]
