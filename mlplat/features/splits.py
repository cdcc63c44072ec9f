"""Reproducible train/validation splits: by a stable hash of the entity key, or by time.

Pure pyarrow; the same function labels a Ray Data batch and a single row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import ValidationError
from mlplat.features.encoders import stable_hash
from mlplat.records import SplitSpec

__all__ = ["TRAIN", "VALIDATION", "split_column", "split_of", "SPLIT_COLUMN"]

TRAIN, VALIDATION = "train", "validation"
SPLIT_COLUMN = "split"
_RESOLUTION = 1_000_000


def _is_validation(key: Any, spec: SplitSpec) -> bool:
    return stable_hash(str(key), spec.salt) % _RESOLUTION < spec.validation_fraction * _RESOLUTION


def _cutoff_scalar(spec: SplitSpec, type_: pa.DataType) -> pa.Scalar:
    text = str(spec.cutoff)
    try:
        if pa.types.is_timestamp(type_):
            value = dt.datetime.fromisoformat(text)
            if type_.tz and value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            return pa.scalar(value, type_)
        if pa.types.is_date(type_):
            return pa.scalar(dt.date.fromisoformat(text[:10]), type_)
        if pa.types.is_integer(type_) or pa.types.is_floating(type_):
            return pa.scalar(float(text), pa.float64())
    except ValueError:
        raise ValidationError(f"split.cutoff {text!r} cannot be compared with event times of type {type_}") from None
    return pa.scalar(text, pa.string())


def split_column(table: pa.Table | pa.RecordBatch, spec: SplitSpec, entity_key: str, event_time: str | None) -> pa.Array:
    """``train``/``validation`` for every row of ``table``."""
    n = table.num_rows
    if spec.method == "none":
        return pa.array([TRAIN] * n, pa.string())
    if spec.method == "hash":
        keys = table.column(entity_key)
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        encoded = pc.cast(keys, pa.string()).dictionary_encode()
        flags = pa.array([_is_validation(k, spec) for k in encoded.dictionary.to_pylist()], pa.bool_())
        is_val = pc.take(flags, encoded.indices) if len(flags) else pa.nulls(n, pa.bool_())
    else:
        if not event_time:
            raise ValidationError("split.method 'time' needs the spec's event_time column")
        times = table.column(event_time)
        cutoff = _cutoff_scalar(spec, times.type)
        if cutoff.type == pa.float64():
            times = pc.cast(times, pa.float64())
        elif cutoff.type == pa.string():
            times = pc.cast(times, pa.string())
        is_val = pc.greater_equal(times, cutoff)
    return pc.if_else(pc.fill_null(is_val, False), pa.scalar(VALIDATION), pa.scalar(TRAIN))


def split_of(row: dict[str, Any], spec: SplitSpec, entity_key: str, event_time: str | None) -> str:
    """The split of one row (same answer as :func:`split_column`)."""
    table = pa.Table.from_pylist([{k: row[k] for k in (entity_key, event_time) if k}])
    return split_column(table, spec, entity_key, event_time)[0].as_py()
