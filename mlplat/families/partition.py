"""Rows of a feature-set split grouped by entity across Ray tasks: a two-stage shuffle in Ray core.

Stage 1: one task per data file reads the split's rows (only the needed columns) and cuts them
into ``partitions`` tables by a stable hash of the entity. Stage 2: one task per partition gets
its table from every file, so each entity's rows meet in exactly one task, which fits (or
scores) that partition's entities one after another.

Why not ``Dataset.groupby().map_groups()``: on 2 CPUs its hash shuffle spent 6-9 s on 500 tiny
groups before any fit ran (aggregator actors and per-group batches), where these two waves of
plain tasks cost well under a second; the tasks still spread over every node of a cluster, and
each stage-2 task holds only its partition (docs/families.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mlplat.errors import NotFound
from mlplat.storage import Storage

__all__ = ["default_partitions", "data_files", "run_by_entity"]


def default_partitions(num_entities_hint: int | None = None) -> int:
    """Two partitions per CPU of the cluster (so a slow partition does not idle the others)."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    parts = 2 * cpus
    return max(1, min(parts, num_entities_hint)) if num_entities_hint else parts


def data_files(storage: Storage, data_dir: str, files: Sequence[str]) -> list[str]:
    """The Parquet files to read (relative to the root): the manifest's, else every file under ``data_dir``."""
    if files:
        return list(files)
    import pyarrow.dataset as pads

    try:
        found = pads.dataset(storage.path(data_dir), filesystem=storage.fs, format="parquet", partitioning="hive").files
    except (FileNotFoundError, OSError) as exc:
        raise NotFound(f"feature-set data {storage.uri_of(data_dir)} cannot be read: {exc}") from None
    root = storage.path()
    return [f[len(root):].lstrip("/") if f.startswith(root) else f for f in found]


def _split_file(storage: Storage, path: str, columns: list[str], split_column: str | None, split_value: str | None,
                entity_column: str, partitions: int) -> Any:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mlplat.features.encoders import stable_hash

    filters = [(split_column, "==", split_value)] if split_column and split_value else None
    table = pq.read_table(storage.path(path), filesystem=storage.fs, columns=columns, filters=filters)
    keys = table.column(entity_column).combine_chunks()
    encoded = pc.cast(keys, pa.string()).dictionary_encode()
    slots = np.array([stable_hash(str(v)) % partitions for v in encoded.dictionary.to_pylist()], dtype=np.int64)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    where = slots[indices.astype(np.int64)] if len(slots) else np.zeros(table.num_rows, dtype=np.int64)
    # Null entity values have a null index: slot 0 (they are skipped with a reason there).
    if encoded.indices.null_count:
        where = np.where(encoded.indices.is_null().to_numpy(zero_copy_only=False), 0, where)
    parts = tuple(table.take(pa.array(np.flatnonzero(where == p))) for p in range(partitions))
    return parts if partitions > 1 else parts[0]


def _run_partition(fn: Callable[..., list[Any]], kwargs: dict[str, Any], *tables: Any) -> list[Any]:
    import pyarrow as pa

    frame = pa.concat_tables(tables).to_pandas()
    return fn(frame, **kwargs)


def run_by_entity(storage: Storage, files: Sequence[str], *, columns: Sequence[str], entity_column: str,
                  split_column: str | None, split_value: str | None, partitions: int,
                  fn: Callable[..., list[Any]], fn_kwargs: dict[str, Any]) -> list[Any]:
    """``fn(frame, **fn_kwargs)`` once per partition (a pandas frame holding whole entities);
    returns the concatenated results. Must run where Ray is initialized."""
    import ray

    split_task = ray.remote(num_cpus=1)(_split_file).options(num_returns=partitions, name="family-partition")
    cols = list(dict.fromkeys([entity_column, *columns]))
    returned: list[Any] = [split_task.remote(storage, f, cols, split_column, split_value, entity_column, partitions) for f in files]
    # num_returns=1 gives one ref, not a list of one
    pieces: list[list[Any]] = [[r] if partitions == 1 else list(r) for r in returned]
    part_task = ray.remote(num_cpus=1)(_run_partition).options(name="family-fit")
    kwargs_ref = ray.put(fn_kwargs)
    pending = [part_task.remote(fn, kwargs_ref, *[piece[p] for piece in pieces]) for p in range(partitions)]
    out: list[Any] = []
    for result in ray.get(pending):
        out.extend(result)
    return out
