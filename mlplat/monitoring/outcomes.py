"""Outcomes: delayed labels joined to the predictions they judge, as catalog data.

:func:`ingest_outcomes` reads outcome files (Parquet, CSV, JSON lines; local or ``s3://``),
joins each row to the model's telemetry (``telemetry/<model>/date=*/*.parquet``, written by the
serving ingress) and writes the matched rows to ``outcomes/<model>/<batch>.parquet``,
registered in the data catalog as dataset ``outcomes-<model>`` (kind ``outcomes``).

Two joins, both pure functions over Arrow tables:

- :func:`join_by_request_id`: the outcome's request id (the ``x-request-id`` the ingress
  answered, or the OIP ``id`` the client sent) against telemetry's ``request_id``; with a
  ``request_row`` column in the outcomes, the instance of a multi-row request. A request id
  seen in several requests (a client reusing ids) takes the latest prediction. Without
  ``request_row``, an outcome whose request held several rows is *ambiguous* and not written.
- :func:`join_point_in_time`: for each outcome (entity, time), the latest prediction for that
  entity at or before the time -- never a later one -- the entity taken from telemetry's
  ``feature.<entity>`` column, else ``context.<entity>`` (an ``x-mlplat-context-<entity>``
  header). Entities compare as text; integral numbers as integers (``31`` = ``31.0``).

Output columns: ``request_id``, ``request_row``, ``label`` (float64 for numbers and booleans,
else text), ``prediction``, ``version``, ``ts`` (prediction time, epoch s), ``entity`` and
``outcome_ts`` (epoch s; point-in-time only, else null).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlplat.data.catalog import read_table
from mlplat.errors import AlreadyExists, MlplatError, NotFound, StorageError, ValidationError
from mlplat.names import validate_name
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = [
    "ingest_outcomes",
    "join_by_request_id",
    "join_point_in_time",
    "read_outcome_files",
    "OutcomeBatch",
    "outcomes_dataset_name",
    "OUTCOME_COLUMNS",
    "OUTCOMES_DIR",
    "OUTCOMES_KIND",
]

OUTCOMES_DIR = "outcomes"
OUTCOMES_KIND = "outcomes"
#: The serving ingress's telemetry layout and columns (docs/serving.md); monitoring reads them
#: as data and never imports serving.
TELEMETRY_DIR = "telemetry"
_PREDICTION_COLUMNS = ("request_id", "request_row", "ts", "version", "prediction")

OUTCOME_COLUMNS = ("request_id", "request_row", "label", "prediction", "version", "ts", "entity", "outcome_ts")
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}
_BATCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class OutcomeBatch:
    """What one ingest did: ``rows`` outcome rows read, ``matched`` written, ``unmatched``
    (no prediction found), ``ambiguous`` (a request id of a multi-row request, no
    ``request_row``). ``path`` is relative to the storage root (None when nothing matched).
    ``notes``: what limited the join (e.g. which days of telemetry were searched)."""

    model: str
    batch: str
    dataset: str
    path: str | None
    rows: int
    matched: int
    unmatched: int
    ambiguous: int = 0
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def outcomes_dataset_name(model: str) -> str:
    """``outcomes-<model>``; past the 63-character name limit, a prefix and a hash of the model name.

    >>> outcomes_dataset_name("churn")
    'outcomes-churn'
    """
    name = f"{OUTCOMES_KIND}-{model}"
    if len(name) <= 63:
        return name
    return f"{name[:63 - 9]}-{hashlib.blake2b(model.encode(), digest_size=4).hexdigest()}"


# -- reading -----------------------------------------------------------------------------------


def _source_fs(storage: Storage, source: str) -> tuple[pafs.FileSystem, str]:
    if source.startswith("s3://"):
        if not storage.is_local:
            return storage.fs, source.removeprefix("s3://").rstrip("/")
        return pafs.FileSystem.from_uri(source)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(source.removeprefix("file://")))


def _read_one(storage: Storage, source: str) -> pa.Table:
    ext = os.path.splitext(source)[1].lower()
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise ValidationError(f"outcome file {source!r}: unknown format {ext or '(no extension)'}; "
                              "expected .parquet, .csv, .json or .jsonl")
    fs, path = _source_fs(storage, source)
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise NotFound(f"outcome file {source!r} does not exist (or is a directory)")
    except MlplatError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot read outcome file {source!r}: {exc}") from None
    return read_table(fs, path, fmt, label=f"outcome file {source!r}")


def read_outcome_files(storage: Storage, files: Sequence[str], columns: Sequence[str],
                       optional: Sequence[str] = ()) -> pa.Table:
    """The ``columns`` of every outcome file, concatenated, plus each ``optional`` column that
    every file has. A file lacking a column is a ValidationError naming the file, the column
    and the columns it has."""
    if not files:
        raise ValidationError("no outcome files given")
    read = [(str(source), _read_one(storage, str(source))) for source in files]
    for source, table in read:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValidationError(f"outcome file {source!r} has no column {missing[0]!r} "
                                  f"(columns: {', '.join(table.column_names) or 'none'})")
    wanted = list(dict.fromkeys([*columns, *(c for c in optional if all(c in t.column_names for _, t in read))]))
    tables = [table.select(wanted) for _, table in read]
    try:
        out = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValidationError(f"outcome files {list(files)} have incompatible column types: {exc}") from None
    if out.num_rows == 0:
        raise ValidationError(f"outcome files {list(files)} hold no rows")
    return out


def _telemetry_files(storage: Storage, model: str, *, since_day: str | None = None,
                     until_day: str | None = None) -> list[str]:
    """Telemetry files of the UTC days ``since_day``..``until_day`` (``YYYY-MM-DD``, inclusive;
    None: unbounded on that side)."""
    days = [d for d in storage.list_dir(TELEMETRY_DIR, model) if d.startswith("date=")]
    if not days:
        raise NotFound(f"model {model!r} has no telemetry under {TELEMETRY_DIR}/{model}/ "
                       "(serve.telemetry off, or nothing flushed yet)")
    out = []
    for day in days:
        if until_day is not None and day.removeprefix("date=") > until_day:
            continue
        if since_day is not None and day.removeprefix("date=") < since_day:
            continue
        out += [storage.path(TELEMETRY_DIR, model, day, f) for f in storage.list_dir(TELEMETRY_DIR, model, day)
                if f.endswith(".parquet")]
    return out


def _read_predictions(storage: Storage, model: str, key_columns: Sequence[str], keep: pa.Array, *,
                      since_day: str | None = None, until_day: str | None = None) -> pa.Table:
    """The telemetry rows whose key is in ``keep`` (text, see :func:`_as_text`), the key read
    from the first of ``key_columns`` a file has (files without one are skipped), from the
    files of the days ``since_day``..``until_day``: columns request_id, request_row, ts,
    version, prediction and ``__key``."""
    parts = []
    for path in _telemetry_files(storage, model, since_day=since_day, until_day=until_day):
        try:
            names = pq.read_schema(path, filesystem=storage.fs).names
            source = next((c for c in key_columns if c in names), None)
            if source is None:
                continue
            cols = list(dict.fromkeys([*(c for c in _PREDICTION_COLUMNS if c in names), source]))
            table = pq.read_table(path, filesystem=storage.fs, columns=cols)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read telemetry file {path!r}: {exc}") from None
        key = _as_text(table.column(source))
        table = table.append_column("__key", key).filter(pc.is_in(key, value_set=keep))
        if table.num_rows:
            parts.append(_prediction_frame(table))
    if not parts:
        return _prediction_frame(pa.table({"__key": pa.array([], pa.string())}))
    if len({t.schema.field("prediction").type for t in parts}) > 1:  # numbers in some files, JSON text in others
        parts = [t.set_column(t.schema.get_field_index("prediction"), "prediction",
                              pc.cast(t.column("prediction"), pa.string())) for t in parts]
    return pa.concat_tables(parts)


def _prediction_frame(table: pa.Table) -> pa.Table:
    n = table.num_rows

    def col(name: str, t: pa.DataType) -> pa.ChunkedArray | pa.Array:
        return pc.cast(table.column(name), t) if name in table.column_names else pa.nulls(n, t)

    prediction = table.column("prediction") if "prediction" in table.column_names else pa.nulls(n, pa.float64())
    return pa.table({"request_id": col("request_id", pa.string()), "request_row": col("request_row", pa.int64()),
                     "ts": col("ts", pa.float64()), "version": col("version", pa.int64()), "prediction": prediction,
                     "__key": table.column("__key")})


# -- normalizing keys, times and labels ----------------------------------------------------------


def _as_text(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Keys as text, so both sides compare whatever their types: integral numbers as integers
    (``31.0`` -> ``"31"``, as telemetry stores numeric features as float64), booleans lowercase."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_floating(t):
        integral = pc.and_(pc.is_finite(col), pc.equal(col, pc.floor(col)))
        as_int = pc.cast(pc.cast(pc.if_else(integral, col, 0.0), pa.int64(), safe=False), pa.string())
        return pc.if_else(integral, as_int, pc.cast(col, pa.string()))
    if pa.types.is_boolean(t):
        return pc.if_else(col, "true", "false")
    return col if pa.types.is_string(t) else pc.cast(col, pa.string())


def _epoch_seconds(col: pa.ChunkedArray | pa.Array, what: str) -> pa.Array:
    """A time column as float epoch seconds: timestamps/dates (naive ones are UTC), numbers
    (already epoch seconds) or ISO-8601 text."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz=getattr(t, "tz", None))), pa.int64())
        return pc.divide(pc.cast(micros, pa.float64()), 1e6)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _plausible_seconds(pc.cast(col, pa.float64()), what)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        import pandas as pd

        try:
            parsed = pd.to_datetime(pd.Series(col.to_pylist(), dtype="object"), utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{what} holds text that is not an ISO-8601 time: {exc}") from None
        seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        return pa.array(seconds.where(parsed.notna(), None).tolist(), pa.float64())
    raise ValidationError(f"{what} has type {t}: expected a timestamp, a date, epoch seconds or ISO-8601 text")


#: Unix seconds of 3000-01-01T00:00:00Z: a later number is a unit mistake (epoch milliseconds).
MAX_EPOCH_S = 32_503_680_000.0


def _plausible_seconds(seconds: pa.Array, what: str) -> pa.Array:
    """Numbers read as epoch seconds: not finite, or past the year 3000, is a ValidationError
    naming the column (epoch milliseconds are the usual mistake)."""
    finite = pc.is_finite(seconds)
    if not pc.all(pc.fill_null(finite, True)).as_py():
        bad = seconds.filter(pc.invert(pc.fill_null(finite, True)))[0].as_py()
        raise ValidationError(f"{what} holds {bad}: expected finite epoch seconds, a timestamp or ISO-8601 text")
    high = pc.max(seconds).as_py()
    if high is not None and high > MAX_EPOCH_S:
        unit = ("milliseconds: divide by 1000" if high / 1000 <= MAX_EPOCH_S
                else "micro- or nanoseconds: give epoch seconds")
        raise ValidationError(f"{what} holds {high:.0f}, after the year 3000: it looks like epoch {unit} "
                              "(or give a timestamp or ISO-8601 text)")
    return seconds


def _label(col: pa.ChunkedArray | pa.Array, what: str) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        return pc.cast(col, pa.float64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.cast(col, pa.string())
    raise ValidationError(f"{what} has type {t}: a label is a number, a boolean or text")


def _row_index(col: pa.ChunkedArray | pa.Array, column: str) -> pa.Array:
    """The ``request_row`` column as int64: whole numbers only (``2.0`` passes, ``1.5`` or text
    is a ValidationError naming the column)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    try:
        return pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ValidationError(f"column {column!r} (the instance's index in its request) must hold whole numbers, "
                              f"got {col.type} values that are not ({detail})") from None


def _output(n: int, **columns: Any) -> pa.Table:
    types = {"request_id": pa.string(), "request_row": pa.int64(), "version": pa.int64(), "ts": pa.float64(),
             "entity": pa.string(), "outcome_ts": pa.float64()}
    out = {}
    for name in OUTCOME_COLUMNS:
        value = columns.get(name)
        if value is None:
            out[name] = pa.nulls(n, types.get(name, pa.float64()))
        else:
            out[name] = pc.cast(value, types[name]) if name in types else value
    return pa.table(out)


def _latest_per(predictions: pa.Table, keys: list[str]) -> pa.Table:
    """One prediction per ``keys`` value (a client may reuse a request id): the latest by ``ts``."""
    predictions = predictions.filter(pc.is_valid(predictions.column(keys[0])))
    others = [c for c in predictions.column_names if c not in keys]
    latest = (predictions.sort_by([("ts", "descending")]).group_by(keys, use_threads=False)
              .aggregate([(c, "first") for c in others]))
    return latest.rename_columns([*keys, *others])


# -- joins (pure) ---------------------------------------------------------------------------------


def join_by_request_id(outcomes: pa.Table, predictions: pa.Table, *, label_column: str,
                       request_id_column: str = "request_id", row_column: str | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Outcomes x predictions by request id (and ``row_column``: the instance's index in its
    request). ``predictions``: telemetry columns ``request_id``, ``request_row``, ``ts``,
    ``version``, ``prediction``. Returns (matched rows in :data:`OUTCOME_COLUMNS`, counts)."""
    n_out = outcomes.num_rows
    label = _label(outcomes.column(label_column), f"label column {label_column!r}")
    left = {"__i": pa.array(range(n_out), pa.int64()), "request_id": _as_text(outcomes.column(request_id_column))}
    if row_column is not None:
        left["request_row"] = _row_index(outcomes.column(row_column), row_column)
    left_table = pa.table(left)
    preds = _latest_per(predictions.select(list(_PREDICTION_COLUMNS)), ["request_id", "request_row"])
    ambiguous = 0
    if row_column is None:
        per_request = preds.group_by("request_id").aggregate([([], "count_all")])
        multi = per_request.filter(pc.greater(per_request.column("count_all"), 1)).column("request_id")
        is_ambiguous = pc.fill_null(pc.is_in(left_table.column("request_id"), value_set=multi), False)
        ambiguous = int(pc.sum(pc.cast(is_ambiguous, pa.int64())).as_py() or 0)
        left_table = left_table.filter(pc.invert(is_ambiguous))
        joined = left_table.join(preds, keys="request_id", join_type="inner")
    else:
        joined = left_table.join(preds, keys=["request_id", "request_row"], join_type="inner")
    joined = joined.sort_by("__i")
    matched = joined.num_rows
    table = _output(matched, request_id=joined.column("request_id"), request_row=joined.column("request_row"),
                    label=label.take(joined.column("__i")), prediction=joined.column("prediction"),
                    version=joined.column("version"), ts=joined.column("ts"))
    return table, {"rows": n_out, "matched": matched, "unmatched": n_out - matched - ambiguous, "ambiguous": ambiguous}


def join_point_in_time(outcomes: pa.Table, predictions: pa.Table, *, label_column: str, entity_column: str,
                       time_column: str) -> tuple[pa.Table, dict[str, int]]:
    """For each outcome row, the latest prediction for its entity at or before its time.
    ``predictions``: telemetry columns plus ``__key`` (the entity as text, see :func:`_as_text`).
    Returns (matched rows in :data:`OUTCOME_COLUMNS`, counts)."""
    from mlplat.features.pit import FEATURE_TIME_COLUMN, pit_join_tables

    n_out = outcomes.num_rows
    labels = pa.table({"__entity": _as_text(outcomes.column(entity_column)),
                       "__t": _epoch_seconds(outcomes.column(time_column), f"time column {time_column!r}"),
                       "label": _label(outcomes.column(label_column), f"label column {label_column!r}")})
    features = pa.table({"__entity": predictions.column("__key"), "ts": predictions.column("ts"),
                         **{c: predictions.column(c) for c in ("request_id", "request_row", "version", "prediction")}})
    joined = pit_join_tables(labels, features, "__entity", "__t", "ts",
                             feature_columns=["request_id", "request_row", "version", "prediction"])
    joined = joined.filter(pc.is_valid(joined.column(FEATURE_TIME_COLUMN)))
    matched = joined.num_rows
    table = _output(matched, request_id=joined.column("request_id"), request_row=joined.column("request_row"),
                    label=joined.column("label"), prediction=joined.column("prediction"),
                    version=joined.column("version"), ts=joined.column(FEATURE_TIME_COLUMN),
                    entity=joined.column("__entity"), outcome_ts=joined.column("__t"))
    return table, {"rows": n_out, "matched": matched, "unmatched": n_out - matched, "ambiguous": 0}


# -- the ingest -------------------------------------------------------------------------------------


def _day(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, dt.timezone.utc).date().isoformat()


def _time_range(outcomes: pa.Table, time_column: str) -> tuple[float, float] | None:
    times = _epoch_seconds(outcomes.column(time_column), f"time column {time_column!r}")
    low, high = pc.min(times).as_py(), pc.max(times).as_py()
    return None if low is None or high is None else (float(low), float(high))


def ingest_outcomes(storage: Storage, registry: Registry, name: str, files: Sequence[str], *, label_column: str,
                    request_id_column: str | None = "request_id", entity_column: str | None = None,
                    time_column: str | None = None, batch: str | None = None, max_days: int = 30) -> OutcomeBatch:
    """Join the outcome ``files`` to model ``name``'s predictions and register the matched rows.

    By request id (``request_id_column``, plus a ``request_row`` column when the outcomes have
    one), or point-in-time with ``entity_column`` and ``time_column`` (the outcome's time: the
    latest prediction at or before it). Writes ``outcomes/<name>/<batch>.parquet`` (``batch``:
    default a UTC time and a random suffix) and adds it to dataset ``outcomes-<name>`` (kind
    ``outcomes``). Nothing is written when no row matched. Errors name the input: a missing
    column, an unreadable file, a model without telemetry, epoch milliseconds given as seconds.

    Which telemetry a request-id join reads: with ``time_column`` (and no ``entity_column``)
    the time each outcome's *request* was made, the UTC days of that range, one day of slack on
    each side; without one, the last ``max_days`` days up to today (a note in the result says
    so: older predictions are not searched and their outcomes count as unmatched)."""
    validate_name(name, "model name")
    if max_days < 1:
        raise ValidationError(f"max_days must be at least 1, got {max_days!r}")
    pit = entity_column is not None or (time_column is not None and not request_id_column)
    if pit and not (entity_column and time_column):
        raise ValidationError("a point-in-time join needs both an entity column and a time column (--entity, --time)")
    if not pit and not request_id_column:
        raise ValidationError("give a request id column, or an entity and a time column for a point-in-time join")
    batch = batch or f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    if not _BATCH.fullmatch(batch):
        raise ValidationError(f"batch {batch!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    registry.get_model(name)  # NotFound names the model
    dataset, rel = outcomes_dataset_name(name), f"{batch}.parquet"
    if storage.exists(OUTCOMES_DIR, name, rel):
        raise AlreadyExists(f"outcome batch {batch!r} of model {name!r} exists already ({OUTCOMES_DIR}/{name}/{rel})")

    notes: list[str] = []
    if pit:
        assert entity_column is not None and time_column is not None
        outcomes = read_outcome_files(storage, files, list(dict.fromkeys([entity_column, time_column, label_column])))
        span = _time_range(outcomes, time_column)
        until = None if span is None else _day(span[1])
        keys = pc.unique(pc.drop_null(_as_text(outcomes.column(entity_column))))
        predictions = _read_predictions(storage, name, [f"feature.{entity_column}", f"context.{entity_column}"], keys,
                                        until_day=until)
        table, counts = join_point_in_time(outcomes, predictions, label_column=label_column,
                                           entity_column=entity_column, time_column=time_column)
    else:
        assert request_id_column is not None
        wanted = [request_id_column, label_column, *([time_column] if time_column else [])]
        outcomes = read_outcome_files(storage, files, list(dict.fromkeys(wanted)), optional=["request_row"])
        row_column = "request_row" if "request_row" in outcomes.column_names else None
        keys = pc.unique(pc.drop_null(_as_text(outcomes.column(request_id_column))))
        if time_column:
            span = _time_range(outcomes, time_column)
            if span is None:
                raise ValidationError(f"time column {time_column!r} holds no time: cannot tell which days of "
                                      "telemetry to search (leave it out to search the last max_days days)")
            since, until = _day(span[0] - 86400), _day(span[1] + 86400)
        else:
            today = dt.datetime.now(dt.timezone.utc).date()
            since, until = (today - dt.timedelta(days=max_days)).isoformat(), None
            notes.append(f"searched the telemetry of the last {max_days} days (since {since}): outcomes of older "
                         "predictions count as unmatched; give a time column (the request time) or a larger max_days")
        predictions = _read_predictions(storage, name, ["request_id"], keys, since_day=since, until_day=until)
        table, counts = join_by_request_id(outcomes, predictions, label_column=label_column,
                                           request_id_column=request_id_column, row_column=row_column)
    path = None
    if table.num_rows:
        add_files = _catalog_add_files()
        with storage.open_write(OUTCOMES_DIR, name, rel) as handle:
            pq.write_table(table, handle)
        path = f"{OUTCOMES_DIR}/{name}/{rel}"
        try:
            add_files(storage, registry, dataset, f"{OUTCOMES_DIR}/{name}", [rel], kind=OUTCOMES_KIND,
                      description=f"outcomes (delayed labels) of model {name} joined to its predictions")
        except BaseException:
            storage.delete(OUTCOMES_DIR, name, rel)  # unregistered: the same batch can be ingested again
            raise
    return OutcomeBatch(model=name, batch=batch, dataset=dataset, path=path, rows=counts["rows"],
                        matched=counts["matched"], unmatched=counts["unmatched"], ambiguous=counts["ambiguous"],
                        notes=tuple(notes))


def _catalog_add_files() -> Any:
    try:
        from mlplat.data.catalog import add_files
    except ImportError:
        raise MlplatError("the data catalog cannot register files in place yet (mlplat.data.catalog.add_files); "
                          "outcomes were not ingested") from None
    return add_files
