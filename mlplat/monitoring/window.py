"""Reading a telemetry window: which Parquet files can hold its rows, and their merged partial
(:mod:`mlplat.monitoring.partials`) computed on Ray Data or in this process.

Telemetry lives at ``telemetry/<model>/date=YYYY-MM-DD/*.parquet``; a file sits in the
partition of its *first* row's UTC day, so a window also lists the day before its start. The
writer names files ``<writer>-<flush ms>-<seq>.parquet``, and every row of a file was recorded
before its flush: a file flushed before the window starts is skipped without being opened.

Outcomes (``outcomes/<model>/<batch>.parquet``, delayed labels joined to predictions by
:mod:`mlplat.monitoring.outcomes`) are read the same way, file by file in this process, for the
``label`` and ``prediction`` of the version's rows whose prediction ``ts`` is in the window
(:func:`outcome_files`, :func:`outcome_tables`).

Files are read one at a time with only the columns the plan needs and the window filter pushed
into the Parquet scan (row groups outside it are skipped), because files written at different
times may differ in schema (a feature column missing in some, a prediction column typed float in
one and text in another), which one Ray Data Parquet read of all of them would not accept. On
Ray, each block of a ``from_items`` dataset is a group of files balanced by size; its task
returns one small JSON partial, and only those reach the driver.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from mlplat.errors import StorageError
from mlplat.monitoring.outcomes import OUTCOMES_DIR, TELEMETRY_DIR
from mlplat.monitoring.partials import WindowPlan, empty_partial, merge_partials, table_partial
from mlplat.raydata import MIN_BLOCKS_PER_CPU, task_only_execution
from mlplat.storage import Storage

__all__ = ["TelemetryFile", "telemetry_files", "file_partial", "window_partial", "first_telemetry_s", "outcome_files",
           "outcome_tables", "OUTCOME_READ_COLUMNS"]

TelemetryFile = tuple[str, int]  # (path under the root, size in bytes)
_FLUSH_MS = re.compile(r"-(\d{13})-\d+\.parquet$")
_DAY_S = 86400
BATCH_ROWS = 65_536
#: The outcome columns performance drift reads.
OUTCOME_READ_COLUMNS = ("ts", "version", "label", "prediction")


def _day(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, dt.timezone.utc).date().isoformat()


def _listing(storage: Storage, *parts: str) -> list[pafs.FileInfo]:
    path = storage.path(*parts)
    try:
        infos = storage.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {storage.uri_of(*parts)}: {exc}") from exc
    return sorted((i for i in infos if not i.base_name.startswith(".")), key=lambda i: i.base_name)


def telemetry_days(storage: Storage, name: str) -> list[str]:
    """The ``YYYY-MM-DD`` days that have a telemetry partition for ``name``, ascending."""
    return [i.base_name.removeprefix("date=") for i in _listing(storage, "telemetry", name)
            if i.type == pafs.FileType.Directory and i.base_name.startswith("date=")]


def _day_files(storage: Storage, name: str, day: str) -> list[TelemetryFile]:
    return [(f"telemetry/{name}/date={day}/{i.base_name}", int(i.size or 0))
            for i in _listing(storage, "telemetry", name, f"date={day}")
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")]


def telemetry_files(storage: Storage, name: str, start_s: float, end_s: float) -> list[TelemetryFile]:
    """Files of ``name`` that can hold rows with ``start_s <= ts < end_s``."""
    first, last = _day(start_s - _DAY_S), _day(end_s)
    out = []
    for day in telemetry_days(storage, name):
        if not first <= day <= last:
            continue
        for path, size in _day_files(storage, name, day):
            flushed = _FLUSH_MS.search(path)
            if flushed and (int(flushed[1]) + 1) / 1000 < start_s:
                continue
            out.append((path, size))
    return out


def _scan(storage: Storage, path: str, columns: list[str], where: Any, *, what: str = "telemetry",
          required: tuple[str, ...] = ("ts", "version")) -> Iterable[pa.Table]:
    import pyarrow.dataset as pads

    try:
        dataset = pads.dataset(storage.path(path), filesystem=storage.fs, format="parquet")
        present = [c for c in columns if c in dataset.schema.names]
        if any(c not in present for c in required):
            return
        for batch in dataset.to_batches(columns=present, filter=where, batch_size=BATCH_ROWS):
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read {what} file {storage.uri_of(path)}: {exc}") from exc


def file_partial(storage: Storage, path: str, plan: WindowPlan) -> dict[str, Any]:
    """The partial of one telemetry file's rows inside the plan's window."""
    import pyarrow.dataset as pads

    where = (pads.field("ts") >= plan.start_s) & (pads.field("ts") < plan.end_s)
    if plan.version is not None:
        where = where & (pads.field("version") == plan.version)
    partial = empty_partial()
    for table in _scan(storage, path, plan.read_columns, where):
        partial = merge_partials(partial, table_partial(table, plan))
    return partial


def _groups(files: list[TelemetryFile], count: int) -> list[list[str]]:
    """Files in ``count`` groups of about equal bytes (largest first, each to the lightest group)."""
    groups: list[tuple[int, list[str]]] = [(0, []) for _ in range(max(1, min(count, len(files))))]
    for path, size in sorted(files, key=lambda f: -f[1]):
        i = min(range(len(groups)), key=lambda g: groups[g][0])
        groups[i] = (groups[i][0] + size, [*groups[i][1], path])
    return [sorted(g) for _, g in groups if g]


def window_partial(storage: Storage, files: list[TelemetryFile], plan: WindowPlan, *, use_ray: bool = True) -> dict[str, Any]:
    """The merged partial of ``files`` over the plan's window: one Ray Data task per group of
    files (``use_ray``), or file by file in this process."""
    if not files:
        return empty_partial()
    if not use_ray:
        partial = empty_partial()
        for path, _ in files:
            partial = merge_partials(partial, file_partial(storage, path, plan))
        return partial
    import ray
    import ray.data

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1
    groups = _groups(files, MIN_BLOCKS_PER_CPU * cpus)

    def partial_of(batch: pa.Table) -> pa.Table:
        out = []
        for paths in batch.column("paths").to_pylist():
            p = empty_partial()
            for path in paths:
                p = merge_partials(p, file_partial(storage, path, plan))
            out.append(json.dumps(p))
        return pa.table({"partial": out})

    ds = ray.data.from_items([{"paths": g} for g in groups], override_num_blocks=len(groups))
    partials = ds.map_batches(partial_of, batch_format="pyarrow", batch_size=None)
    with task_only_execution(partials):
        rows = partials.take_all()
    merged = empty_partial()
    for row in rows:
        merged = merge_partials(merged, json.loads(row["partial"]))
    return merged


#: :func:`first_telemetry_s` answers found in this process: (telemetry URI of the model, version) -> ts.
_FIRST_SEEN: dict[tuple[str, int], float] = {}
_FIRST_SEEN_MAX = 4096


def first_telemetry_s(storage: Storage, name: str, version: int, *, cached: bool = True) -> float | None:
    """The ``ts`` of the first telemetry row of ``name`` v``version``, or None. Reads the ``ts``
    and ``version`` columns of the days up to the first one with such a row, and the day after
    it (a file's rows may run past midnight into the next day). A found answer does not change
    (later rows come later) and is kept in memory per (model, version): ``cached=False`` reads
    again. The drift job also keeps it in the version's drift-reference file, across processes."""
    key = (storage.uri_of(TELEMETRY_DIR, name), int(version))
    if cached and key in _FIRST_SEEN:
        return _FIRST_SEEN[key]
    best = _scan_first(storage, name, version)
    if best is not None:
        if len(_FIRST_SEEN) >= _FIRST_SEEN_MAX:
            _FIRST_SEEN.clear()
        _FIRST_SEEN[key] = best
    return best


def _scan_first(storage: Storage, name: str, version: int) -> float | None:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    best: float | None = None
    found_day: str | None = None
    for day in telemetry_days(storage, name):
        if found_day is not None and day > _day(dt.datetime.fromisoformat(found_day).replace(
                tzinfo=dt.timezone.utc).timestamp() + _DAY_S):
            break
        for path, _ in _day_files(storage, name, day):
            for table in _scan(storage, path, ["ts", "version"], pads.field("version") == version):
                low = pc.min(table["ts"]).as_py()
                if low is not None and (best is None or low < best):
                    best = low
        if best is not None and found_day is None:
            found_day = day
    return best


def outcome_files(storage: Storage, name: str) -> list[str]:
    """The outcome batches of ``name`` (``outcomes/<name>/*.parquet``, paths under the root),
    in name order; none when the directory does not exist."""
    return [f"{OUTCOMES_DIR}/{name}/{i.base_name}" for i in _listing(storage, OUTCOMES_DIR, name)
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")]


def outcome_tables(storage: Storage, path: str, version: int, start_s: float, end_s: float) -> Iterable[pa.Table]:
    """Batches of the ``label`` and ``prediction`` (and ``ts``, ``version``) of one outcome
    file's rows of ``version`` whose prediction ``ts`` is in ``[start_s, end_s)``; nothing from
    a file that lacks one of those columns."""
    import pyarrow.dataset as pads

    where = (pads.field("ts") >= start_s) & (pads.field("ts") < end_s) & (pads.field("version") == version)
    yield from _scan(storage, path, list(OUTCOME_READ_COLUMNS), where, what="outcome", required=OUTCOME_READ_COLUMNS)
