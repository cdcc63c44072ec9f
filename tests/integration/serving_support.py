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


#: Bad versions for rollout tests: weights that do not fit the architecture (the constructor
#: raises at load), NaN weights (NaN outputs), a registry checksum that does not match the
#: bundle, and a version that loads and answers but predicts far from production ("shift").
FAULTS = ("raises", "nan", "checksum", "shift")


def register_servable(registry, storage, name: str, *, task: str = "binary", seed: int = 0, promote: bool = True,
                      placement: str = "pool", hidden: tuple[int, ...] = (16,), fault: str | None = None,
                      serving_policy: dict | None = None, validate: bool = True) -> int:
    """Register a version that walks the real state machine to PRODUCTION (or VALIDATED, or
    only TRAINED with ``validate=False``); ``fault`` makes it one of :data:`FAULTS`."""
    encoder = fitted_encoder(seed)
    spec = ModelSpec(task=task, hidden=list(hidden), num_classes=3 if task == "multiclass" else None)
    torch.manual_seed(seed)
    model = build_model(spec, len(encoder.feature_columns))
    if fault == "nan":
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    elif fault == "shift":
        with torch.no_grad():
            last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.fill_(-8.0)  # sigmoid ~0.0003: far from the seed-1 production (~0.96 on RAW_ROW)
    try:
        registry.get_model(name)
    except Exception:
        registry.create_model(name, task_type=task, serving_policy=serving_policy or {"placement": placement})
    version = registry.register_version(name, code_version=f"seed{seed}").version
    saved_spec = ModelSpec(task=task, hidden=[h + 3 for h in hidden], num_classes=spec.num_classes) if fault == "raises" else spec
    ref = save_bundle(storage, name, version, model, spec=saved_spec, input_columns=encoder.feature_columns,
                      encoder=encoder.to_json())
    if fault == "checksum":
        ref = ref.model_copy(update={"sha256": "0" * 64})
    registry.update_version(name, version, artifacts={"bundle": ref})
    if not validate:
        for state in ("TRAINING", "TRAINED"):
            registry.transition(name, version, state)
        return version
    for state in ("TRAINING", "TRAINED", "VALIDATING", "VALIDATED"):
        registry.transition(name, version, state)
    if promote:
        registry.promote(name, version)
    return version
