"""The ingress's request metrics: counted in plain dicts on the request path, handed to Ray's
metrics (``mlplat.metrics``) every ``serve.metrics_interval_s``.

A request costs a few dict and list operations (no Ray call, no lock: requests and the swap run
on the replica's event loop). The export swaps the buffers on the loop (cheap), then makes the
Ray metric calls -- one ``observe`` per latency -- on a worker thread, so the loop never waits
on them. Latencies are kept as a uniform sample of at most :data:`MAX_LATENCIES_PER_EXPORT` per
interval (reservoir sampling): past it the histogram is a sample of the interval's requests,
while the request and canary counters stay exact. Series and tags:
``mlplat_requests{model, version, code}``, ``mlplat_request_latency_ms{model}``,
``mlplat_canary_requests{model, version, arm}``, and from the telemetry writer
``mlplat_telemetry_rows_dropped{model}``, ``mlplat_telemetry_pending_rows`` and
``mlplat_telemetry_errors{stage}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass
from typing import Protocol

from mlplat.config import ServeSettings
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

__all__ = ["ServingMetrics", "TelemetryStats", "UNKNOWN_MODEL", "MAX_LATENCIES_PER_EXPORT", "Snapshot"]

log = logging.getLogger("mlplat.serving")

#: The model tag of a request whose name did not resolve to a registered model (a 401 before
#: routing, an unknown name): client input never creates a series.
UNKNOWN_MODEL = "_unknown"
#: Latency observations per export interval: past it, a uniform sample of this many of the
#: interval's latencies is observed (the request counter stays exact); the default of
#: ``serve.metrics_max_latencies``.
MAX_LATENCIES_PER_EXPORT: int = ServeSettings.model_fields["metrics_max_latencies"].default


class TelemetryStats(Protocol):
    """What the export reads from the telemetry writer."""

    @property
    def pending_rows(self) -> int: ...

    def take_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(rows dropped per model, errors per stage) since the last call."""
        ...


@dataclass(frozen=True)
class Snapshot:
    """What one interval counted, taken off the request path's buffers."""

    requests: dict[tuple[str, int, int], int]
    canary: dict[tuple[str, int, str], int]
    latency_models: list[str]
    latency_values: list[float]
    latencies_seen: int


class ServingMetrics:
    """Per-replica aggregation of request metrics. ``request``/``canary`` are the hot path;
    :meth:`export_async` (run by :meth:`start_soon`'s task) takes the counts on the loop and
    sends them to ``sink`` on a worker thread."""

    def __init__(self, sink: MetricsSink | None = None, *, telemetry: TelemetryStats | None = None,
                 interval_s: float = 1.0, max_latencies: int = MAX_LATENCIES_PER_EXPORT):
        self._sink, self._telemetry, self._interval_s = sink, telemetry, interval_s
        self._max_latencies = max_latencies
        self._requests: dict[tuple[str, int, int], int] = {}
        self._canary: dict[tuple[str, int, str], int] = {}
        # the interval's latency sample (reservoir): parallel lists, no tuple per request
        self._lat_models: list[str] = []
        self._lat_values: list[float] = []
        self._seen = 0
        self._random = random.Random().random
        self._sending = threading.Lock()  # one send at a time (the task and an explicit export)
        #: Latencies seen but not in the sample (the histogram is a sample past the cap).
        self.skipped_latencies = 0
        self._task: asyncio.Task | None = None

    def request(self, model: str, version: int, code: int, latency_ms: float) -> None:
        """One answered request (``version`` 0: none resolved)."""
        key = (model, version, code)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        self._seen += 1
        if self._seen <= self._max_latencies:
            self._lat_models.append(model)
            self._lat_values.append(latency_ms)
            return
        self.skipped_latencies += 1
        j = int(self._random() * self._seen)  # reservoir sampling: each latency kept with p = cap / seen
        if j < self._max_latencies:
            self._lat_models[j] = model
            self._lat_values[j] = latency_ms

    def canary(self, model: str, version: int, arm: str) -> None:
        """An answered (2xx) request of ``model`` that the split sent to ``arm`` (``canary`` |
        ``production``)."""
        key = (model, version, arm)
        self._canary[key] = self._canary.get(key, 0) + 1

    def take(self) -> Snapshot:
        """Swap the buffers (on the event loop: a few assignments)."""
        snap = Snapshot(self._requests, self._canary, self._lat_models, self._lat_values, self._seen)
        self._requests, self._canary, self._lat_models, self._lat_values, self._seen = {}, {}, [], [], 0
        return snap

    def send(self, snap: Snapshot) -> None:
        """Hand a snapshot (and the telemetry writer's counts) to the sink: Ray's metric calls,
        one ``observe`` per sampled latency -- for a worker thread, not the event loop."""
        with self._sending:
            sink = self._sink or ray_metrics()
            for (model, version, code), n in snap.requests.items():
                sink.inc(REQUESTS, n, {"model": model, "version": str(version) if version else "", "code": str(code)})
            for (model, version, arm), n in snap.canary.items():
                sink.inc(CANARY_REQUESTS, n, {"model": model, "version": str(version), "arm": arm})
            tags: dict[str, dict[str, str]] = {}
            for model, value in zip(snap.latency_models, snap.latency_values, strict=True):
                t = tags.get(model)
                if t is None:
                    t = tags[model] = {"model": model}
                sink.observe(REQUEST_LATENCY_MS, value, t)
            if self._telemetry is not None:
                dropped, errors = self._telemetry.take_counts()
                for model, n in dropped.items():
                    sink.inc(TELEMETRY_ROWS_DROPPED, n, {"model": model})
                for stage, n in errors.items():
                    sink.inc(TELEMETRY_ERRORS, n, {"stage": stage})
                sink.set(TELEMETRY_PENDING_ROWS, self._telemetry.pending_rows, {})

    def export(self) -> None:
        """Take and send everything counted since the last export, in this thread (tests, a
        caller off the event loop)."""
        self.send(self.take())

    async def export_async(self) -> None:
        """Take the counts on the event loop, send them on a worker thread."""
        snap = self.take()
        await asyncio.to_thread(self.send, snap)

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
                await self.export_async()
            except Exception:  # metrics never take serving down
                log.warning("metrics export failed", exc_info=True)
