"""How the platform reads Parquet into Ray Data and runs task-only pipelines.

Two Ray Data 2.60 defaults cost the platform's own pipelines real time on small clusters
(measured on the 2-core CI box, ``docs/data.md``):

- **Read units.** The Parquet V2 reader bin-packs row groups into read tasks of up to 128 MiB
  (uncompressed). A 10M-row, 8-file table became 3 read tasks of 1, 2 and 5 files: one
  task ran 5.4 s while the other core sat idle. :func:`read_parquet` packs 32 MiB units
  instead (10 balanced tasks for that table). The value only lives for the planning call;
  a ``RAY_DATA_PARQUET_BIN_PACKING_BYTES`` set by the operator wins.
- **Footer readers.** Before reading, the V2 reader starts up to 32 ``FooterReader`` actors
  (new worker processes) per read to read the Parquet footers, 10 files per actor call. For
  the few files of a typical platform read that is dozens of process starts on a small box
  (Ray warned "8 PYTHON worker processes have been started ... 4x the maximum expected").
  :func:`read_parquet` asks for one actor per 10 listed files (at most 32, at most the
  cluster's CPUs); for a directory, one per CPU up to 32. The platform's reads list their
  files (the catalog knows them).
- **Per-operator reservation.** Ray Data reserves a share of the cluster for each operator so
  an actor pool downstream of a read cannot be starved. A fused read -> map -> write pipeline
  has no such neighbour, and on 2 CPUs the reservation let it run one task at a time about
  half of the time (8 x 0.4 s tasks took 2.7 s instead of 1.7 s). :func:`task_only_execution`
  turns it off for the duration of one execution of such a pipeline. Never use it around a
  pipeline with an actor pool (validation, scoring): they rely on the reservation to leave
  CPUs for the read.

A source that two passes read (feature fit, then encode) is read once into the object store
when it is small against it (:func:`cache_if_small`): each Ray Data read pays ~0.9 s on the
2-core box before its first block (the listing task waits for a new footer-reader process),
and Parquet is decoded once instead of twice. Training inputs use the same limit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "MATERIALIZE_MAX_BYTES",
    "MATERIALIZE_OBJECT_STORE_FRACTION",
    "READ_UNIT_BYTES",
    "READ_UNIT_ENV",
    "approx_bytes",
    "cache_if_small",
    "footer_actors",
    "materialize_limit",
    "read_parquet",
    "task_only_execution",
]

READ_UNIT_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
READ_UNIT_BYTES = 32 * 1024 * 1024
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_ACTOR = 10  # Ray's RAY_DATA_PARQUET_FOOTER_BATCH_SIZE default

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


def cache_if_small(ds: Any, size_bytes: int) -> Any:
    """``ds`` read once into the object store when ``size_bytes`` is within
    :func:`materialize_limit` of this cluster, else ``ds`` unchanged (streamed per pass)."""
    import ray

    store = ray.cluster_resources().get("object_store_memory") if ray.is_initialized() else None
    if not 0 < size_bytes <= materialize_limit(store):
        return ds
    with task_only_execution(ds):
        return ds.materialize()


def footer_actors(paths: str | list[str], cluster_cpus: int) -> int:
    """How many footer-reader actors a read of ``paths`` needs (see the module doc)."""
    if isinstance(paths, str):  # a directory (or one file): the count is not known here
        return max(1, min(32, cluster_cpus))
    needed = -(-len(paths) // FILES_PER_FOOTER_ACTOR)
    return max(1, min(needed, 32, cluster_cpus))


def read_parquet(paths: str | list[str], **kwargs: Any) -> Any:
    """``ray.data.read_parquet`` with the platform's read units and footer readers (module doc).

    Ray reads both settings from the environment while it plans the read, inside this call, so
    they are set here and put back afterwards (a value the operator exported wins); the lock
    keeps two threads of one driver from seeing each other's values."""
    import ray
    import ray.data

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1
    wanted = {READ_UNIT_ENV: str(READ_UNIT_BYTES), FOOTER_ACTORS_ENV: str(footer_actors(paths, cpus))}
    with _env_lock:
        ours = [k for k in wanted if k not in os.environ]
        os.environ.update({k: wanted[k] for k in ours})
        try:
            return ray.data.read_parquet(paths, **kwargs)
        finally:
            for k in ours:
                os.environ.pop(k, None)


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
