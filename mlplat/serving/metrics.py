"""The ingress's request metrics: counted in plain dicts on the request path, handed to Ray's
metrics (``mlplat.metrics``) by a background task every ``serve.metrics_interval_s``.

A request costs a few dict operations (no Ray call, no lock: requests and the export run on
the replica's event loop). Series and tags: ``mlplat_requests{model, version, code}``,
``mlplat_request_latency_ms{model}``, ``mlplat_canary_requests{model, version, arm}``, and from
the telemetry writer ``mlplat_telemetry_rows_dropped{model}``,
``mlplat_telemetry_pending_rows`` and ``mlplat_telemetry_errors{stage}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from mlplat.metrics import (
    CANARY_REQUESTS,
    REQUEST_LATENCY_MS,
    REQUESTS,
    TELEMETRY_ERRORS,
    TELEMETRY_PENDING_ROWS,
    TELEMETRY_ROWS_DROPPED,
    MetricsSink,
    ray_metrics,
)

__all__ = ["ServingMetrics", "TelemetryStats", "UNKNOWN_MODEL", "MAX_LATENCIES_PER_EXPORT"]

log = logging.getLogger("mlplat.serving")

#: The model tag of a request whose name did not resolve to a registered model (a 401 before
#: routing, an unknown name): client input never creates a series.
UNKNOWN_MODEL = "_unknown"
#: Latency observations kept between two exports; past it the histogram skips observations
#: (the request counter stays exact).
MAX_LATENCIES_PER_EXPORT = 200_000


class TelemetryStats(Protocol):
    """What the export reads from the telemetry writer."""

    @property
    def pending_rows(self) -> int: ...

    def take_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(rows dropped per model, errors per stage) since the last call."""
        ...


class ServingMetrics:
    """Per-replica aggregation of request metrics. ``request``/``canary`` are the hot path;
    :meth:`export` (run by :meth:`start_soon`'s task) sends the totals to ``sink``."""

    def __init__(self, sink: MetricsSink | None = None, *, telemetry: TelemetryStats | None = None,
                 interval_s: float = 1.0):
        self._sink, self._telemetry, self._interval_s = sink, telemetry, interval_s
        self._requests: dict[tuple[str, int, int], int] = {}
        self._canary: dict[tuple[str, int, str], int] = {}
        self._latencies: dict[str, list[float]] = {}
        self._num_latencies = 0
        self.skipped_latencies = 0
        self._task: asyncio.Task | None = None

    def request(self, model: str, version: int, code: int, latency_ms: float) -> None:
        """One answered request (``version`` 0: none resolved)."""
        key = (model, version, code)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        if self._num_latencies < MAX_LATENCIES_PER_EXPORT:
            self._num_latencies += 1
            latencies = self._latencies.get(model)
            if latencies is None:
                self._latencies[model] = [latency_ms]
            else:
                latencies.append(latency_ms)
        else:
            self.skipped_latencies += 1

    def canary(self, model: str, version: int, arm: str) -> None:
        """The split sent a request of ``model`` to ``arm`` (``canary`` | ``production``)."""
        key = (model, version, arm)
        self._canary[key] = self._canary.get(key, 0) + 1

    def export(self) -> None:
        """Send everything counted since the last export to the sink."""
        requests, self._requests = self._requests, {}
        canary, self._canary = self._canary, {}
        latencies, self._latencies, self._num_latencies = self._latencies, {}, 0
        sink = self._sink or ray_metrics()
        for (model, version, code), n in requests.items():
            sink.inc(REQUESTS, n, {"model": model, "version": str(version) if version else "", "code": str(code)})
        for (model, version, arm), n in canary.items():
            sink.inc(CANARY_REQUESTS, n, {"model": model, "version": str(version), "arm": arm})
        for model, values in latencies.items():
            tags = {"model": model}
            for value in values:
                sink.observe(REQUEST_LATENCY_MS, value, tags)
        if self._telemetry is not None:
            dropped, errors = self._telemetry.take_counts()
            for model, n in dropped.items():
                sink.inc(TELEMETRY_ROWS_DROPPED, n, {"model": model})
            for stage, n in errors.items():
                sink.inc(TELEMETRY_ERRORS, n, {"stage": stage})
            sink.set(TELEMETRY_PENDING_ROWS, self._telemetry.pending_rows, {})

    def start_soon(self) -> None:
        """Start the export task if an event loop runs here (a Serve replica's constructor, a
        request); otherwise a later call from a coroutine does."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.export()
            except Exception:  # metrics never take serving down
                log.warning("metrics export failed", exc_info=True)
