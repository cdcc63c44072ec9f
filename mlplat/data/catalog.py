"""The data catalog: register dataset versions, append and complete partitions, search, and
resolve a version (optionally a range of partitions) to a ``ray.data.Dataset``.

Layout under the storage root: ``datasets/<name>/v<N>/[<key>=<value>/]part-*.parquet``.
A version is registered ``pending`` in the registry first (that allocates N), its files are
written, then it is flipped to ``ready``; readers only see ``ready`` versions and only the
files the catalog lists, so an interrupted write is never read.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlplat.errors import AlreadyExists, ConflictError, NotFound, SchemaMismatch, StorageError, ValidationError
from mlplat.names import validate_name
from mlplat.raydata import read_parquet
from mlplat.records import (
    CATALOG_DATASET,
    EVENT_PARTITION_COMPLETED,
    STATUS_PENDING,
    STATUS_READY,
    CatalogEntry,
    ColumnInfo,
    DatasetKind,
    DatasetVersion,
    PartitionInfo,
)
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = [
    "register_dataset",
    "append_partition",
    "add_files",
    "complete_partition",
    "get_dataset",
    "list_datasets",
    "search_datasets",
    "read_dataset",
    "dataset_files",
    "parse_partition",
    "schema_diff",
    "CAS_ATTEMPTS",
]

_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


# -- sources -----------------------------------------------------------------------------


def _source_fs(storage: Storage, source: str) -> tuple[pafs.FileSystem, str]:
    if source.startswith("s3://"):
        if not storage.is_local:
            return storage.fs, source.removeprefix("s3://").rstrip("/")
        fs, path = pafs.FileSystem.from_uri(source)
        return fs, path
    path = os.path.abspath(os.path.expanduser(source.removeprefix("file://")))
    return pafs.LocalFileSystem(), path


def _expand(storage: Storage, sources: str | Sequence[str], fmt: str | None) -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    """(filesystem, [(absolute file path, relative dir inside the source)]) of data files."""
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise ValidationError("no source files given")
    fs: pafs.FileSystem | None = None
    files: list[tuple[str, str]] = []
    for source in sources:
        src_fs, path = _source_fs(storage, str(source))
        fs = fs or src_fs
        try:
            info = src_fs.get_file_info(path)
        except OSError as exc:
            raise StorageError(f"cannot reach source {source!r}: {exc}") from None
        if info.type == pafs.FileType.NotFound:
            raise NotFound(f"source {source!r} does not exist")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            for f in sorted(src_fs.get_file_info(selector), key=lambda i: i.path):
                if f.type != pafs.FileType.File:
                    continue
                rel = f.path[len(path):].strip("/")
                if any(seg.startswith((".", "_")) for seg in rel.split("/")):
                    continue
                if fmt is None and os.path.splitext(f.path)[1].lower() not in _FORMATS:
                    continue
                files.append((f.path, rel.rpartition("/")[0]))
        else:
            files.append((path, ""))
    if not files:
        raise ValidationError(f"no data files (.parquet, .csv, .json, .jsonl) found in {list(sources)}")
    assert fs is not None
    return fs, files


def _file_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("parquet", "csv", "json"):
            raise ValidationError(f"unknown format {fmt!r}: expected parquet, csv or json")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValidationError(f"cannot tell the format of {path!r} from its extension; pass format=parquet|csv|json")
    return _FORMATS[ext]


def read_table(fs: pafs.FileSystem, path: str, fmt: str, *, label: str | None = None) -> pa.Table:
    """One Parquet, CSV or JSON (lines or array of objects) file as a table; errors name
    ``label`` (default: the path) and say what is wrong."""
    what = label or repr(path)
    try:
        with fs.open_input_file(path) as handle:
            if fmt == "parquet":
                return pq.read_table(handle)
            data = handle.read()
    except OSError as exc:
        raise StorageError(f"cannot read {what}: {exc}") from None
    except pa.ArrowInvalid as exc:
        raise ValidationError(f"{what} is not a valid {fmt} file: {exc}") from None
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(io.BytesIO(data))
        import pyarrow.json as pajson

        try:
            return pajson.read_json(io.BytesIO(data))
        except pa.ArrowInvalid:
            rows = json.loads(data)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValidationError(f"{what}: expected JSON lines or a JSON array of objects") from None
            return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, ValueError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(f"{what} is not a valid {fmt} file: {exc}") from None


def parse_partition(partition: str) -> dict[str, str]:
    """``"date=2026-11-27"`` or ``"region=eu/date=2026-11-27"`` -> ordered dict of values."""
    values: dict[str, str] = {}
    for seg in str(partition).strip("/").split("/"):
        key, sep, value = seg.partition("=")
        if not sep or not key or not value:
            raise ValidationError(f"invalid partition {partition!r}: expected hive style 'key=value[/key=value]', e.g. 'date=2026-11-27'")
        if not key.replace("_", "").isalnum() or any(c in value for c in "/\\\x00%:") or value in (".", ".."):
            raise ValidationError(f"invalid partition {partition!r}: keys are identifiers, values plain text without / \\ % :")
        values[key] = value
    return values


def _partition_key(values: dict[str, str]) -> str:
    return "/".join(f"{k}={v}" for k, v in values.items())


def _columns(schema: pa.Schema, exclude: Iterable[str] = ()) -> tuple[ColumnInfo, ...]:
    skip = set(exclude)
    return tuple(ColumnInfo(name=f.name, type=str(f.type)) for f in schema if f.name not in skip)


def schema_diff(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Human-readable differences between two ``{column: type}`` schemas (empty if equal)."""
    out = [f"missing column {c!r} ({t})" for c, t in expected.items() if c not in actual]
    out += [f"unexpected column {c!r} ({t})" for c, t in actual.items() if c not in expected]
    out += [f"column {c!r} has type {actual[c]}, expected {t}" for c, t in expected.items() if c in actual and actual[c] != t]
    return out


# -- writes ------------------------------------------------------------------------------

#: A partition-list write (add_files, append_partition, complete_partition) that lost a race
#: with another writer re-reads the version and re-applies its change, at most this many times.
CAS_ATTEMPTS = 8
_CAS_BACKOFF_S = 0.02  # the first retry waits up to this; doubling, full jitter, at most 1 s


def _cas_backoff(attempt: int) -> None:
    time.sleep(random.uniform(0.0, min(1.0, _CAS_BACKOFF_S * 2 ** attempt)))


def _update_with_retry(registry: Registry, dv: DatasetVersion,
                       change: Callable[[DatasetVersion], tuple[dict[str, Any], str] | None]) -> DatasetVersion:
    """Apply a read-modify-write to a dataset version without losing a concurrent writer's.

    ``change(dv)`` returns the patch and idempotency key for the version as read (or None:
    nothing to write); the update is a compare-and-set on the entry's ``updated_at``. When
    another writer changed the version between the read and the write, the version is re-read
    and ``change`` runs again on it, after a jittered backoff, at most :data:`CAS_ATTEMPTS`
    times; then :class:`ConflictError` (nothing of this call was written)."""
    for attempt in range(CAS_ATTEMPTS):
        if attempt:
            _cas_backoff(attempt - 1)
            dv = get_dataset(registry, dv.name, dv.version)
        step = change(dv)
        if step is None:
            return dv
        patch, key = step
        try:
            saved = registry.catalog_update(CATALOG_DATASET, dv.name, dv.version, patch,
                                            expected_updated_at=dv.updated_at, idempotency_key=key)
        except ConflictError:
            continue
        return DatasetVersion.from_catalog(saved)
    raise ConflictError(f"dataset {dv.name!r} v{dv.version}: other writers changed it {CAS_ATTEMPTS} times while this "
                        "write retried; nothing was written, retry later")


def _write_parquet(storage: Storage, table: pa.Table, *parts: str) -> None:
    with storage.open_write(*parts) as handle:
        pq.write_table(table, handle)


def _ingest(storage: Storage, fs: pafs.FileSystem, files: list[tuple[str, str]], fmt: str | None, dest: str,
            partition: dict[str, str] | None, expected: dict[str, str] | None, name: str):
    """Read every source file, check its schema, write it as Parquet under ``dest``.

    Returns (columns, partition keys, {partition key: (values, [files], rows)}, unpartitioned files, rows).
    Schemas are all checked before anything is written.
    """
    tables: list[tuple[pa.Table, dict[str, str]]] = []
    for path, rel_dir in files:
        table = read_table(fs, path, _file_format(path, fmt))
        values = dict(partition or {})
        if rel_dir:
            values.update(parse_partition(rel_dir) if "=" in rel_dir else {})
        # hive values come from the path: drop same-named columns written into the files
        table = table.drop_columns([c for c in values if c in table.schema.names])
        tables.append((table, values))
    keys = tuple(dict.fromkeys(k for _, v in tables for k in v))
    if any(tuple(v) != keys for _, v in tables):
        raise ValidationError(f"dataset {name!r}: every file must sit in the same partition layout ({'/'.join(keys)}=...)")
    base_schema = {f.name: str(f.type) for f in tables[0][0].schema} if expected is None else expected
    for (table, _), (path, _) in zip(tables, files, strict=True):
        diff = schema_diff(base_schema, {f.name: str(f.type) for f in table.schema})
        if diff:
            raise SchemaMismatch(f"dataset {name!r}: {path} does not match the dataset schema: " + "; ".join(diff))
    parts: dict[str, tuple[dict[str, str], list[str], int]] = {}
    plain: list[str] = []
    total = 0
    run = uuid.uuid4().hex[:8]
    for i, (table, values) in enumerate(tables):
        table = table.select(list(base_schema))
        key = _partition_key(values)
        rel = f"{key}/part-{run}-{i:05d}.parquet" if key else f"part-{run}-{i:05d}.parquet"
        _write_parquet(storage, table, dest, rel)
        total += table.num_rows
        if key:
            vals, fl, rows = parts.setdefault(key, (values, [], 0))
            parts[key] = (vals, [*fl, rel], rows + table.num_rows)
        else:
            plain.append(rel)
    columns = tuple(ColumnInfo(name=c, type=t) for c, t in base_schema.items())
    return columns, keys, parts, plain, total


def register_dataset(storage: Storage, registry: Registry, name: str, source: str | Sequence[str], *,
                     kind: str | DatasetKind = DatasetKind.FACTS, format: str | None = None,
                     partition: str | None = None, tags: Sequence[str] = (), description: str = "") -> DatasetVersion:
    """Register a new version of dataset ``name`` from Parquet/CSV/JSON files or directories
    (local or ``s3://``). Data is copied (CSV/JSON converted) to ``datasets/<name>/v<N>/``.
    Hive directories in the source (``date=2026-11-27/``) become partitions; ``partition``
    puts all files into one partition."""
    validate_name(name, "dataset name")
    try:
        kind = DatasetKind(kind)
    except ValueError:
        raise ValidationError(f"dataset kind {kind!r} is not one of: {', '.join(k.value for k in DatasetKind)}") from None
    part_values = parse_partition(partition) if partition else None
    fs, files = _expand(storage, source, format)
    sources = [source] if isinstance(source, str) else list(source)
    record = registry.catalog_register(
        CATALOG_DATASET, name,
        {"status": STATUS_PENDING, "kind": kind.value, "path": "", "source": ", ".join(map(str, sources))},
        tags=tuple(tags), idempotency_key=f"dataset-register:{name}:{uuid.uuid4().hex}",
    )
    version = record.version
    dest = f"datasets/{name}/v{version}"
    try:
        columns, keys, parts, plain, total = _ingest(storage, fs, files, format, dest, part_values, None, name)
    except BaseException as exc:
        registry.catalog_update(CATALOG_DATASET, name, version, {"status": "failed", "error": str(exc)[:500]})
        raise
    now = time.time()
    dv = DatasetVersion(
        name=name, version=version, kind=kind, status=STATUS_READY, path=dest, files=tuple(plain), columns=columns,
        partition_keys=keys,
        partitions=tuple(PartitionInfo(key=k, values=v, files=tuple(fl), num_rows=n, added_at=now)
                         for k, (v, fl, n) in sorted(parts.items())),
        num_rows=total, tags=tuple(tags), description=description, source=", ".join(map(str, sources)),
    )
    saved = registry.catalog_update(CATALOG_DATASET, name, version, dv.payload(),
                                    idempotency_key=f"dataset-ready:{name}:v{version}")
    return DatasetVersion.from_catalog(saved)


def append_partition(storage: Storage, registry: Registry, name: str, partition: str, source: str | Sequence[str], *,
                     version: int | None = None, format: str | None = None) -> DatasetVersion:
    """Add partition ``partition`` (e.g. ``date=2026-11-27``) to a dataset version (latest
    ready by default). The files must have exactly the dataset's columns and types, else
    :class:`SchemaMismatch` names the differing columns and nothing is changed."""
    dv = get_dataset(registry, name, version)
    values = parse_partition(partition)
    key = _partition_key(values)
    if dv.files and not dv.partition_keys:
        raise ValidationError(
            f"dataset {name!r} v{dv.version} was registered without partitions; register a new version "
            "with partition=... (or a hive-partitioned directory) to append partitions"
        )
    if dv.partition_keys and tuple(values) != dv.partition_keys:
        raise ValidationError(f"partition {partition!r} does not match the dataset's partition keys "
                              f"{'/'.join(dv.partition_keys)}")
    if dv.partition(key) is not None:
        raise AlreadyExists(f"dataset {name!r} v{dv.version} already has partition {key!r}")
    fs, files = _expand(storage, source, format)
    if any(rel for _, rel in files):
        files = [(p, "") for p, _ in files]
    _, _, parts, _, total = _ingest(storage, fs, files, format, dv.path, values, dv.schema_dict(), name)
    vals, fl, rows = parts[key]
    new = PartitionInfo(key=key, values=vals, files=tuple(fl), num_rows=rows, added_at=time.time())
    token = uuid.uuid4().hex

    def change(cur: DatasetVersion) -> tuple[dict[str, Any], str]:
        if cur.partition(key) is not None:  # appended by another writer meanwhile
            raise AlreadyExists(f"dataset {name!r} v{cur.version} already has partition {key!r}")
        return ({"partitions": [p.model_dump(mode="json") for p in (*cur.partitions, new)],
                 "partition_keys": list(values), "num_rows": cur.num_rows + total},
                f"dataset-append:{name}:v{cur.version}:{key}:{token}")

    return _update_with_retry(registry, dv, change)


def _merge_columns(name: str, columns: dict[str, str], path: str, schema: pa.Schema) -> None:
    """Union ``schema`` into ``columns`` (the dataset's); a null-typed column takes any type."""
    for f in schema:
        have, got = columns.get(f.name), str(f.type)
        if have is None or have == "null":
            columns[f.name] = got
        elif got != "null" and got != have:
            raise SchemaMismatch(f"dataset {name!r}: {path} column {f.name!r} has type {got}, the dataset has {have}")


def add_files(storage: Storage, registry: Registry, name: str, path: str, files: Sequence[str], *,
              partition: str | None = None, kind: str | DatasetKind = DatasetKind.FACTS, tags: Sequence[str] = (),
              description: str = "") -> DatasetVersion:
    """Register Parquet files that already lie under the root, where they are (nothing is
    copied): ``files`` are relative to ``path`` (the dataset's directory, e.g.
    ``telemetry/churn``); with ``partition`` (``date=2026-11-30``) they sit in that hive
    directory and join that partition, created when new; without, the unpartitioned files.

    The latest ready version takes them; a dataset with none is registered first (``kind``,
    ``path``; concurrent first calls create one version). A file already listed is skipped, so
    a retried call adds each file once. The columns are the union of the files' columns (a
    column a file lacks reads as null); a type that differs from the dataset's is a
    :class:`SchemaMismatch` naming the file and column, and nothing is changed.

    Writers append data files in place (telemetry flushes, outcome batches): each is written
    atomically before it is listed, and readers see only listed files. Concurrent writers
    (several ingress replicas) never lose each other's files: the listing is a compare-and-set
    on the version's ``updated_at``, and a call that lost the race re-reads the version and
    merges its files again (at most :data:`CAS_ATTEMPTS` times, jittered backoff; then
    :class:`ConflictError`, nothing written, safe to retry)."""
    validate_name(name, "dataset name")
    try:
        kind = DatasetKind(kind)
    except ValueError:
        raise ValidationError(f"dataset kind {kind!r} is not one of: {', '.join(k.value for k in DatasetKind)}") from None
    values = parse_partition(partition) if partition else None
    key = _partition_key(values) if values else None
    base = storage.path(path)  # safe_join: a path inside the root
    rel_path = path.strip("/")
    for f in files:
        storage.path(rel_path, f)
        if key is not None and not f.startswith(f"{key}/"):
            raise ValidationError(f"file {f!r} is not in partition directory {key}/ of dataset {name!r}")
    try:
        dv = get_dataset(registry, name)
    except NotFound:
        entry = registry.catalog_register(
            CATALOG_DATASET, name,
            DatasetVersion(name=name, version=1, kind=kind, path=rel_path, tags=tuple(tags),
                           description=description, partition_keys=tuple(values or ())).payload(),
            tags=tuple(tags), idempotency_key=f"dataset-in-place:{name}:{rel_path}")
        dv = DatasetVersion.from_catalog(entry)
    if dv.path != rel_path:
        raise ValidationError(f"dataset {name!r} v{dv.version} lives in {dv.path!r}, not {rel_path!r}")
    if dv.kind != kind:
        raise ValidationError(f"dataset {name!r} has kind {dv.kind.value}, not {kind.value}")
    if values is not None and dv.partition_keys and tuple(values) != dv.partition_keys:
        raise ValidationError(f"partition {partition!r} does not match the dataset's partition keys "
                              f"{'/'.join(dv.partition_keys)}")
    metas: dict[str, tuple[pa.Schema, int]] = {}  # read once, kept across retries

    def meta_of(f: str) -> tuple[pa.Schema, int]:
        if f not in metas:
            try:
                meta = pq.read_metadata(f"{base}/{f}", filesystem=storage.fs)
            except FileNotFoundError:
                raise NotFound(f"dataset {name!r}: {rel_path}/{f} does not exist") from None
            except (OSError, pa.ArrowInvalid) as exc:
                raise ValidationError(f"dataset {name!r}: {rel_path}/{f} is not a readable Parquet file: {exc}") from None
            metas[f] = (meta.schema.to_arrow_schema(), meta.num_rows)
        return metas[f]

    def change(cur: DatasetVersion) -> tuple[dict[str, Any], str] | None:
        """The patch that lists the files ``cur`` does not list yet (None: all listed)."""
        part = cur.partition(key) if key is not None else None
        listed = set(part.files if part is not None else cur.files) if key is not None else set(cur.files)
        new = [f for f in dict.fromkeys(files) if f not in listed]
        if not new:
            return None
        columns = cur.schema_dict()
        rows = 0
        for f in new:
            schema, num_rows = meta_of(f)
            _merge_columns(name, columns, f"{rel_path}/{f}", schema)
            rows += num_rows
        if key is None:
            patch: dict[str, Any] = {"files": [*cur.files, *new]}
        else:
            assert values is not None
            merged = (part.model_copy(update={"files": (*part.files, *new), "num_rows": part.num_rows + rows})
                      if part is not None else PartitionInfo(key=key, values=values, files=tuple(new), num_rows=rows,
                                                             added_at=time.time()))
            parts = [merged if p.key == key else p for p in cur.partitions] if part is not None else [*cur.partitions, merged]
            patch = {"partitions": [p.model_dump(mode="json") for p in sorted(parts, key=lambda p: p.key)],
                     "partition_keys": list(values)}
        patch.update({"columns": [ColumnInfo(name=c, type=t).model_dump() for c, t in columns.items()],
                      "num_rows": cur.num_rows + rows})
        digest = uuid.uuid5(uuid.NAMESPACE_URL, "\n".join(new)).hex
        return patch, f"dataset-add-files:{name}:v{cur.version}:{key or ''}:{digest}"

    return _update_with_retry(registry, dv, change)


def complete_partition(registry: Registry, name: str, partition: str, *, version: int | None = None) -> DatasetVersion:
    """Mark a partition finished and write a ``partition_completed`` event (idempotent)."""
    dv = get_dataset(registry, name, version)
    key = _partition_key(parse_partition(partition))
    part = dv.partition(key)
    if part is None:
        have = ", ".join(p.key for p in dv.partitions) or "none"
        raise NotFound(f"dataset {name!r} v{dv.version} has no partition {key!r} (partitions: {have})")

    def change(cur: DatasetVersion) -> tuple[dict[str, Any], str] | None:
        mine = cur.partition(key)
        if mine is None or mine.complete:
            return None
        now = time.time()
        parts = [p.model_copy(update={"complete": True, "completed_at": now}) if p.key == key else p for p in cur.partitions]
        return ({"partitions": [p.model_dump(mode="json") for p in parts]},
                f"dataset-complete:{name}:v{cur.version}:{key}")

    dv = _update_with_retry(registry, dv, change)
    part = dv.partition(key) or part
    registry.append_event(
        EVENT_PARTITION_COMPLETED, f"dataset:{name}",
        {"partition": key, "values": part.values, "num_rows": part.num_rows, "kind": dv.kind.value},
        version=dv.version, idempotency_key=f"{EVENT_PARTITION_COMPLETED}:{name}:v{dv.version}:{key}",
    )
    return dv


# -- reads -------------------------------------------------------------------------------


def get_dataset(registry: Registry, name: str, version: int | None = None) -> DatasetVersion:
    """A ready dataset version (the latest ready one when ``version`` is None)."""
    validate_name(name, "dataset name")
    if version is not None:
        record = registry.catalog_get(CATALOG_DATASET, name, int(version))
        dv = DatasetVersion.from_catalog(record)
        if dv.status != STATUS_READY:
            raise NotFound(f"dataset {name!r} v{version} is {dv.status}, not ready")
        return dv
    try:
        return DatasetVersion.from_catalog(registry.catalog_get(CATALOG_DATASET, name, status=STATUS_READY))
    except NotFound:
        raise NotFound(f"dataset {name!r} has no ready version; register one with `mlplat data register`") from None


def _latest_ready(entries: Iterable[CatalogEntry]) -> list[DatasetVersion]:
    best: dict[str, CatalogEntry] = {}
    for e in entries:
        if e.payload.get("status") != STATUS_READY:
            continue
        if e.name not in best or e.version > best[e.name].version:
            best[e.name] = e
    return [DatasetVersion.from_catalog(best[n]) for n in sorted(best)]


def list_datasets(registry: Registry, *, prefix: str | None = None, tag: str | None = None, column: str | None = None,
                  kind: str | None = None) -> list[DatasetVersion]:
    """Latest ready version of each dataset, filtered by name prefix, tag, column or kind."""
    out = _latest_ready(registry.catalog_list(CATALOG_DATASET, prefix=prefix, tag=tag, latest_only=False))
    if column:
        out = [d for d in out if column in d.column_names or column in d.partition_keys]
    if kind:
        out = [d for d in out if d.kind.value == kind]
    return out


def search_datasets(registry: Registry, query: str) -> list[DatasetVersion]:
    """Datasets whose name, a tag, a column name or the description contains ``query``."""
    q = query.lower()
    return [d for d in _latest_ready(registry.catalog_list(CATALOG_DATASET, latest_only=False))
            if q in d.name or any(q in t.lower() for t in d.tags) or any(q in c.lower() for c in d.column_names)
            or any(q in k.lower() for k in d.partition_keys) or q in d.description.lower()]


def dataset_files(dv: DatasetVersion, *, start: str | None = None, end: str | None = None,
                  key: str | None = None) -> list[str]:
    """Files (relative to the root) of a version, optionally only partitions whose ``key``
    value lies in [start, end] (string comparison: ISO dates order correctly)."""
    files = [f"{dv.path}/{f}" for f in dv.files]
    if (start or end) and not dv.partition_keys:
        raise ValidationError(f"dataset {dv.name!r} v{dv.version} has no partitions to select a range from")
    key = key or (dv.partition_keys[0] if dv.partition_keys else None)
    if key and dv.partition_keys and key not in dv.partition_keys:
        raise ValidationError(f"dataset {dv.name!r} has no partition key {key!r} (keys: {', '.join(dv.partition_keys)})")
    for p in dv.partitions:
        value = p.values.get(key or "", "")
        if (start and value < start) or (end and value > end):
            continue
        files += [f"{dv.path}/{f}" for f in p.files]
    return files


def read_dataset(storage: Storage, dv: DatasetVersion, *, start: str | None = None, end: str | None = None,
                 key: str | None = None, columns: Sequence[str] | None = None):
    """The version (or partitions ``start``..``end``) as a lazy ``ray.data.Dataset``;
    partition keys are columns (strings)."""
    from ray.data.datasource import Partitioning, PartitionStyle

    files = dataset_files(dv, start=start, end=end, key=key)
    if not files:
        raise NotFound(f"dataset {dv.name!r} v{dv.version} has no partitions in [{start or '...'}, {end or '...'}]")
    kwargs: dict[str, Any] = {"filesystem": storage.fs}
    if dv.partition_keys:
        kwargs["partitioning"] = Partitioning(PartitionStyle.HIVE, base_dir=storage.path(dv.path))
    ds = read_parquet([storage.path(f) for f in files], **kwargs)
    if columns:
        ds = ds.select_columns(list(columns))
    return ds
