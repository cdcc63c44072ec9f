"""Fit encoders on Ray Data, materialize a feature-set version, and load it back.

Fit is one distributed pass: every block yields a small JSON partial of the column statistics
the encoders need (plus the raw-column reference stats), the driver merges them. A source
small against the object store is read into it once for both passes (``cache_if_small``). Materialize
encodes with ``map_batches``, writes Parquet to ``features/<name>/v<N>/data/``, computes the
output reference stats in a second pass over what was written, writes ``encoder.json`` and
``stats.json`` and flips the catalog record to ``ready``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlplat.config import load_config, parse_config
from mlplat.errors import NotFound, ValidationError
from mlplat.features import stats as st
from mlplat.features.encoders import build_encoder
from mlplat.features.feature_encoder import FeatureEncoder
from mlplat.features.splits import SPLIT_COLUMN, split_column
from mlplat.names import validate_name
from mlplat.raydata import approx_bytes, cache_if_small, read_parquet, task_only_execution
from mlplat.records import (
    CATALOG_FEATURE_SET,
    STATUS_PENDING,
    STATUS_READY,
    CatalogEntry,
    DatasetVersion,
    FeatureSetSpec,
    FeatureSetVersion,
)
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = [
    "load_spec",
    "parse_spec",
    "encoder_for_spec",
    "check_spec_against",
    "column_stats_on_ray",
    "fit_on_ray",
    "encode_dataset",
    "materialize",
    "get_feature_set",
    "list_feature_sets",
    "load_encoder",
    "load_stats",
    "read_feature_set",
]


def load_spec(path: str | os.PathLike[str]) -> FeatureSetSpec:
    """Read a feature-set spec YAML; unknown keys are errors naming the key."""
    return load_config(path, FeatureSetSpec)


def parse_spec(data: Mapping[str, Any] | FeatureSetSpec, source: str = "feature-set spec") -> FeatureSetSpec:
    return data if isinstance(data, FeatureSetSpec) else parse_config(data, FeatureSetSpec, source)


def encoder_for_spec(spec: FeatureSetSpec) -> FeatureEncoder:
    """Unfitted encoders of a spec (raises ConfigError on unknown encoders/params)."""
    keep = [spec.entity_key, *([spec.event_time] if spec.event_time else []), *spec.labels]
    encoders = [build_encoder({"type": f.encoder, "column": f.column, "output": f.output, "params": f.params})
                for f in spec.features]
    return FeatureEncoder(encoders, keep=list(dict.fromkeys(keep)), meta={"feature_set": spec.name})


def check_spec_against(spec: FeatureSetSpec, columns: Sequence[str]) -> None:
    missing = [c for c in spec.input_columns() if c not in columns]
    if missing:
        raise ValidationError(f"feature set {spec.name!r}: columns {missing} are not in source dataset "
                              f"{spec.source.dataset!r} (columns: {', '.join(columns)})")


def _raw_kinds(t: pa.DataType) -> set[str]:
    if st.is_numeric_type(t) and not pa.types.is_boolean(t):
        return {"moments", "sketch"}
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t) or pa.types.is_dictionary(t):
        return {"counts"}
    return set()


def _needs(schema: pa.Schema, fe: FeatureEncoder, raw_columns: Sequence[str]) -> dict[str, list[str]]:
    need = {c: set(k) for c, k in fe.requirements(fe.encoders).items()}
    for c in raw_columns:
        if c in schema.names:
            kinds = _raw_kinds(schema.field(c).type)
            if kinds:
                need.setdefault(c, set()).update(kinds)
    for c, kinds in need.items():
        t = schema.field(c).type
        if kinds & {"moments", "sketch"} and not st.is_numeric_type(t):
            raise ValidationError(f"column {c!r} has type {t}; its encoders need a numeric column")
        if "counts" in kinds and pa.types.is_floating(t):
            raise ValidationError(f"column {c!r} has type {t}; categorical encoders need strings, integers or booleans")
    return {c: sorted(k) for c, k in need.items()}


def _partials_fn(need: dict[str, list[str]]):
    def partials(batch: pa.Table) -> pa.Table:
        parts = {c: st.column_partial(batch.column(c), kinds) for c, kinds in need.items()}
        return pa.table({"partial": [json.dumps(parts)]})

    return partials


def column_stats_on_ray(ds: Any, need: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Merged column statistics of a Ray Dataset: one partial per block, merged here."""
    if not need:
        return {}
    partials = ds.select_columns(list(need)).map_batches(_partials_fn(need), batch_format="pyarrow",
                                                         batch_size=None, zero_copy_batch=True)
    with task_only_execution(partials):
        rows = partials.take_all()
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        for c, p in json.loads(row["partial"]).items():
            merged[c] = p if c not in merged else st.merge_partials(merged[c], p)
    return merged


def fit_on_ray(ds: Any, fe: FeatureEncoder, raw_columns: Sequence[str] = ()) -> tuple[FeatureEncoder, dict[str, dict]]:
    """Fit ``fe`` on a Ray Dataset in one distributed pass; returns (fe, merged raw stats)."""
    schema = ds.schema().base_schema
    need = _needs(schema, fe, raw_columns)
    stats = column_stats_on_ray(ds, need)
    if not stats and need:
        raise ValidationError("the source dataset is empty: nothing to fit on")
    return fe.fit_from_stats(stats), stats


def fit_table(table: pa.Table, fe: FeatureEncoder, raw_columns: Sequence[str] = ()) -> tuple[FeatureEncoder, dict[str, dict]]:
    """Single-process twin of :func:`fit_on_ray` (same statistics, same result)."""
    need = _needs(table.schema, fe, raw_columns)
    stats = {c: st.column_partial(table.column(c), kinds) for c, kinds in need.items()}
    return fe.fit_from_stats(stats), stats


def encode_dataset(ds: Any, fe: FeatureEncoder, spec: FeatureSetSpec | None = None, **map_kwargs: Any) -> Any:
    """Encode a Ray Dataset with ``map_batches``; adds the ``split`` column when a spec is given."""
    payload = fe.to_json()

    class _Apply:
        encoder: FeatureEncoder | None = None

    def apply(batch: pa.Table) -> pa.Table:
        if _Apply.encoder is None:  # rebuilt from JSON once per worker process
            _Apply.encoder = FeatureEncoder.from_json(payload)
        out = _Apply.encoder.transform_table(batch)
        if spec is not None and spec.split.method != "none":
            out = out.append_column(SPLIT_COLUMN, split_column(batch, spec.split, spec.entity_key, spec.event_time))
        return out

    return ds.map_batches(apply, batch_format="pyarrow", **map_kwargs)


def materialize(storage: Storage, registry: Registry, spec: FeatureSetSpec, source: DatasetVersion, ds: Any) -> FeatureSetVersion:
    """Fit, encode, write and register a new version of the feature set ``spec.name``.

    ``ds`` is the source dataset (already resolved by the caller, e.g. ``Platform``)."""
    validate_name(spec.name, "feature-set name")
    schema = ds.schema().base_schema
    check_spec_against(spec, schema.names)
    fe = encoder_for_spec(spec)
    raw_columns = list(dict.fromkeys([*fe.input_columns, *spec.labels]))
    ds = cache_if_small(ds, approx_bytes(schema, source.num_rows))  # the fit and the encode pass read it
    fe, raw_stats = fit_on_ray(ds, fe, raw_columns)
    for label in spec.labels:
        s = raw_stats.get(label)
        if s is not None and s["count"] and s["nulls"] == s["count"]:
            raise ValidationError(f"feature set {spec.name!r}: label column {label!r} is all null in "
                                  f"{source.name} v{source.version}")
    record = registry.catalog_register(
        CATALOG_FEATURE_SET, spec.name,
        {"status": STATUS_PENDING, "spec": spec.model_dump(mode="json"),
         "source": source.ref.model_dump(mode="json"), "path": "", "data_path": ""},
        tags=tuple(spec.tags), idempotency_key=f"feature-set-register:{spec.name}:{uuid.uuid4().hex}",
    )
    version = record.version
    base = f"features/{spec.name}/v{version}"
    try:
        fe.meta.update(feature_set=spec.name, version=version, source=source.ref.model_dump(mode="json"))
        files, out_stats, out_schema = write_encoded(storage, f"{base}/data", encode_dataset(ds, fe, spec), fe)
        num_rows = sum(n for _, n in files)
        split_counts = out_stats.get(SPLIT_COLUMN, {}).get("counts", {})
        stats_doc = {
            "feature_set": spec.name, "version": version, "num_rows": num_rows,
            "raw": {c: st.reference_stats(s) for c, s in raw_stats.items()},
            "outputs": {c: st.reference_stats(s) for c, s in out_stats.items() if c != SPLIT_COLUMN},
            "split": split_counts,
        }
        enc_ref = storage.write_json(fe.to_json(), base, "encoder.json")
        stats_ref = storage.write_json(stats_doc, base, "stats.json")
        storage.write_manifest({"encoder.json": enc_ref.sha256, "stats.json": stats_ref.sha256}, base,
                               data_files={f: n for f, n in files})
    except BaseException as exc:
        registry.catalog_update(CATALOG_FEATURE_SET, spec.name, version, {"status": "failed", "error": str(exc)[:500]})
        raise
    fsv = FeatureSetVersion(
        name=spec.name, version=version, status=STATUS_READY, spec=spec.model_dump(mode="json"), source=source.ref,
        path=base, data_path=f"{base}/data", encoder=enc_ref, stats=stats_ref, num_rows=num_rows,
        output_columns=tuple(out_schema), feature_columns=tuple(fe.feature_columns),
        label_columns=tuple(spec.labels), entity_key=spec.entity_key, event_time=spec.event_time,
        split={**spec.split.model_dump(mode="json"), "column": SPLIT_COLUMN, "counts": split_counts},
        tags=tuple(spec.tags),
    )
    saved = registry.catalog_update(CATALOG_FEATURE_SET, spec.name, version, fsv.payload(),
                                    idempotency_key=f"feature-set-ready:{spec.name}:v{version}")
    return FeatureSetVersion.from_catalog(saved)


def write_encoded(storage: Storage, rel_dir: str, encoded: Any, fe: FeatureEncoder):
    """Write every encoded block as its own Parquet file (atomically, via ``storage``) and
    return its reference-stat partials in the same pass: ([(file, rows)], merged stats,
    output column names). One Ray Data execution instead of write + re-read."""
    run = uuid.uuid4().hex[:8]
    feature_columns = set(fe.feature_columns) | {SPLIT_COLUMN}

    def write_block(batch: pa.Table) -> pa.Table:
        name = f"part-{run}-{uuid.uuid4().hex[:12]}.parquet"
        with storage.open_write(*rel_dir.split("/"), name) as handle:
            pq.write_table(batch, handle)
        need = {c: sorted(_raw_kinds(batch.schema.field(c).type)) for c in batch.schema.names if c in feature_columns}
        parts = {c: st.column_partial(batch.column(c), k) for c, k in need.items() if k}
        return pa.table({"file": [name], "rows": [batch.num_rows], "partial": [json.dumps(parts)],
                         "columns": [json.dumps(batch.schema.names)]})

    written = encoded.map_batches(write_block, batch_format="pyarrow", batch_size=None)
    with task_only_execution(written):
        rows = written.take_all()
    if not rows:
        raise ValidationError("the source dataset is empty: nothing to materialize")
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        for c, p in json.loads(row["partial"]).items():
            merged[c] = p if c not in merged else st.merge_partials(merged[c], p)
    return sorted((r["file"], int(r["rows"])) for r in rows), merged, json.loads(rows[0]["columns"])


# -- reads -------------------------------------------------------------------------------


def get_feature_set(registry: Registry, name: str, version: int | None = None) -> FeatureSetVersion:
    """A ready feature-set version (latest ready when ``version`` is None)."""
    validate_name(name, "feature-set name")
    if version is not None:
        fsv = FeatureSetVersion.from_catalog(registry.catalog_get(CATALOG_FEATURE_SET, name, int(version)))
        if fsv.status != STATUS_READY:
            raise NotFound(f"feature set {name!r} v{version} is {fsv.status}, not ready")
        return fsv
    try:
        return FeatureSetVersion.from_catalog(registry.catalog_get(CATALOG_FEATURE_SET, name, status=STATUS_READY))
    except NotFound:
        raise NotFound(f"feature set {name!r} has no ready version; build one with `mlplat features build`") from None


def list_feature_sets(registry: Registry, *, prefix: str | None = None, tag: str | None = None) -> list[FeatureSetVersion]:
    best: dict[str, CatalogEntry] = {}
    for e in registry.catalog_list(CATALOG_FEATURE_SET, prefix=prefix, tag=tag, latest_only=False):
        if e.payload.get("status") == STATUS_READY and (e.name not in best or e.version > best[e.name].version):
            best[e.name] = e
    return [FeatureSetVersion.from_catalog(best[n]) for n in sorted(best)]


def load_encoder(storage: Storage, fsv: FeatureSetVersion) -> FeatureEncoder:
    """The fitted encoder of a version, checked against its recorded sha256."""
    storage.verify_manifest(*fsv.path.split("/"))
    return FeatureEncoder.from_json(storage.read_json(*fsv.path.split("/"), "encoder.json"))


def load_stats(storage: Storage, fsv: FeatureSetVersion) -> dict[str, Any]:
    return storage.read_json(*fsv.path.split("/"), "stats.json")


def read_feature_set(storage: Storage, fsv: FeatureSetVersion, split: str | None = None) -> Any:
    """The materialized rows as a ``ray.data.Dataset`` (optionally one split)."""
    manifest = storage.verify_manifest(*fsv.path.split("/"))
    files = sorted(manifest.get("data_files") or {})
    if not files:
        raise NotFound(f"feature set {fsv.name!r} v{fsv.version} lists no data files")
    ds = read_parquet([storage.path(fsv.data_path, f) for f in files], filesystem=storage.fs)
    if split is not None:
        import pyarrow.compute as pc

        ds = ds.map_batches(lambda b: b.filter(pc.equal(b.column(SPLIT_COLUMN), split)), batch_format="pyarrow")
    return ds

