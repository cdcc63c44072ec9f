"""mlplat's Prometheus series, exported through Ray's metrics (``ray.util.metrics``).

Every series mlplat exports is declared once in :data:`SERIES`. Ray exports user metrics on each
node's metrics export port (``ray.nodes()[i]["MetricsExportPort"]``, Prometheus text) with a
``ray_`` prefix, and a counter gains a ``_total`` suffix: :func:`prometheus_name` gives the
scraped name (``mlplat_requests`` -> ``ray_mlplat_requests_total``). Ray's export period is
several seconds (``metrics_report_interval_ms``).

The Ray metric objects are created lazily, once per process (:class:`RayMetrics`): a process
that records nothing registers nothing. Serving (``mlplat.serving.metrics``) records through
it; a drift job calls :func:`record_drift_scores`. This module sits in the adapter layer
(with ``storage``, ``registry``, ``raydata``) so that serving and monitoring, which must not
import each other, can both use it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "SERIES",
    "Series",
    "MetricsSink",
    "RayMetrics",
    "ray_metrics",
    "prometheus_name",
    "record_drift_scores",
    "DRIFT_ACTOR_NAME",
    "LATENCY_BOUNDARIES_MS",
    "REQUESTS",
    "REQUEST_LATENCY_MS",
    "CANARY_REQUESTS",
    "TELEMETRY_ROWS_DROPPED",
    "TELEMETRY_PENDING_ROWS",
    "TELEMETRY_ERRORS",
    "DRIFT_SCORE",
]

log = logging.getLogger("mlplat.metrics")

#: Upper bounds (ms) of the request latency histogram's buckets (Prometheus adds ``+Inf``).
LATENCY_BOUNDARIES_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000)


@dataclass(frozen=True)
class Series:
    """One exported metric: its Ray name, kind, help text and tag keys."""

    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


REQUESTS = "mlplat_requests"
REQUEST_LATENCY_MS = "mlplat_request_latency_ms"
CANARY_REQUESTS = "mlplat_canary_requests"
TELEMETRY_ROWS_DROPPED = "mlplat_telemetry_rows_dropped"
TELEMETRY_PENDING_ROWS = "mlplat_telemetry_pending_rows"
TELEMETRY_ERRORS = "mlplat_telemetry_errors"
DRIFT_SCORE = "mlplat_drift_score"

SERIES: dict[str, Series] = {s.name: s for s in (
    Series(REQUESTS, "counter", "Inference requests answered by the ingress, by model, version and HTTP status "
           "(model '_unknown' when the name did not resolve: unknown model, bad token).", ("model", "version", "code")),
    Series(REQUEST_LATENCY_MS, "histogram", "Ingress inference latency in milliseconds, every status.", ("model",),
           LATENCY_BOUNDARIES_MS),
    Series(CANARY_REQUESTS, "counter", "Requests of a model with a running canary, by the arm the split chose.",
           ("model", "version", "arm")),
    Series(TELEMETRY_ROWS_DROPPED, "counter", "Telemetry rows dropped because the ingress buffer was full.", ("model",)),
    Series(TELEMETRY_PENDING_ROWS, "gauge", "Telemetry rows buffered in an ingress replica, not yet written.", ()),
    Series(TELEMETRY_ERRORS, "counter", "Telemetry failures (stage 'flush': a Parquet write; 'catalog': a catalog "
           "registration; 'encode': encoded features); the rows or files are kept and retried.", ("stage",)),
    Series(DRIFT_SCORE, "gauge", "Latest drift score of a model's feature, by statistic (psi, ks, ...).",
           ("model", "feature", "statistic")),
)}


def prometheus_name(name: str) -> str:
    """The name a Prometheus scrape of Ray's metrics endpoint shows for ``name``.

    >>> prometheus_name("mlplat_requests"), prometheus_name("mlplat_drift_score")
    ('ray_mlplat_requests_total', 'ray_mlplat_drift_score')
    """
    return f"ray_{name}_total" if SERIES[name].kind == "counter" else f"ray_{name}"


class MetricsSink(Protocol):
    """Where recorded values go: :class:`RayMetrics`, or a fake in a unit test."""

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...


class RayMetrics:
    """:class:`MetricsSink` over ``ray.util.metrics``; each metric object is created on first
    use in this process (Ray registers a metric per process that creates it)."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _get(self, name: str) -> Any:
        metric = self._objects.get(name)
        if metric is None:
            with self._lock:
                metric = self._objects.get(name)
                if metric is None:
                    metric = self._objects[name] = _create(SERIES[name])
        return metric

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        if value > 0:  # a Ray counter refuses 0
            self._get(name).inc(value, dict(tags))

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._get(name).observe(value, dict(tags))

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._get(name).set(value, dict(tags))


def _create(series: Series) -> Any:
    from ray.util import metrics

    if series.kind == "counter":
        return metrics.Counter(series.name, series.description, series.tag_keys)
    if series.kind == "histogram":
        return metrics.Histogram(series.name, series.description, list(series.boundaries), series.tag_keys)
    return metrics.Gauge(series.name, series.description, series.tag_keys)


_PROCESS_METRICS: RayMetrics | None = None
_PROCESS_LOCK = threading.Lock()


def ray_metrics() -> RayMetrics:
    """This process's :class:`RayMetrics` (one per process)."""
    global _PROCESS_METRICS
    with _PROCESS_LOCK:
        if _PROCESS_METRICS is None:
            _PROCESS_METRICS = RayMetrics()
        return _PROCESS_METRICS


# -- drift scores --------------------------------------------------------------------------

#: The detached actor holding the drift gauges of a namespace (see :func:`record_drift_scores`).
DRIFT_ACTOR_NAME = "mlplat-drift-metrics"


class DriftGauges:
    """Holds :data:`DRIFT_SCORE` for a namespace. A drift job is a short process, and Ray
    stops exporting a gauge when the process that set it exits (often before its first
    export), so the gauges live here: the last score of each model/feature/statistic stays
    on the dashboard until the next run replaces it."""

    def __init__(self) -> None:
        self._sink = RayMetrics()

    def set_scores(self, name: str, scores: dict[str, dict[str, float]]) -> int:
        n = 0
        for feature, stats in scores.items():
            for statistic, value in stats.items():
                self._sink.set(DRIFT_SCORE, value, {"model": name, "feature": feature, "statistic": statistic})
                n += 1
        return n


def _clean_scores(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for feature, stats in scores.items():
        if not isinstance(stats, Mapping):
            raise TypeError(f"drift scores of feature {feature!r} must map statistic -> number, got {type(stats).__name__}")
        for statistic, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"drift score {feature!r}/{statistic!r} must be a number, got {type(value).__name__}")
            if math.isfinite(value):  # a NaN/inf score (a constant column) is not a gauge value
                out.setdefault(str(feature), {})[str(statistic)] = float(value)
    return out


def record_drift_scores(name: str, scores: Mapping[str, Mapping[str, float]], *, namespace: str | None = None,
                        timeout_s: float = 30.0) -> int:
    """Publish a model's drift scores as the gauge ``mlplat_drift_score{model, feature,
    statistic}`` (``scores``: ``{feature: {statistic: value}}``, e.g. ``{"amount": {"psi":
    0.12}}``); non-finite values are skipped. The gauges are held by the detached actor
    :data:`DRIFT_ACTOR_NAME` of ``namespace`` (default: this driver's namespace), so they
    outlive the job. Returns how many gauges were set; 0 without a Ray connection."""
    from mlplat.names import validate_name

    validate_name(name, "model name")
    clean = _clean_scores(scores)
    import ray

    if not ray.is_initialized():
        log.debug("record_drift_scores(%s): Ray is not initialized; scores not exported", name)
        return 0
    ns = namespace or ray.get_runtime_context().namespace
    actor: Any = (ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(DriftGauges)
                  .options(name=DRIFT_ACTOR_NAME, namespace=ns, lifetime="detached", get_if_exists=True).remote())
    return int(ray.get(actor.set_scores.remote(name, clean), timeout=timeout_s))
