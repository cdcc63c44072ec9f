"""Telemetry of every inference: buffered in the ingress, flushed as Parquet to
``telemetry/<name>/date=YYYY-MM-DD/<writer>-<n>.parquet`` (hive-partitioned for drift jobs)."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
import uuid
from typing import Any

from mlplat.storage import Storage

__all__ = ["TelemetryWriter"]


class TelemetryWriter:
    """Thread-safe buffer of per-row inference records, flushed by size or on demand.

    Each row: ``ts``, ``model``, ``version``, ``request_id``, ``caller``, ``endpoint``,
    ``latency_ms``, ``prediction`` (JSON text for vectors) and ``feature.<name>`` per raw
    feature. Writing never raises into the request path: a failed flush keeps the rows
    (bounded by ``max_rows``; the oldest are dropped and counted past that)."""

    def __init__(self, storage: Storage, *, max_rows: int = 20_000, writer_id: str | None = None):
        self._storage, self._max_rows = storage, max_rows
        self._writer_id = writer_id or uuid.uuid4().hex[:8]
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._seq = 0
        self.dropped_rows = 0
        self.flush_errors = 0

    def record(self, model: str, version: int, rows: list[dict[str, Any]] | None, predictions: list[Any], *,
               request_id: str | None, caller: str | None, endpoint: str, latency_ms: float) -> None:
        now = time.time()
        out = []
        for i, prediction in enumerate(predictions):
            entry = {"ts": now, "model": model, "version": version, "request_id": request_id, "caller": caller,
                     "endpoint": endpoint, "latency_ms": latency_ms,
                     "prediction": prediction if isinstance(prediction, float) else str(prediction)}
            if rows is not None:
                for key, value in rows[i].items():
                    entry[f"feature.{key}"] = None if value is None else (float(value) if isinstance(value, int | float) and not isinstance(value, bool) else str(value))
            out.append(entry)
        with self._lock:
            self._rows.setdefault(model, []).extend(out)
            self._count += len(out)
            if self._count > self._max_rows:
                self._drop_oldest(self._count - self._max_rows)

    def _drop_oldest(self, excess: int) -> None:
        for rows in self._rows.values():
            cut = min(excess, len(rows))
            del rows[:cut]
            excess -= cut
            self._count -= cut
            self.dropped_rows += cut
            if excess <= 0:
                return

    @property
    def pending_rows(self) -> int:
        return self._count

    def flush(self) -> int:
        """Write buffered rows; returns how many were written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._lock:
            batches, self._rows, self._count = self._rows, {}, 0
        written = 0
        for model, rows in batches.items():
            if not rows:
                continue
            try:
                table = pa.Table.from_pylist(rows)
                sink = io.BytesIO()
                pq.write_table(table, sink)
                day = dt.datetime.fromtimestamp(rows[0]["ts"], dt.timezone.utc).date().isoformat()
                self._seq += 1
                self._storage.write_bytes(sink.getvalue(), "telemetry", model, f"date={day}",
                                          f"{self._writer_id}-{int(time.time() * 1000)}-{self._seq}.parquet")
                written += len(rows)
            except Exception:
                self.flush_errors += 1
                with self._lock:  # keep them for the next flush
                    self._rows.setdefault(model, [])[:0] = rows
                    self._count += len(rows)
        return written
