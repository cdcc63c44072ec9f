"""Point-in-time joins: attach to each label event the latest feature row of the same entity
whose timestamp is at or before the event time — never a future value.

:func:`pit_join_tables` is the in-process kernel (pandas ``merge_asof``, backward, exact
matches allowed). :func:`pit_join` distributes it on Ray Data: both sides get a stable hash
bucket of the entity key, are unioned, grouped by bucket, and every bucket runs the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import ValidationError
from mlplat.features.encoders import stable_hash

__all__ = ["pit_join_tables", "pit_join", "FEATURE_TIME_COLUMN"]

#: Output column holding the timestamp of the feature row that was attached.
FEATURE_TIME_COLUMN = "feature_time"
_T, _SIDE, _BUCKET = "__pit_t", "__pit_side", "__pit_bucket"


def _time_key(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        tz = t.tz if pa.types.is_timestamp(t) else None
        return pc.cast(pc.cast(col, pa.timestamp("us", tz=tz)), pa.int64())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.cast(col, pa.float64())
    raise ValidationError(f"event time column of type {t} is not a timestamp, date or number")


def _check_columns(schema: pa.Schema, needed: Sequence[str], side: str) -> None:
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise ValidationError(f"{side} lack columns {missing} needed for the point-in-time join")


def pit_join_tables(labels: pa.Table, features: pa.Table, entity_key: str, label_time: str, feature_time: str,
                    feature_columns: Sequence[str] | None = None) -> pa.Table:
    """Each label row plus the feature columns of the latest feature row with the same
    ``entity_key`` and ``feature_time <= label_time`` (nulls where there is none). Adds
    ``feature_time`` (the timestamp of the attached row). Row order follows label time."""
    import pandas as pd

    _check_columns(labels.schema, [entity_key, label_time], "label events")
    _check_columns(features.schema, [entity_key, feature_time], "feature rows")
    if feature_columns is None:
        feature_columns = [c for c in features.schema.names if c not in (entity_key, feature_time)]
    clash = [c for c in feature_columns if c in labels.schema.names]
    if clash:
        raise ValidationError(f"feature columns {clash} also exist in the label events; rename one side")
    lk, fk = _time_key(labels.column(label_time)), _time_key(features.column(feature_time))
    if lk.type != fk.type:
        raise ValidationError(f"label time {label_time!r} and feature time {feature_time!r} are not comparable "
                              f"({labels.schema.field(label_time).type} vs {features.schema.field(feature_time).type})")
    key_type = labels.schema.field(entity_key).type
    left = labels.append_column(_T, lk)
    right = pa.table({entity_key: pc.cast(features.column(entity_key), key_type), _T: fk,
                      FEATURE_TIME_COLUMN: features.column(feature_time),
                      **{c: features.column(c) for c in feature_columns}})
    right = right.filter(pc.and_(pc.is_valid(right.column(_T)), pc.is_valid(right.column(entity_key))))
    ldf = left.to_pandas().sort_values(_T, kind="stable")
    rdf = right.to_pandas().sort_values(_T, kind="stable")
    valid = ldf[_T].notna()
    merged = pd.merge_asof(ldf[valid], rdf, on=_T, by=entity_key, direction="backward", allow_exact_matches=True)
    if (~valid).any():
        merged = pd.concat([merged, ldf[~valid]], ignore_index=True)
    merged = merged.drop(columns=[_T])
    out = pa.Table.from_pandas(merged, preserve_index=False)
    # keep the original Arrow types where pandas widened them (ints with nulls -> float)
    target = {**{f.name: f.type for f in labels.schema}, FEATURE_TIME_COLUMN: features.schema.field(feature_time).type,
              **{c: features.schema.field(c).type for c in feature_columns}}
    cols = [c for c in out.schema.names if c in target]
    return pa.table({c: _cast_back(out.column(c), target[c]) for c in cols})


def _cast_back(col: pa.ChunkedArray, t: pa.DataType) -> pa.ChunkedArray:
    if col.type == t:
        return col
    try:
        return pc.cast(col, t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return col


def _bucket_of(col: pa.Array | pa.ChunkedArray, n: int) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    enc = pc.cast(col, pa.string()).dictionary_encode()
    buckets = pa.array([stable_hash(k) % n for k in enc.dictionary.to_pylist()], pa.int64())
    return pc.take(buckets, enc.indices).fill_null(0) if len(buckets) else pa.array([0] * len(col), pa.int64())


def pit_join(labels: Any, features: Any, entity_key: str, label_time: str, feature_time: str, *,
             num_partitions: int = 8, feature_columns: Sequence[str] | None = None) -> Any:
    """Distributed point-in-time join of two ``ray.data.Dataset`` (see module doc)."""
    lschema = labels.schema().base_schema
    fschema = features.schema().base_schema
    _check_columns(lschema, [entity_key, label_time], "label events")
    _check_columns(fschema, [entity_key, feature_time], "feature rows")
    if feature_columns is None:
        feature_columns = [c for c in fschema.names if c not in (entity_key, feature_time)]
    feature_columns = list(feature_columns)
    # The union needs one schema: label columns, then feature columns under a prefix.
    fcols = {c: f"__pit_f_{c}" for c in [feature_time, *feature_columns]}
    all_fields = [pa.field(_BUCKET, pa.int64()), pa.field(_SIDE, pa.int8())]
    all_fields += list(lschema)
    all_fields += [pa.field(fcols[c], fschema.field(c).type) for c in fcols]
    schema = pa.schema(all_fields)
    key_type = lschema.field(entity_key).type
    n = max(1, int(num_partitions))

    def tag_labels(batch: pa.Table) -> pa.Table:
        cols = {_BUCKET: _bucket_of(batch.column(entity_key), n), _SIDE: pa.array([0] * batch.num_rows, pa.int8())}
        for f in schema:
            if f.name not in cols:
                cols[f.name] = batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
        return pa.table(cols, schema=schema)

    def tag_features(batch: pa.Table) -> pa.Table:
        key = pc.cast(batch.column(entity_key), key_type)
        cols = {_BUCKET: _bucket_of(key, n), _SIDE: pa.array([1] * batch.num_rows, pa.int8())}
        for f in schema:
            if f.name in cols:
                continue
            if f.name == entity_key:
                cols[f.name] = key
            elif f.name.startswith("__pit_f_"):
                cols[f.name] = batch.column(f.name.removeprefix("__pit_f_"))
            else:
                cols[f.name] = pa.nulls(batch.num_rows, f.type)
        return pa.table(cols, schema=schema)

    label_names = list(lschema.names)

    def join_bucket(group: pa.Table) -> pa.Table:
        side = group.column(_SIDE)
        left = group.filter(pc.equal(side, 0)).select(label_names)
        right_raw = group.filter(pc.equal(side, 1))
        right = pa.table({entity_key: right_raw.column(entity_key),
                          **{c: right_raw.column(fcols[c]) for c in fcols}})
        if left.num_rows == 0:
            return pa.table({**{c: pa.array([], lschema.field(c).type) for c in label_names},
                             FEATURE_TIME_COLUMN: pa.array([], fschema.field(feature_time).type),
                             **{c: pa.array([], fschema.field(c).type) for c in feature_columns}})
        return pit_join_tables(left, right, entity_key, label_time, feature_time, feature_columns)

    tagged = labels.map_batches(tag_labels, batch_format="pyarrow").union(
        features.map_batches(tag_features, batch_format="pyarrow"))
    return tagged.groupby(_BUCKET).map_groups(join_bucket, batch_format="pyarrow")
