"""How the platform reads Parquet into Ray Data and runs task-only pipelines.

Ray Data 2.60 defaults that cost the platform's own pipelines real time on small clusters
(measured on the 2-core CI box; ``docs/data.md`` and ``docs/validation.md`` have the numbers):

- **Reader.** The default Parquet reader (V2) lists the files in a task that first starts a
  ``FooterReader`` actor, a new worker process: ~0.9 s before the first block of every read
  on the 2-core box, against ~2 s for the whole bare-torch run of the validation benchmark.
  The V1 reader (``DataContext.use_datasource_v2 = False``) has no such start-up. Asked for
  :data:`MIN_BLOCKS_PER_CPU` blocks per CPU (``override_num_blocks``; left to itself it made
  200 tiny read tasks) it ran both benchmark workloads faster than V2: validation's 1M rows
  in 1.4-1.7 s instead of 2.1 s, the 10M-row feature build in 6.3 s instead of 7.0 s.
  :func:`read_parquet` uses it unless the operator exported ``RAY_DATA_USE_DATASOURCE_V2``
  (a caller's own ``override_num_blocks`` wins). The block count has to be passed with the
  read: Ray sizes V1 reads from the driver's global ``DataContext`` when the plan executes,
  not from the Dataset's copy.
- **V2 read units and footer readers** (when V2 is chosen): V2 bin-packs row groups into
  128 MiB read tasks (an 8-file table became 3 tasks of 1, 2 and 5 files, one core idle) and
  starts up to 32 footer-reader actors per read. :func:`read_parquet` asks for 32 MiB units
  and one actor per 10 listed files (at most one per CPU, 32 in all); exported values win.
- **Per-operator reservation.** Ray Data reserves a share of the cluster for each operator so
  an actor pool downstream of a read cannot be starved. A fused read -> map -> write pipeline
  has no such neighbour, and on 2 CPUs the reservation let it run one task at a time about
  half of the time (8 x 0.4 s tasks took 2.7 s instead of 1.7 s). :func:`task_only_execution`
  turns it off for the duration of one execution of such a pipeline, :func:`drop_reservation`
  for a pipeline built for one call. Never use either on a pipeline with an actor pool: it
  relies on the reservation to leave CPUs for the read.
- **Few large files.** Ray's V1 reader makes one read task per file; with fewer files than
  the wanted blocks it splits each file's output afterwards (``SplitBlocks``), and Ray never
  fuses such a read with the map after it: every row crosses the object store once more, and
  one task decodes the whole file. Validation's 1M-row single-file benchmark spent 0.74 s in
  that one read task. :func:`read_parquet` reads an explicit list of fewer files than wanted
  blocks by **row groups** instead (:func:`row_group_source`: footers read in the driver,
  contiguous row-group ranges balanced by rows, one task each, fused with the maps after it),
  when the files hold at least one row group per CPU. Same benchmark: 1.92 s -> 1.17 s
  (hand run, medians of 5; docs/validation.md).

A source that two passes read (feature fit, then encode) is read once into the object store
when it is small against it (:func:`cache_if_small`), so Parquet is decoded once instead of
twice. Training inputs use the same limit.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "MATERIALIZE_MAX_BYTES",
    "MATERIALIZE_OBJECT_STORE_FRACTION",
    "MIN_BLOCKS_PER_CPU",
    "READ_UNIT_BYTES",
    "READ_UNIT_ENV",
    "approx_bytes",
    "cache_if_small",
    "drop_reservation",
    "footer_actors",
    "materialize_limit",
    "read_parquet",
    "row_group_source",
    "task_only_execution",
]

READ_UNIT_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
READ_UNIT_BYTES = 32 * 1024 * 1024
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_ACTOR = 10  # Ray's RAY_DATA_PARQUET_FOOTER_BATCH_SIZE default
READER_ENV = "RAY_DATA_USE_DATASOURCE_V2"
MIN_BLOCKS_PER_CPU = 4

#: Data up to this size is read into the object store once, or up to a quarter of the
#: cluster's object store when that is larger (see materialize_limit).
MATERIALIZE_MAX_BYTES = 256 * 1024 * 1024
MATERIALIZE_OBJECT_STORE_FRACTION = 0.25
VARIABLE_WIDTH_VALUE_BYTES = 32  # a guess for strings and binaries in approx_bytes

_env_lock = threading.Lock()


def materialize_limit(object_store_bytes: float | None) -> int:
    """Largest data read into the object store once: a quarter of the object store, never
    below MATERIALIZE_MAX_BYTES. Pure, so it is unit-testable."""
    return int(max(MATERIALIZE_MAX_BYTES, MATERIALIZE_OBJECT_STORE_FRACTION * (object_store_bytes or 0)))


def approx_bytes(schema: Any, num_rows: int) -> int:
    """In-memory size of ``num_rows`` rows of an Arrow ``schema``: fixed-width columns exactly,
    others at VARIABLE_WIDTH_VALUE_BYTES a value."""
    per_row = 0
    for f in schema:
        try:
            per_row += max(1, f.type.bit_width // 8)
        except ValueError:  # Arrow: "Non-fixed width type"
            per_row += VARIABLE_WIDTH_VALUE_BYTES
    return per_row * max(0, int(num_rows))


def cache_if_small(ds: Any, size_bytes: int, always: bool = False) -> Any:
    """``ds`` read once into the object store when ``size_bytes`` is within
    :func:`materialize_limit` of this cluster (or ``always``), else ``ds`` unchanged (streamed
    per pass). ``ds`` must be a pipeline of tasks (see :func:`task_only_execution`)."""
    import ray

    store = ray.cluster_resources().get("object_store_memory") if ray.is_initialized() else None
    if not always and not 0 < size_bytes <= materialize_limit(store):
        return ds
    with task_only_execution(ds):
        return ds.materialize()


def footer_actors(paths: str | list[str], cluster_cpus: int) -> int:
    """How many footer-reader actors a read of ``paths`` needs (see the module doc)."""
    if isinstance(paths, str):  # a directory (or one file): the count is not known here
        return max(1, min(32, cluster_cpus))
    needed = -(-len(paths) // FILES_PER_FOOTER_ACTOR)
    return max(1, min(needed, 32, cluster_cpus))


def _row_ranges(rows: list[int], tasks: int) -> list[tuple[int, int]]:
    """Split units of ``rows`` rows, in order, into at most ``tasks`` contiguous non-empty
    ranges ``[lo, hi)`` of about equal row counts. Pure."""
    if not rows:
        return []
    tasks = max(1, min(tasks, len(rows)))
    total = sum(rows)
    ranges: list[tuple[int, int]] = []
    lo, acc = 0, 0
    for i, n in enumerate(rows):
        acc += n
        remaining_units, remaining_tasks = len(rows) - i - 1, tasks - len(ranges) - 1
        # Close the range at the next row boundary, or when every later unit must start its own.
        if remaining_units and remaining_tasks and (acc >= total * (len(ranges) + 1) / tasks
                                                    or remaining_units == remaining_tasks):
            ranges.append((lo, i + 1))
            lo = i + 1
    ranges.append((lo, len(rows)))
    return ranges


def row_group_source(paths: list[str], filesystem: Any, columns: list[str] | None = None,
                     batch_size: int | None = None) -> Any:
    """A :class:`ParquetRowGroups` Ray Data datasource over ``paths`` (see the module doc), with
    every file's footer read here, in the driver. Raises OSError when a footer cannot be read and
    ValidationError for a missing column. It supports column pruning (``select_columns`` is
    pushed into the read)."""
    return _row_group_datasource_class()(paths, filesystem, columns, batch_size)


@functools.cache
def _row_group_datasource_class() -> type:
    """The datasource class, defined on first use: it subclasses Ray's ``Datasource``, and this
    module is imported where Ray is not (the CLI, unit tests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    from mlplat.errors import ValidationError

    class ParquetRowGroups(Datasource):
        def __init__(self, paths: list[str], filesystem: Any, columns: list[str] | None, batch_size: int | None):
            super().__init__()
            self._fs, self._batch_size = filesystem, batch_size
            self._projection_map = {c: c for c in columns} if columns else None
            self._units: list[tuple[str, int, int, int]] = []  # (path, row group, rows, bytes)
            self._file_schema: pa.Schema | None = None
            self.uniform = True  # every file has the first file's schema
            for path in paths:
                meta = pq.ParquetFile(path, filesystem=filesystem).metadata
                schema = meta.schema.to_arrow_schema()
                self._file_schema = self._file_schema or schema
                self.uniform = self.uniform and schema.remove_metadata().equals(self._file_schema.remove_metadata())
                missing = [c for c in (columns or []) if c not in schema.names]
                if missing:
                    raise ValidationError(f"{path} has no column(s) {missing}; it has {schema.names}")
                for g in range(meta.num_row_groups):
                    group = meta.row_group(g)
                    if group.num_rows:
                        size = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns))
                        self._units.append((path, g, group.num_rows, size))

        @property
        def num_units(self) -> int:
            return len(self._units)

        def supports_projection_pushdown(self) -> bool:
            return True

        def get_name(self) -> str:
            return "ParquetRowGroups"

        def estimate_inmemory_data_size(self) -> int:
            return sum(u[3] for u in self._units)

        def _schema(self) -> pa.Schema:
            columns = self._get_data_columns()
            assert self._file_schema is not None
            return self._file_schema if columns is None else pa.schema([self._file_schema.field(c) for c in columns])

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            fs, columns, batch_size = self._fs, self._get_data_columns(), self._batch_size
            tasks = []
            for lo, hi in _row_ranges([u[2] for u in self._units], parallelism):
                groups: dict[str, list[int]] = {}
                for path, g, _, _ in self._units[lo:hi]:
                    groups.setdefault(path, []).append(g)

                def read(groups: dict[str, list[int]] = groups) -> Iterator[pa.Table]:
                    for path, row_groups in groups.items():
                        handle = pq.ParquetFile(path, filesystem=fs)
                        if batch_size:
                            for batch in handle.iter_batches(batch_size=batch_size, row_groups=row_groups,
                                                             columns=columns, use_threads=False):
                                yield pa.Table.from_batches([batch])
                        else:
                            yield handle.read_row_groups(row_groups, columns=columns, use_threads=False)

                units = self._units[lo:hi]
                meta = BlockMetadata(num_rows=sum(u[2] for u in units), size_bytes=sum(u[3] for u in units),
                                     input_files=tuple(groups), exec_stats=None)
                tasks.append(ReadTask(read, meta, schema=self._schema(), per_task_row_limit=per_task_row_limit))
            return tasks

    return ParquetRowGroups


ROW_GROUP_READ_KWARGS = frozenset({"filesystem", "columns", "batch_size", "override_num_blocks"})


def _read_row_groups(paths: str | list[str], cpus: int, kwargs: dict[str, Any]) -> Any | None:
    """The row-group read of ``paths`` when it applies (see the module doc), else None."""
    import ray.data

    blocks = kwargs.get("override_num_blocks") or MIN_BLOCKS_PER_CPU * cpus
    if (isinstance(paths, str) or not paths or len(paths) >= blocks or READER_ENV in os.environ
            or not set(kwargs) <= ROW_GROUP_READ_KWARGS):
        return None
    try:
        source = row_group_source(list(paths), kwargs.get("filesystem"), kwargs.get("columns"),
                                  kwargs.get("batch_size"))
    except OSError:
        return None  # Ray's reader reports an unreadable file in its own words
    if source.num_units < cpus or not source.uniform:
        # Fewer row groups than CPUs: V1 splits the output across them instead. Files whose
        # schemas differ: Ray's reader unifies them.
        return None
    return ray.data.read_datasource(source, override_num_blocks=blocks)


def read_parquet(paths: str | list[str], **kwargs: Any) -> Any:
    """``ray.data.read_parquet`` with the platform's reader settings (see the module doc).

    Ray reads them from the driver's ``DataContext`` and environment while it plans the read,
    inside this call, so they are set here and put back afterwards (the Dataset keeps its own
    copy of the context); values the operator exported win. The lock keeps two threads of one
    driver from seeing each other's values."""
    import ray
    import ray.data

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1
    by_row_groups = _read_row_groups(paths, cpus, kwargs)
    if by_row_groups is not None:
        return by_row_groups
    wanted = {READ_UNIT_ENV: str(READ_UNIT_BYTES), FOOTER_ACTORS_ENV: str(footer_actors(paths, cpus))}
    context = ray.data.DataContext.get_current()
    with _env_lock:
        ours = [k for k in wanted if k not in os.environ]
        before = context.use_datasource_v2
        os.environ.update({k: wanted[k] for k in ours})
        if READER_ENV not in os.environ:
            context.use_datasource_v2 = False
            kwargs.setdefault("override_num_blocks", MIN_BLOCKS_PER_CPU * cpus)
        try:
            return ray.data.read_parquet(paths, **kwargs)
        finally:
            context.use_datasource_v2 = before
            for k in ours:
                os.environ.pop(k, None)


def drop_reservation(ds: Any) -> Any:
    """``ds`` set to run without the per-operator reservation for good (its context is shared
    with the datasets it was derived from: use it only on a pipeline built for one call, made of
    task operators only). Returns ``ds``."""
    ds.context.op_resource_reservation_enabled = False
    return ds


@contextmanager
def task_only_execution(ds: Any) -> Iterator[Any]:
    """Run executions of ``ds`` (a pipeline of task operators only) without Ray Data's
    per-operator resource reservation; the dataset's setting is restored on exit."""
    context = ds.context
    before = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield ds
    finally:
        context.op_resource_reservation_enabled = before
