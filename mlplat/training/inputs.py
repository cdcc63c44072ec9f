"""What a run trains on: a materialized feature-set version, resolved from the registry catalog,
and the Ray Datasets that feed each worker its shard.

A feature set is Parquet under ``features/<name>/v<N>/data/`` with a split column, an
``encoder.json`` and a catalog entry (:class:`mlplat.records.FeatureSetVersion`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlplat.errors import ConfigError, NotFound, ValidationError
from mlplat.raydata import cache_if_small, read_parquet
from mlplat.records import DatasetRef, FeatureSetRef, FeatureSetVersion
from mlplat.records.data import CATALOG_FEATURE_SET, STATUS_READY
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = ["TrainingData", "resolve_training_data", "make_datasets", "pack_batch", "SPLIT_COLUMN", "TRAIN", "VALIDATION"]

SPLIT_COLUMN = "split"
TRAIN = "train"
VALIDATION = "validation"


@dataclass(frozen=True)
class TrainingData:
    """A resolved feature set: where its rows are and which columns feed the model."""

    feature_set: FeatureSetRef
    datasets: tuple[DatasetRef, ...]
    data_path: str  # relative to the storage root
    feature_columns: tuple[str, ...]
    label: str
    split_column: str | None
    encoder: dict[str, Any] | None = None
    num_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return len(self.feature_columns)


def resolve_training_data(registry: Registry, storage: Storage, name: str, version: int | None, label: str | None) -> TrainingData:
    """Look the feature set up in the catalog and check it can train a model.

    Raises NotFound (no such feature set / version, or not ready) and ConfigError (no label,
    unknown label, no feature columns)."""
    try:
        record = registry.catalog_get(CATALOG_FEATURE_SET, name, version)
    except NotFound:
        which = f"version {version}" if version else "any version"
        raise NotFound(f"feature set {name!r} has no {which} in the catalog; build it with `mlplat features build`") from None
    fs = FeatureSetVersion.from_catalog(record)
    if fs.status != STATUS_READY:
        raise NotFound(f"feature set {name!r} v{fs.version} is {fs.status!r}, not ready: its files are not all written yet")
    labels = list(fs.label_columns)
    if label is None:
        if not labels:
            raise ConfigError(f"feature set {name!r} v{fs.version} has no label column; training needs one "
                              "(add `labels:` to the feature-set spec, or set `label:` in the training config)")
        label = labels[0]
    elif label not in labels and label not in fs.output_columns:
        raise ConfigError(f"label {label!r} is not a column of feature set {name!r} v{fs.version}; "
                          f"its label columns are {labels or 'none'}")
    features = [c for c in fs.feature_columns if c != label]
    if not features:
        raise ConfigError(f"feature set {name!r} v{fs.version} has no feature columns to train on")
    encoder = None
    if fs.encoder is not None:
        try:
            encoder = storage.read_json(fs.encoder.path)
        except NotFound:
            encoder = None
    split_column = fs.split.get("column", SPLIT_COLUMN) if fs.split.get("method", "hash") != "none" else None
    return TrainingData(feature_set=fs.ref, datasets=(fs.source,), data_path=fs.data_path, feature_columns=tuple(features),
                        label=label, split_column=split_column, encoder=encoder, num_rows=fs.num_rows)


def pack_batch(batch: dict[str, Any], feature_columns: tuple[str, ...], label: str, integer_label: bool) -> dict[str, Any]:
    """A numpy batch of feature columns -> ``{"x": float32 (n, d), "y": float32 (n,) | int64 (n,)}``."""
    import numpy as np

    x = np.column_stack([np.asarray(batch[c], dtype=np.float32) for c in feature_columns])
    y = np.asarray(batch[label])
    if y.dtype == object:
        raise ValidationError(f"label column {label!r} is not numeric (got {y[:3]!r}...): encode it in the feature set")
    y = y.astype(np.int64 if integer_label else np.float32)
    return {"x": x, "y": y}


def make_datasets(storage: Storage, data: TrainingData, task: str, materialize: bool | None = None) -> dict[str, Any]:
    """``{"train": ds, "validation": ds}`` (validation may be missing) as Ray Datasets: streamed,
    or materialized first when small (``materialize=None``: up to ``raydata.materialize_limit``)."""
    import pyarrow.dataset as pads
    from ray.data.expressions import col, lit

    path = storage.path(data.data_path)
    columns = [*data.feature_columns, data.label]
    try:
        schema_names = set(pads.dataset(path, filesystem=storage.fs, format="parquet", partitioning="hive").schema.names)
    except (OSError, ValueError) as exc:
        raise NotFound(f"feature set {data.feature_set.name} v{data.feature_set.version}: cannot read {storage.uri_of(data.data_path)}: {exc}") from None
    missing = [c for c in columns if c not in schema_names]
    if missing:
        raise ConfigError(f"feature set {data.feature_set.name} v{data.feature_set.version} lacks column(s) {missing} "
                          f"(label {data.label!r}); it has {sorted(schema_names)}")
    pack_args = (data.feature_columns, data.label, task == "multiclass")

    split_column = data.split_column

    def read(split: str | None) -> Any:
        ds = read_parquet(path, filesystem=storage.fs)
        if split is not None and split_column is not None:
            ds = ds.filter(expr=col(split_column) == lit(split))
        ds = ds.select_columns(columns)
        return ds.map_batches(pack_batch, batch_format="numpy", fn_args=pack_args)

    if data.split_column and data.split_column in schema_names:
        out = {TRAIN: read(TRAIN), VALIDATION: read(VALIDATION)}
    else:
        out = {TRAIN: read(None)}
    if materialize is False:
        return out
    # Small feature sets: read once into the object store, so each epoch only splits blocks (no
    # per-epoch read tasks competing with the workers for CPUs). Packed size: float32 features and
    # the label, counted at 8 bytes a value.
    packed_bytes = data.num_rows * (len(columns) + 1) * 8
    return {k: cache_if_small(v, packed_bytes, always=bool(materialize)) for k, v in out.items()}
