"""Batch scoring (offline inference): a dataset in, predictions out as a dataset of kind
``inference`` — each row carries the input keys, the prediction and the model version.

The output is registered ``pending`` before any file is written and flipped to ``ready`` with
its file list at the end, so readers never see a half-written scoring run.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlplat.data import get_dataset, read_dataset
from mlplat.errors import NotFound, ValidationError
from mlplat.models import load_bundle
from mlplat.names import validate_name
from mlplat.records import (
    ALIAS_PRODUCTION,
    CATALOG_DATASET,
    CATALOG_FEATURE_SET,
    STATUS_PENDING,
    STATUS_READY,
    ColumnInfo,
    DatasetKind,
    DatasetVersion,
    ModelVersion,
)
from mlplat.registry import Registry
from mlplat.storage import Storage
from mlplat.validation.inference import BundleRef, predict_dataset

__all__ = ["score", "PREDICTION", "MODEL_COLUMN", "VERSION_COLUMN"]

PREDICTION = "prediction"
MODEL_COLUMN, VERSION_COLUMN = "model", "model_version"


def _resolve(registry: Registry, model: str, version: int | str | None) -> ModelVersion:
    if version is None:
        if registry.get_alias(model, ALIAS_PRODUCTION) is None:
            raise NotFound(f"model {model!r} has no production version; pass a version (e.g. --version 3)")
        version = ALIAS_PRODUCTION
    return registry.resolve(model, version)


def _default_keys(registry: Registry, mv: ModelVersion, columns: Sequence[str]) -> list[str]:
    keys: list[str] = []
    if mv.feature_set is not None:
        try:
            payload = registry.catalog_get(CATALOG_FEATURE_SET, mv.feature_set.name, mv.feature_set.version).payload
            keys = [k for k in (payload.get("entity_key"), payload.get("event_time")) if k]
        except NotFound:
            keys = []
    return [k for k in keys if k in columns]


def score(registry: Registry, storage: Storage, model: str, *, dataset: str, dataset_version: int | None = None,
          version: int | str | None = None, output: str | None = None, keys: Sequence[str] | None = None,
          batch_size: int = 4096, max_actors: int | None = None, executor: str = "auto") -> DatasetVersion:
    """Score ``dataset`` with ``model`` (its production version unless ``version`` is given) and
    register the predictions as dataset ``output`` (default ``<model>-scores``), kind inference."""
    validate_name(model, "model name")
    output = validate_name(output or f"{model}-scores"[:63], "dataset name")
    mv = _resolve(registry, model, version)
    ref = mv.artifacts.get("bundle")
    if ref is None:
        raise NotFound(f"model {model} v{mv.version} has no 'bundle' artifact to score with")
    loaded = load_bundle(storage, model, mv.version, expected_sha256=ref.sha256)  # fail fast on a bad bundle
    dv = get_dataset(registry, dataset, dataset_version)
    columns = [*dv.column_names, *dv.partition_keys]
    keys = list(keys) if keys else _default_keys(registry, mv, columns)
    if not keys:
        raise ValidationError(f"cannot tell which columns of dataset {dataset!r} identify a row; pass keys (--key COLUMN)")
    missing = [k for k in keys if k not in columns]
    if missing:
        raise ValidationError(f"key columns {missing} are not in dataset {dataset!r} (columns: {columns})")
    task = loaded.spec.task

    record = registry.catalog_register(
        CATALOG_DATASET, output,
        {"status": STATUS_PENDING, "kind": DatasetKind.INFERENCE.value, "path": "",
         "source": f"model {model}@v{mv.version} on dataset {dataset}@v{dv.version}"},
        tags=("inference", f"model:{model}"), idempotency_key=f"score-register:{output}:{uuid.uuid4().hex}",
    )
    out_version = record.version
    dest = f"datasets/{output}/v{out_version}"
    try:
        ds = read_dataset(storage, dv)
        preds = predict_dataset(ds, storage, [BundleRef(model, mv.version, ref.sha256, PREDICTION)], keys,
                                batch_size=batch_size, max_actors=max_actors,
                                constants={MODEL_COLUMN: model, VERSION_COLUMN: int(mv.version)},
                                class_ids=task == "multiclass", executor=executor)
        if task == "multiclass":  # class id as "prediction", probabilities beside it
            preds = preds.rename_columns({PREDICTION: "probabilities", f"{PREDICTION}_class": PREDICTION})
        preds.write_parquet(storage.path(dest), filesystem=storage.fs)
        files, columns_info, rows = _written(storage, dest)
    except BaseException as exc:
        registry.catalog_update(CATALOG_DATASET, output, out_version, {"status": "failed", "error": str(exc)[:500]})
        raise
    result = DatasetVersion(
        name=output, version=out_version, kind=DatasetKind.INFERENCE, status=STATUS_READY, path=dest, files=tuple(files),
        columns=columns_info, num_rows=rows, tags=("inference", f"model:{model}"),
        description=f"predictions of {model}@v{mv.version} ({task}) for dataset {dataset}@v{dv.version}",
        source=f"model {model}@v{mv.version} on dataset {dataset}@v{dv.version}",
    )
    saved = registry.catalog_update(CATALOG_DATASET, output, out_version, result.payload(),
                                    idempotency_key=f"score-ready:{output}:v{out_version}")
    return DatasetVersion.from_catalog(saved)


def _written(storage: Storage, dest: str) -> tuple[list[str], tuple[ColumnInfo, ...], int]:
    base = storage.path(dest)
    infos = storage.fs.get_file_info(pafs.FileSelector(base, recursive=True))
    files = sorted(i.path[len(base):].lstrip("/") for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise ValidationError(f"scoring wrote no rows to {storage.uri_of(dest)} (is the input dataset empty?)")
    rows, schema = 0, None
    for f in files:
        meta = pq.read_metadata(f"{base}/{f}", filesystem=storage.fs)
        rows += meta.num_rows
        schema = schema or meta.schema.to_arrow_schema()
    if schema is None:
        raise ValidationError(f"scoring wrote no readable Parquet schema to {storage.uri_of(dest)}")
    columns = tuple(ColumnInfo(name=field.name, type=str(field.type)) for field in schema)
    return files, columns, rows
