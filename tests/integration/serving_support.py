"""Build small servable model versions through the real storage, bundle and registry paths."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from mlplat.features import FeatureEncoder, build_encoder
from mlplat.models import ModelSpec, build_model, save_bundle

ENCODER_SPECS = [
    {"type": "standardize", "column": "amount"},
    {"type": "impute", "column": "age", "params": {"strategy": "mean"}},
    {"type": "onehot", "column": "country"},
]
RAW_ROW = {"amount": 12.5, "age": 31, "country": "fr"}


def fitted_encoder(seed: int = 0) -> FeatureEncoder:
    rng = np.random.default_rng(seed)
    n = 200
    table = pa.table({
        "amount": rng.normal(10, 3, n),
        "age": rng.integers(18, 80, n).astype(float),
        "country": rng.choice(["fr", "de", "us"], n),
    })
    return FeatureEncoder([build_encoder(s) for s in ENCODER_SPECS]).fit_table(table)


def register_servable(registry, storage, name: str, *, task: str = "binary", seed: int = 0, promote: bool = True,
                      placement: str = "pool", hidden: tuple[int, ...] = (16,)) -> int:
    """Register a version that walks the real state machine to PRODUCTION (or VALIDATED)."""
    encoder = fitted_encoder(seed)
    spec = ModelSpec(task=task, hidden=list(hidden), num_classes=3 if task == "multiclass" else None)
    torch.manual_seed(seed)
    model = build_model(spec, len(encoder.feature_columns))
    try:
        registry.get_model(name)
    except Exception:
        registry.create_model(name, task_type=task, serving_policy={"placement": placement})
    version = registry.register_version(name, code_version=f"seed{seed}").version
    ref = save_bundle(storage, name, version, model, spec=spec, input_columns=encoder.feature_columns,
                      encoder=encoder.to_json())
    registry.update_version(name, version, artifacts={"bundle": ref})
    for state in ("TRAINING", "TRAINED", "VALIDATING", "VALIDATED"):
        registry.transition(name, version, state)
    if promote:
        registry.promote(name, version)
    return version
