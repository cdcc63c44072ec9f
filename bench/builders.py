"""Small model versions and feature sets built through the real storage, bundle and registry
paths, shared by the benchmarks and the tests (tests/integration/serving_support.py re-exports
the serving builders; tests/integration/test_validation.py imports the validation ones).

Serving: :func:`register_servable` (a fitted encoder over ``amount``/``age``/``country`` and an
MLP with seeded random weights, walked through the state machine, optionally one of
:data:`FAULTS`). Validation: :func:`validation_table`, :func:`register_feature_set`,
:func:`linear_model`, :func:`register_trained` (a 4-feature linear problem whose true
coefficients are :data:`COEF`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mlplat.features import FeatureEncoder, build_encoder
from mlplat.models import ModelSpec, build_model, save_bundle
from mlplat.records import CATALOG_FEATURE_SET, ModelState

# -- serving ------------------------------------------------------------------------------------

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


# -- validation ---------------------------------------------------------------------------------

FEATURES = ["x0", "x1", "x2", "x3"]
COEF = np.array([1.5, -2.0, 1.0, 0.5], dtype=np.float32)


def validation_table(n: int = 2000, seed: int = 0, validation_fraction: float = 0.5) -> pa.Table:
    """``n`` rows of :data:`FEATURES` with a binary ``label`` and a regression ``target`` drawn
    from the logit ``X @ COEF``, a ``region`` slice column and a ``split`` column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    logit = X @ COEF
    y_bin = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    y_reg = (logit + rng.normal(scale=0.3, size=n)).astype(np.float64)
    cols = {"id": np.arange(n), **{f: X[:, i] for i, f in enumerate(FEATURES)}, "label": y_bin, "target": y_reg,
            "region": np.where(np.arange(n) % 3 == 0, "eu", "us"),
            "split": np.where(rng.random(n) < validation_fraction, "validation", "train")}
    return pa.table(cols)


def register_feature_set(registry, storage, name: str, table: pa.Table, labels: list[str]) -> dict[str, Any]:
    """A ready feature set holding ``table`` in the layout mlplat.features writes; returns its ref."""
    record = registry.catalog_register(CATALOG_FEATURE_SET, name, {"status": "pending", "spec": {}, "source": {"name": "raw", "version": 1},
                                                                    "path": "", "data_path": ""})
    version = record.version
    path = f"features/{name}/v{version}"
    with storage.open_write(path, "data", "part-00000.parquet") as handle:
        pq.write_table(table, handle)
    # The layout mlplat.features writes: a manifest listing the complete data files; a stray file is ignored.
    with storage.open_write(path, "data", "part-stray.parquet") as handle:
        pq.write_table(table.slice(0, 10), handle)
    storage.write_manifest({}, path, data_files={"part-00000.parquet": table.num_rows})
    registry.catalog_update(CATALOG_FEATURE_SET, name, version, {
        "status": "ready", "path": path, "data_path": f"{path}/data", "num_rows": table.num_rows,
        "output_columns": table.schema.names, "feature_columns": FEATURES, "label_columns": labels,
        "entity_key": "id", "split": {"method": "hash"}})
    return {"name": name, "version": version}


def linear_model(weights, bias: float = 0.0) -> torch.nn.Linear:
    """A 4-input linear layer with the given weights."""
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(np.asarray(weights, dtype=np.float32)).reshape(1, 4))
        model.bias.fill_(bias)
    return model


def register_trained(registry, storage, name: str, model, fs: dict[str, Any], task: str = "binary",
                     label: str = "label") -> int:
    """A TRAINED version of ``name`` on feature set ``fs`` with ``model``'s bundle."""
    mv = registry.register_version(name, feature_set=fs)
    ref = save_bundle(storage, name, mv.version, model, spec=ModelSpec(task=task, architecture="linear"),
                      input_columns=FEATURES, label_columns=[label], feature_set=fs)
    registry.update_version(name, mv.version, artifacts={"bundle": ref.model_dump()})
    registry.transition(name, mv.version, ModelState.TRAINING)
    registry.transition(name, mv.version, ModelState.TRAINED)
    return mv.version
