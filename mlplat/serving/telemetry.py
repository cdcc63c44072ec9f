"""Telemetry of every inference: buffered in the ingress, flushed as Parquet to
``telemetry/<name>/date=YYYY-MM-DD/<writer>-<ms>-<n>.parquet`` (hive-partitioned, UTC dates),
and registered as partitions of the catalog dataset ``telemetry-<name>`` (kind ``telemetry``).

The request path only appends a reference to what it already holds (rows, predictions, the
call context) to a bounded buffer: rows are built, features encoded and files written by
:meth:`TelemetryWriter.flush` in the flush thread, which hands the files to
:class:`CatalogSync`; its own thread registers them in the catalog in batches, so a slow
registry never holds up a Parquet write. Past ``max_rows`` buffered rows the oldest requests
are dropped and counted per model; a failed write keeps its rows for the next flush (still
bounded); a failed catalog registration is counted and retried -- none of it reaches a request.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplat.errors import InvalidName, MlplatError, NotFound, SchemaMismatch, ValidationError
from mlplat.storage import Storage

__all__ = [
    "TelemetryWriter",
    "TelemetryFile",
    "CatalogSync",
    "CatalogUnavailable",
    "RegistryTimeout",
    "MAX_ABANDONED_CALLS",
    "catalog_registrar",
    "context_from_headers",
    "request_id_of",
    "telemetry_table",
    "telemetry_dataset_name",
    "TELEMETRY_DIR",
    "TELEMETRY_KIND",
    "CONTEXT_HEADER_PREFIX",
    "RAW_FEATURES_COLUMN",
    "MAX_CONTEXT_KEYS",
    "MAX_CONTEXT_VALUE_CHARS",
    "MAX_HEADER_CHARS",
    "MAX_REQUEST_ID_CHARS",
]

log = logging.getLogger("mlplat.serving")

TELEMETRY_DIR = "telemetry"
TELEMETRY_KIND = "telemetry"
CONTEXT_HEADER_PREFIX = "x-mlplat-context-"
#: The telemetry column that says whether a row came with raw features (drift reads only those).
RAW_FEATURES_COLUMN = "raw_features"
#: At most this many ``x-mlplat-context-*`` headers per request become columns (the first ones).
MAX_CONTEXT_KEYS = 16
#: Context values and the user agent are cut to this many characters.
MAX_CONTEXT_VALUE_CHARS = 256
#: The caller header (``x-mlplat-caller``) is cut to this many characters.
MAX_HEADER_CHARS = 128
#: A longer ``x-request-id`` header is not used as the request id (a uuid is).
MAX_REQUEST_ID_CHARS = 256
_PREFIX = CONTEXT_HEADER_PREFIX.encode()
_CONTEXT_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


# -- the call context (request path: cheap, pure) ---------------------------------------------


def context_from_headers(raw_headers: Iterable[tuple[bytes, bytes]], *, keys: frozenset[str] | None = None,
                         max_keys: int = MAX_CONTEXT_KEYS, max_value_chars: int = MAX_CONTEXT_VALUE_CHARS) -> dict[str, str]:
    """``x-mlplat-context-<key>: value`` headers (ASGI raw headers) -> ``{key: value}``.

    Keys are lowercase ``[a-z0-9][a-z0-9_-]{0,63}`` (others are ignored), only those in
    ``keys`` when given (``serve.telemetry_context_keys``; empty: none); the first ``max_keys`` win, a repeated key keeps its first value,
    values are cut to ``max_value_chars``.

    >>> context_from_headers([(b"x-mlplat-context-tenant", b"acme"), (b"user-agent", b"curl"),
    ...                       (b"x-mlplat-context-Bad Key", b"x"), (b"x-mlplat-context-tenant", b"other")])
    {'tenant': 'acme'}
    """
    out: dict[str, str] = {}
    if keys is not None and not keys:  # the default: no context columns
        return out
    for name, value in raw_headers:
        if len(name) <= len(_PREFIX) or name[:len(_PREFIX)].lower() != _PREFIX:
            continue
        key = name[len(_PREFIX):].decode("latin-1")
        if key in out or not _CONTEXT_KEY.fullmatch(key) or (keys is not None and key not in keys):
            continue
        out[key] = value[:max_value_chars * 4].decode("utf-8", "replace")[:max_value_chars]
        if len(out) >= max_keys:
            break
    return out


def request_id_of(oip_id: str | None, header: str | None) -> str:
    """The request's id in telemetry: the OIP ``id`` when the client sent one, else the
    ``x-request-id`` request header (Ray Serve's proxy sets it -- the client's value or a
    uuid it generated -- and returns it as the response's ``x-request-id``), else a new
    uuid4 (hex). A header value over 256 characters is not used.

    >>> request_id_of("req-1", "h-1"), request_id_of(None, "h-1"), len(request_id_of(None, "x" * 257))
    ('req-1', 'h-1', 32)
    """
    if oip_id:
        return oip_id
    if header and len(header) <= MAX_REQUEST_ID_CHARS:
        return header
    return uuid.uuid4().hex


def telemetry_dataset_name(model: str) -> str:
    """The catalog dataset of a model's telemetry: ``telemetry-<model>``; names past the
    63-character limit keep a prefix of the model name and a hash of all of it.

    >>> telemetry_dataset_name("churn")
    'telemetry-churn'
    >>> len(telemetry_dataset_name("m" * 63))
    63
    """
    return _prefixed(TELEMETRY_KIND, model)


def _prefixed(prefix: str, model: str) -> str:
    name = f"{prefix}-{model}"
    if len(name) <= 63:
        return name
    digest = hashlib.blake2b(model.encode(), digest_size=4).hexdigest()
    return f"{name[:63 - 9]}-{digest}"


# -- the buffer ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    """One answered request as the request path left it; expanded to rows at flush."""

    ts: float
    model: str
    version: int
    endpoint: str
    request_id: str
    caller: str | None
    region: str | None
    user_agent: str | None
    latency_ms: float
    predictions: list[Any]
    rows: list[dict[str, Any]] | None
    kinds: Mapping[str, str] | None
    context: Mapping[str, str] | None
    matrix: np.ndarray | None
    bundle_sha256: str | None

    @property
    def day(self) -> str:
        return _utc_day(int(self.ts // 86_400))


@functools.lru_cache(maxsize=64)
def _utc_day(day_number: int) -> str:
    """``YYYY-MM-DD`` of the UTC day ``day_number`` days after the epoch (cached: the flush
    asks once per request)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day_number)).isoformat()


@dataclass(frozen=True)
class TelemetryFile:
    """A flushed Parquet file: ``telemetry/<model>/<partition>/<name>``."""

    model: str
    partition: str  # date=YYYY-MM-DD
    name: str
    num_rows: int

    @property
    def relative_path(self) -> str:
        """Relative to ``telemetry/<model>`` (the dataset's directory)."""
        return f"{self.partition}/{self.name}"


_BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts", "float64"), ("model", "string"), ("version", "int64"), ("request_id", "string"), ("request_row", "int64"),
    ("endpoint", "string"), ("caller", "string"), ("region", "string"), ("user_agent", "string"),
    ("latency_ms", "float64"),
)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"  # the encoders' category key of a boolean
    return value if isinstance(value, str) else str(value)


_NUMBER_TYPES = frozenset({int, float, type(None)})
_TEXT_TYPES = frozenset({str, type(None)})
_NO_ROW: dict[str, Any] = {}


def _float_array(values: list[Any]):
    import pyarrow as pa

    try:
        return pa.array(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. numpy scalars or numeric text: convert one by one
        return pa.array([None if v is None else float(v) for v in values], pa.float64())


def _text_array(values: list[Any]):
    import pyarrow as pa

    if {type(v) for v in values} <= _TEXT_TYPES:
        return pa.array(values, pa.string())
    return pa.array([_text(v) for v in values], pa.string())


def telemetry_table(requests: Sequence[_Request], *, encoded: Callable[[_Request], list[list[float]] | None] | None = None):
    """The Parquet table of a flush: one row per prediction.

    Columns: ``ts`` (epoch s), ``model``, ``version``, ``request_id``, ``request_row`` (the
    instance's index in its request), ``endpoint``, ``caller``, ``region``, ``user_agent``,
    ``latency_ms``, ``prediction`` (a number, or JSON text for a vector), ``raw_features``
    (bool: the request sent raw feature rows; False for a v2 ``input`` tensor, whose
    ``feature.*`` values are null because there were none -- not missing values),
    ``feature.<name>`` per raw feature (float64 for numeric features, text for categories),
    ``context.<key>`` per context header, and with ``encoded`` given, ``encoded``
    (list<float>, the model's input).

    Built column by column (one list comprehension per column, per-request columns repeated
    by an Arrow ``take``): the flush thread shares the GIL with the request path, so its cost
    per row is serving throughput.
    """
    import pyarrow as pa

    counts = [len(r.predictions) for r in requests]
    total = sum(counts)
    repeat = None if total == len(requests) else pa.array(np.repeat(np.arange(len(requests)), counts))

    def per_request(values: list[Any], kind: Any) -> Any:
        array = pa.array(values, kind)
        return array if repeat is None else array.take(repeat)

    arrays: dict[str, Any] = {
        "ts": per_request([r.ts for r in requests], pa.float64()),
        "model": per_request([r.model for r in requests], pa.string()),
        "version": per_request([r.version for r in requests], pa.int64()),
        "request_id": per_request([r.request_id for r in requests], pa.string()),
    }
    if repeat is None:
        arrays["request_row"] = pa.array(np.zeros(total, dtype=np.int64))
    else:
        starts = np.cumsum(counts) - np.asarray(counts)
        arrays["request_row"] = pa.array(np.arange(total, dtype=np.int64) - np.repeat(starts, counts))
    arrays["endpoint"] = per_request([r.endpoint for r in requests], pa.string())
    arrays["caller"] = per_request([r.caller for r in requests], pa.string())
    arrays["region"] = per_request([r.region for r in requests], pa.string())
    arrays["user_agent"] = per_request([r.user_agent for r in requests], pa.string())
    arrays["latency_ms"] = per_request([r.latency_ms for r in requests], pa.float64())

    predictions = [p for r in requests for p in r.predictions]
    if {type(p) for p in predictions} <= _NUMBER_TYPES or all(p is None or _number(p) for p in predictions):
        arrays["prediction"] = _float_array(predictions)
    else:
        arrays["prediction"] = pa.array([None if p is None else p if isinstance(p, str) else json.dumps(p)
                                         for p in predictions], pa.string())
    arrays[RAW_FEATURES_COLUMN] = per_request([r.rows is not None for r in requests], pa.bool_())

    feature_kind: dict[str, str] = {}
    for r in requests:
        if r.rows is not None:
            for key in (r.kinds or r.rows[0]):
                if key not in feature_kind:
                    feature_kind[key] = (r.kinds or {}).get(key, "")
    if feature_kind:
        flat_rows: list[Mapping[str, Any]] = []
        for r, n in zip(requests, counts, strict=True):
            flat_rows.extend(r.rows if r.rows is not None else [_NO_ROW] * n)
        for key, kind in feature_kind.items():
            values = [row.get(key) for row in flat_rows]
            numeric = kind.startswith("number") or (
                kind == "" and ({type(v) for v in values} <= _NUMBER_TYPES or all(v is None or _number(v) for v in values)))
            arrays[f"feature.{key}"] = _float_array(values) if numeric else _text_array(values)
    context_keys = list(dict.fromkeys(k for r in requests if r.context for k in r.context))
    for key in context_keys:
        arrays[f"context.{key}"] = per_request([(r.context or {}).get(key) for r in requests], pa.string())
    if encoded is not None:
        encoded_rows: list[Any] = []
        for r, n in zip(requests, counts, strict=True):
            vectors = encoded(r)
            encoded_rows.extend(vectors if vectors is not None else [None] * n)
        arrays["encoded"] = pa.array(encoded_rows, pa.list_(pa.float32()))
    return pa.table(arrays)


class TelemetryWriter:
    """Thread-safe bounded buffer of answered requests, flushed to Parquet on demand.

    :meth:`record` runs on the request path: it stores references and never raises, blocks on
    I/O or waits for a flush (the lock guards a deque append). ``encoded=True`` adds the
    ``encoded`` column at flush: the v2 ``input`` matrix as sent, or raw rows encoded by the
    version's fitted encoder (read once per version from its ``bundle.json``)."""

    def __init__(self, storage: Storage, *, max_rows: int = 20_000, writer_id: str | None = None,
                 encoded: bool = False, max_files_per_flush: int = 1_000):
        self._storage, self._max_rows, self._encoded = storage, max_rows, encoded
        self._writer_id = writer_id or uuid.uuid4().hex[:8]
        self._max_files = max_files_per_flush
        self._pending: deque[_Request] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._seq = 0
        self._dropped: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._encoders: dict[tuple[str, int], Any] = {}
        self.dropped_rows = 0
        self.flush_errors = 0

    def record(self, model: str, version: int, rows: list[dict[str, Any]] | None, predictions: list[Any], *,
               request_id: str, caller: str | None, endpoint: str, latency_ms: float, region: str | None = None,
               user_agent: str | None = None, context: Mapping[str, str] | None = None,
               kinds: Mapping[str, str] | None = None, matrix: np.ndarray | None = None,
               bundle_sha256: str | None = None) -> None:
        """Buffer one answered request (``rows``: its raw feature rows, or None for an encoded
        ``matrix``; ``kinds``: the version's raw feature kinds, ``InputSchema.columns``)."""
        item = _Request(time.time(), model, version, endpoint, request_id, caller, region, user_agent, latency_ms,
                        predictions, rows, kinds, context or None, matrix if self._encoded else None, bundle_sha256)
        with self._lock:
            self._pending.append(item)
            self._count += len(predictions)
            if self._count > self._max_rows:
                self._drop_oldest()

    def _drop_oldest(self) -> None:  # under the lock
        while self._count > self._max_rows and self._pending:
            item = self._pending.popleft()
            n = len(item.predictions)
            self._count -= n
            self.dropped_rows += n
            self._dropped[item.model] = self._dropped.get(item.model, 0) + n

    @property
    def pending_rows(self) -> int:
        return self._count

    def take_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(rows dropped per model, failures per stage) since the last call (for metrics)."""
        with self._lock:
            dropped, self._dropped = self._dropped, {}
            errors, self._errors = self._errors, {}
        return dropped, errors

    def count_error(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self._errors[stage] = self._errors.get(stage, 0) + n

    def flush(self) -> list[TelemetryFile]:
        """Write the buffered requests, one file per (model, UTC date); returns the files
        written. Requests whose write failed go back to the front of the buffer."""
        import pyarrow.parquet as pq

        with self._lock:
            pending, self._pending, self._count = self._pending, deque(), 0
        groups: dict[tuple[str, str], list[_Request]] = {}
        for item in pending:
            groups.setdefault((item.model, item.day), []).append(item)
        written: list[TelemetryFile] = []
        failed: list[_Request] = []
        for i, ((model, day), items) in enumerate(groups.items()):
            if i >= self._max_files:
                failed.extend(items)  # the next flush writes them
                continue
            try:
                table = telemetry_table(items, encoded=self._encode if self._encoded else None)
                sink = io.BytesIO()
                pq.write_table(table, sink)
                with self._lock:
                    self._seq += 1
                    seq = self._seq
                name = f"{self._writer_id}-{int(time.time() * 1000)}-{seq}.parquet"
                self._storage.write_bytes(sink.getvalue(), TELEMETRY_DIR, model, f"date={day}", name)
                written.append(TelemetryFile(model, f"date={day}", name, table.num_rows))
            except Exception:
                log.warning("telemetry write for %s failed; rows kept for the next flush", model, exc_info=True)
                self.flush_errors += 1
                self.count_error("flush")
                failed.extend(items)
        if failed:
            failed.sort(key=lambda r: r.ts)
            with self._lock:  # older than anything recorded meanwhile: back to the front, still bounded
                self._pending.extendleft(reversed(failed))
                self._count += sum(len(r.predictions) for r in failed)
                if self._count > self._max_rows:
                    self._drop_oldest()
        return written

    # -- encoded features (flush thread) ---------------------------------------------------------
    def _encode(self, item: _Request) -> list[list[float]] | None:
        if item.matrix is not None:
            return item.matrix.astype(np.float32, copy=False).tolist()
        if item.rows is None:
            return None
        try:
            encoder = self._encoder(item.model, item.version, item.bundle_sha256)
            return None if encoder is None else encoder.to_numpy(item.rows).tolist()
        except Exception:
            log.debug("encoding telemetry of %s v%s failed", item.model, item.version, exc_info=True)
            self.count_error("encode")
            return None

    def _encoder(self, model: str, version: int, bundle_sha256: str | None) -> Any:
        key = (model, version)
        if key not in self._encoders:
            from mlplat.features import FeatureEncoder
            from mlplat.models.bundle import BUNDLE_FILE, bundle_dir
            from mlplat.storage import sha256_bytes

            raw = self._storage.read_bytes(*bundle_dir(model, version), BUNDLE_FILE)
            if bundle_sha256 is not None and sha256_bytes(raw) != bundle_sha256:
                raise ValidationError(f"{model} v{version}: bundle.json does not match the registry's sha256")
            meta = json.loads(raw)
            if len(self._encoders) >= 64:  # a few versions per model are live at once
                self._encoders.pop(next(iter(self._encoders)))
            self._encoders[key] = FeatureEncoder.from_json(meta["encoder"]) if meta.get("encoder") else None
        return self._encoders[key]


# -- the catalog (its own thread) ---------------------------------------------------------------

#: ``(model, partition, [file paths relative to telemetry/<model>]) -> None``; raises on failure.
Registrar = Callable[[str, str, list[str]], None]
#: Errors that retrying cannot fix (a file the catalog refuses, or that is gone): the files leave the queue.
_PERMANENT = (SchemaMismatch, ValidationError, InvalidName, NotFound)
#: The longest the catalog thread sleeps before it looks at its queue again.
_MAX_WAIT_S = 1.0


class CatalogUnavailable(MlplatError):
    """The data catalog cannot register files in place (``mlplat.data.catalog.add_files``)."""


class RegistryTimeout(MlplatError, TimeoutError):
    """A registry call of the catalog thread took longer than its timeout and was abandoned."""


@dataclass
class _Group:
    files: list[str] = field(default_factory=list)
    attempts: int = 0
    next_try: float = 0.0


class CatalogSync:
    """Registers flushed telemetry files in the data catalog, on a daemon thread of its own.

    The flush thread only hands files over (:meth:`add`: a lock and a list append); it never
    waits for the registry. Files queue per (model, partition); the thread (:meth:`start`)
    registers a group with one call of ``register`` -- all its queued files -- at most every
    ``interval_s`` per group (a group's first files go at once). A failed group stays queued
    and is retried after ``max(interval_s, backoff)``, the backoff ``retry_s`` doubling up to
    ``max_retry_s``; every failure is counted in ``errors``. When the catalog refuses a batch
    for good (a schema conflict, a file that is gone), the batch is registered file by file,
    so one bad file does not drop the others: the refused files leave the queue, counted in
    ``rejected``. Past ``max_files`` queued files the oldest are dropped (they stay on disk,
    unlisted) and counted in ``dropped_files``. The registrar must be idempotent per file (a
    retry after an unknown outcome -- a timeout -- sends the same files again)."""

    def __init__(self, register: Registrar, *, interval_s: float = 60.0, retry_s: float = 5.0,
                 max_retry_s: float = 300.0, max_files: int = 10_000, on_error: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._register, self._interval_s, self._retry_s, self._max_retry_s = register, interval_s, retry_s, max_retry_s
        self._max_files, self._on_error, self._clock = max_files, on_error, clock
        self._groups: dict[tuple[str, str], _Group] = {}
        self._last_call: dict[tuple[str, str], float] = {}  # when each group was last sent (the interval)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._syncing = threading.Lock()  # one sync at a time (the thread, or a caller without it)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._requested = 0  # sync_now() requests
        self._served = 0  # ... and how many the thread has answered
        self.registered_files = 0
        self.errors = 0
        self.rejected = 0
        self.dropped_files = 0
        #: Why syncing stopped for good (the catalog cannot take the files at all), else None.
        self.disabled: str | None = None

    @property
    def pending_files(self) -> int:
        return sum(len(g.files) for g in self._groups.values())

    def add(self, files: Iterable[TelemetryFile]) -> None:
        """Queue flushed files (the flush thread: never waits for the registry)."""
        with self._lock:
            if self.disabled is not None:
                return
            for f in files:
                self._groups.setdefault((f.model, f.partition), _Group()).files.append(f.relative_path)
            excess = self.pending_files - self._max_files
            for key in list(self._groups):  # oldest groups first (insertion order)
                if excess <= 0:
                    break
                group = self._groups[key]
                cut = min(excess, len(group.files))
                del group.files[:cut]
                excess -= cut
                self.dropped_files += cut
                if not group.files:
                    del self._groups[key]
            self._cv.notify_all()

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the registration thread (a daemon; idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="mlplat-telemetry-catalog", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after the registration in progress (if any)."""
        with self._lock:
            self._stopping = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sync_now(self, timeout_s: float = 60.0) -> bool:
        """Register everything queued now, ignoring the interval and backoff (tests, shutdown);
        waits up to ``timeout_s`` for the thread to finish it. Without a running thread, this
        call registers. Returns whether it finished in time."""
        if not self.running:
            self.sync(force=True)
            return True
        with self._cv:
            self._requested += 1
            ticket = self._requested
            self._cv.notify_all()
            return self._cv.wait_for(lambda: self._served >= ticket or self._stopping, timeout_s)

    def _wait_s(self) -> float | None:  # under the lock: seconds until a group is due, None: none queued
        if not any(g.files for g in self._groups.values()):
            return None
        now = self._clock()
        return max(0.0, min(self._due_at(k, g) for k, g in self._groups.items() if g.files) - now)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    if self._requested > self._served:
                        break
                    wait = self._wait_s()
                    if wait is not None and wait <= 0:
                        break
                    self._cv.wait(_MAX_WAIT_S if wait is None else min(wait, _MAX_WAIT_S))
                if self._stopping:
                    return
                ticket = self._requested
                force = ticket > self._served
            try:
                with self._syncing:  # waits for a sync another caller runs, rather than spinning
                    self._sync(force)
            except Exception:  # never let the thread die: the queue is retried next round
                log.exception("telemetry catalog registration failed")
            with self._cv:
                self._served = max(self._served, ticket)
                self._cv.notify_all()

    # -- one round ---------------------------------------------------------------------------------
    def _due_at(self, key: tuple[str, str], group: _Group) -> float:
        last = self._last_call.get(key)
        return max(group.next_try, -math.inf if last is None else last + self._interval_s)

    def sync(self, *, force: bool = False) -> int:
        """Register every due group (every group with ``force``); returns how many files were
        registered (0 while another sync runs). The thread calls it; so can a test."""
        if not self._syncing.acquire(blocking=False):
            return 0
        try:
            return self._sync(force)
        finally:
            self._syncing.release()

    def _sync(self, force: bool) -> int:
        now = self._clock()
        with self._lock:
            due = [(key, group, list(group.files)) for key, group in self._groups.items()
                   if group.files and (force or self._due_at(key, group) <= now)]
            for key in [k for k, t in self._last_call.items() if t + self._interval_s < now and k not in self._groups]:
                del self._last_call[key]  # an idle group's interval has passed: forget it
        done = 0
        for (model, partition), group, files in due:
            with self._lock:
                self._last_call[(model, partition)] = self._clock()
            try:
                self._register(model, partition, files)
            except CatalogUnavailable as exc:
                self._disable(exc)
                return done
            except _PERMANENT as exc:
                if len(files) == 1:
                    self._reject(model, partition, files, exc)
                    continue
                log.warning("catalog refused a batch of %d telemetry files of %s %s (%s); registering them one by one",
                            len(files), model, partition, exc)
                try:
                    done += self._one_by_one(model, partition, group, files)
                except CatalogUnavailable as exc2:
                    self._disable(exc2)
                    return done
            except Exception as exc:
                self._retry_later(model, partition, group, exc)
            else:
                done += self._registered(model, partition, files)
        return done

    def _one_by_one(self, model: str, partition: str, group: _Group, files: list[str]) -> int:
        """A refused batch, file by file: the good files are registered, the refused ones leave
        the queue (counted); a transient failure leaves the rest queued for the next round."""
        done = 0
        for f in files:
            try:
                self._register(model, partition, [f])
            except CatalogUnavailable:
                raise
            except _PERMANENT as exc:
                self._reject(model, partition, [f], exc)
            except Exception as exc:
                self._retry_later(model, partition, group, exc)
                break
            else:
                done += self._registered(model, partition, [f])
        return done

    def _registered(self, model: str, partition: str, files: list[str]) -> int:
        self.registered_files += len(files)
        self._forget(model, partition, files, reset=True)
        return len(files)

    def _reject(self, model: str, partition: str, files: list[str], exc: BaseException) -> None:
        log.error("catalog refused telemetry file(s) of %s %s (%d dropped from the queue, left on disk unlisted): %s",
                  model, partition, len(files), exc)
        self.rejected += len(files)
        self._forget(model, partition, files, reset=False)
        self._failed()

    def _retry_later(self, model: str, partition: str, group: _Group, exc: BaseException) -> None:
        with self._lock:
            group.attempts += 1
            group.next_try = self._clock() + min(self._max_retry_s, self._retry_s * 2 ** (group.attempts - 1))
            attempts = group.attempts
        log.warning("registering telemetry of %s %s in the catalog failed (attempt %d, retried): %s: %s",
                    model, partition, attempts, type(exc).__name__, exc)
        self._failed()

    def _disable(self, exc: BaseException) -> None:
        log.error("telemetry is not registered in the data catalog: %s", exc)
        self.disabled = str(exc)
        self._failed()
        with self._lock:
            self._groups.clear()

    def _failed(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error()

    def _forget(self, model: str, partition: str, files: list[str], *, reset: bool) -> None:
        with self._lock:
            group = self._groups.get((model, partition))
            if group is None:
                return
            sent = set(files)
            group.files = [f for f in group.files if f not in sent]
            if reset:
                group.attempts, group.next_try = 0, 0.0
            if not group.files:
                del self._groups[(model, partition)]


#: Abandoned registry calls (past their timeout, still running) a registrar tolerates; past
#: it, calls fail at once until one of them returns.
MAX_ABANDONED_CALLS = 4


class _TimedCalls:
    """Calls that return within ``timeout_s``: each runs on a daemon worker thread, and one still
    running after ``timeout_s`` is abandoned (it may still finish) with :class:`RegistryTimeout`.
    For the synchronous registry, whose transport has no per-call timeout (an actor call waits
    as long as it takes)."""

    def __init__(self, timeout_s: float):
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self.abandoned = 0  # still running past their timeout

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.abandoned >= MAX_ABANDONED_CALLS:
                raise RegistryTimeout(f"registry call {name}() not sent: {self.abandoned} earlier calls are still "
                                      f"running past their {self._timeout_s:g} s timeout")
        done = threading.Event()
        box: dict[str, Any] = {}
        abandoned = [False]

        def work() -> None:
            try:
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            finally:
                with self._lock:
                    done.set()
                    if abandoned[0]:
                        self.abandoned -= 1

        threading.Thread(target=work, name=f"mlplat-registry-{name}", daemon=True).start()
        if not done.wait(self._timeout_s):
            with self._lock:
                if not done.is_set():
                    abandoned[0] = True
                    self.abandoned += 1
                    raise RegistryTimeout(f"registry call {name}() took longer than {self._timeout_s:g} s; abandoned "
                                          "(its files are sent again)")
        if "error" in box:
            raise box["error"]
        return box["result"]


class _TimedRegistry:
    """A registry whose every call goes through :class:`_TimedCalls`."""

    def __init__(self, registry: Any, calls: _TimedCalls):
        self._registry, self._calls = registry, calls

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._registry, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._calls.run(name, fn, *args, **kwargs)

        return call


def catalog_registrar(storage: Storage, registry: Callable[[], Any], *, timeout_s: float = 30.0) -> Registrar:
    """The registrar of :class:`CatalogSync` on the data catalog: the files of a (model,
    partition) join partition ``date=...`` of dataset ``telemetry-<model>`` (kind
    ``telemetry``, directory ``telemetry/<model>``), registered where they lie, with one
    ``add_files`` call. ``registry``: builds the (synchronous) registry on first use, in the
    catalog thread; building it and every registry call then gets ``timeout_s`` (else
    :class:`RegistryTimeout`: counted and retried like any failure)."""
    holder: list[Any] = []
    calls = _TimedCalls(timeout_s)

    def register(model: str, partition: str, files: list[str]) -> None:
        try:
            from mlplat.data.catalog import add_files
        except ImportError:
            raise CatalogUnavailable("the data catalog has no add_files (register files in place): telemetry "
                                     "files are written but not registered") from None
        if not holder:
            holder.append(_TimedRegistry(calls.run("connect", registry), calls))
        add_files(storage, holder[0], telemetry_dataset_name(model), f"{TELEMETRY_DIR}/{model}", files,
                  partition=partition, kind=TELEMETRY_KIND,
                  description=f"inference telemetry of model {model} (one row per prediction)")

    return register
