"""Serving settings (``serve.*`` of :class:`~mlplat.config.PlatformConfig`): how mlplat
starts Ray Serve, guards its HTTP surface, and scales the ingress, the multiplexed pool and
dedicated deployments. Re-exported by :mod:`mlplat.config`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from mlplat.config.base import StrictModel

__all__ = ["ScalingSettings", "PoolSettings", "DedicatedSettings", "ServeSettings"]


class ScalingSettings(StrictModel):
    """How Ray Serve autoscales one deployment (the fields of Serve's ``AutoscalingConfig`` that
    mlplat sets): between ``min_replicas`` and ``max_replicas``, aiming at
    ``target_ongoing_requests`` per replica, averaged over ``look_back_period_s``."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    #: The load must stay above (below) the target this long before Serve adds (removes) replicas.
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    look_back_period_s: float = Field(30.0, gt=0)
    #: How often replicas and handles report their load to the Serve controller (Serve marks the
    #: field deprecated in favour of environment variables, and still honours it in 2.60).
    metrics_interval_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> ScalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(f"look_back_period_s ({self.look_back_period_s}) must be greater than metrics_interval_s "
                             f"({self.metrics_interval_s}): the window must hold more than one report")
        return self

    def autoscaling_config(self) -> dict[str, Any]:
        """Serve's ``autoscaling_config`` for these settings.

        >>> ScalingSettings(min_replicas=1, max_replicas=3).autoscaling_config()["max_replicas"]
        3
        """
        return {name: getattr(self, name) for name in ScalingSettings.model_fields}


class PoolSettings(ScalingSettings):
    """The multiplexed pool that serves the long tail of models."""

    target_ongoing_requests: float = Field(8.0, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)
    #: Requests a caller (an ingress replica) queues for the pool when every replica is at
    #: max_ongoing_requests; beyond it the ingress answers 503 + Retry-After at once.
    max_queued_requests: int = Field(128, ge=1)
    #: Memory a replica may spend on cached models; with model_memory_mb it sets
    #: max_num_models_per_replica (``memory_budget_mb // model_memory_mb``).
    memory_budget_mb: int = Field(2048, ge=1)
    model_memory_mb: float = Field(4.0, gt=0)
    num_cpus: float = Field(0.5, ge=0)
    #: Calls an ingress replica has out to the pool per model version; requests for that
    #: version arriving meanwhile wait and go together in the next call, up to
    #: ``max_coalesced`` (serving/coalesce.py: no timer, a lone request goes at once). P1 pool
    #: path on 2 cores: 390 req/s with a call per request, 712 with 2, 890 with 1. The pool's
    #: autoscaling then counts calls, not requests: at most ingress replicas x versions in use
    #: x this many (a hot model belongs in a dedicated deployment). 0: a call per request.
    calls_per_model: int = Field(1, ge=0)
    #: The most requests one coalesced pool call carries.
    max_coalesced: int = Field(64, ge=1)

    @property
    def max_models_per_replica(self) -> int:
        return max(1, int(self.memory_budget_mb // self.model_memory_mb))


class DedicatedSettings(ScalingSettings):
    """Defaults for a hot model's own deployment (``serving_policy: {dedicated: true}``);
    a model's ``serving_policy.autoscaling`` may override any :class:`ScalingSettings` field."""

    target_ongoing_requests: float = Field(16.0, gt=0)
    max_ongoing_requests: int = Field(128, ge=1)
    #: As the pool's ``max_queued_requests``, per caller of this deployment.
    max_queued_requests: int = Field(256, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    num_cpus: float = Field(0.5, ge=0)


class ServeSettings(StrictModel):
    """How mlplat starts Ray Serve and guards its HTTP surface."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: The port of Serve's gRPC proxy: the Open Inference Protocol v2 over gRPC
    #: (``inference.GRPCInferenceService``: ServerLive, ServerReady, ModelReady, ModelMetadata,
    #: ModelInfer) with the HTTP routes' token, validation and telemetry. None or 0: no gRPC.
    #: Serve 2.60 binds it on every interface (it takes no gRPC host) and applies gRPC options
    #: only at the first ``serve.start`` on a Ray instance.
    grpc_port: int | None = Field(None, ge=0, le=65535)
    #: The direct data plane (serving/direct.py): every ingress replica also answers the whole
    #: HTTP API itself on this port of ``host`` (all replicas of a node share it through
    #: SO_REUSEPORT; the kernel spreads connections over them), with no HAProxy or Serve proxy
    #: hop and no Serve request path: the same token, limits, validation, admission and
    #: telemetry. Serve still starts, replaces and autoscales the replicas (their direct
    #: requests count toward ``ingress_autoscaling``). ``port`` keeps serving through Serve.
    #: None or 0: off.
    direct_port: int | None = Field(None, ge=0, le=65535)
    #: The replicas on ``direct_port`` even out their open connections: one that accepts a
    #: connection while it holds more than one above the least-loaded replica of the node hands
    #: it over before reading it (serving/direct_balance.py), where the kernel's hash alone can
    #: split 16 keep-alive connections 13/3. Off: each connection stays where the kernel put it.
    direct_balance_connections: bool = True
    app_name: str = "mlplat"
    route_prefix: str = "/"
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(32, ge=2)
    max_instances: int = Field(10_000, ge=1)
    #: Without a token every route but health answers 401, unless this is set.
    allow_anonymous: bool = False
    #: Serve /openapi.json and /docs without a token (they list every route and schema).
    public_docs: bool = False
    #: The ingress's replicas: a fixed count (None: 1), unless ``ingress_autoscaling`` is set.
    ingress_replicas: int | None = Field(None, ge=1)
    #: Serve autoscales the ingress within these bounds (min_replicas >= 1: the ingress answers
    #: health checks). Set this or ``ingress_replicas``, not both.
    ingress_autoscaling: ScalingSettings | None = None
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    ingress_num_cpus: float = Field(0.25, ge=0)
    #: Load shedding: an ingress replica admits at most ``ingress_max_ongoing_requests -
    #: ingress_health_headroom`` inference requests at once (at least 1) and answers the rest
    #: 503 + Retry-After at once; the headroom keeps health and metadata routes answering.
    ingress_health_headroom: int = Field(16, ge=1)
    #: Requests Serve queues for the ingress while all its slots are taken; beyond it Serve's
    #: own 503 + Retry-After (a plain-text body).
    ingress_max_queued_requests: int = Field(64, ge=1)
    #: ``Retry-After`` (seconds) on every 503 the ingress answers and on Serve's backpressure 503s.
    retry_after_s: int = Field(1, ge=0)
    #: The ingress waits at most this long for the pool or a dedicated deployment (queue and
    #: inference) before it answers 503 + Retry-After.
    backend_timeout_s: float = Field(30.0, gt=0)
    #: A request body must arrive whole within this many seconds, else 408 (slow or broken
    #: clients: headers without a body, 1 byte/s, a Content-Length longer than the body). On
    #: ``direct_port`` a request's headers have the same deadline from its first byte.
    body_read_timeout_s: float = Field(10.0, gt=0)
    #: How often the registry's event log is read for the replicas (route changes, pre-warm
    #: requests): by the registry actor while replicas wait on it (see ``route_wait_s``), by a
    #: replica itself after a failed read or where its reader cannot wait.
    route_refresh_s: float = Field(0.2, gt=0)
    #: A replica's read of the event log waits up to this long in the registry actor for the
    #: next event (a long poll): a change written through the registry reaches the replicas at
    #: once, one written to its database by another process within ``route_refresh_s``, and a
    #: quiet registry costs one call per follower per ``route_wait_s`` instead of one per
    #: ``route_refresh_s`` (each ingress and pool replica has two followers or one).
    route_wait_s: float = Field(10.0, gt=0, le=60)
    #: This app's regional cell: its ingress serves ``production.<region>``, else ``production``.
    #: None: the global app. Must be one of the platform's ``regions`` when those are listed.
    region: str | None = None
    #: After a swap, the version that stopped serving stays loaded (pinned against eviction)
    #: this long, so a rollback loads nothing.
    keep_previous_s: float = Field(600.0, ge=0)
    #: While a canary runs, each ingress replica reports its per-version stats this often.
    canary_report_s: float = Field(2.0, gt=0)
    telemetry: bool = True
    #: Each ingress replica writes its buffered telemetry this often, and early once the buffer
    #: holds half of ``telemetry_max_rows`` (telemetry.flush_due).
    telemetry_flush_s: float = Field(5.0, gt=0)
    #: Rows an ingress replica buffers between flushes; past it the oldest requests are dropped
    #: and counted (``mlplat_telemetry_rows_dropped``).
    telemetry_max_rows: int = Field(20_000, ge=1)
    #: Telemetry also records each row's encoded features (``encoded``, list<float>: the model's
    #: input), encoded in the flush thread, never on the request path.
    telemetry_encoded: bool = False
    #: The ``x-mlplat-context-<key>`` headers recorded as ``context.<key>``: an allowlist, empty
    #: by default (no context columns). Each key becomes a column of the catalog dataset, so
    #: only listed keys are: None records any key a client sends (at most 16 per request
    #: either way, values cut to 256 characters) and lets clients grow the schema.
    telemetry_context_keys: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]] | None = Field(
        default_factory=list)
    #: Register flushed telemetry files in the data catalog (dataset ``telemetry-<model>``), on
    #: a thread of their own, never in the flush.
    telemetry_catalog: bool = True
    #: Each (model, day) is registered at most this often: one catalog call per batch of files.
    telemetry_catalog_interval_s: float = Field(60.0, ge=0)
    #: A catalog registration's registry calls are abandoned (counted, retried) after this long.
    telemetry_catalog_timeout_s: float = Field(30.0, gt=0)
    #: Prometheus metrics through Ray's metrics endpoint (docs/serving.md); the ingress hands
    #: its counts to Ray every ``metrics_interval_s``.
    metrics: bool = True
    metrics_interval_s: float = Field(1.0, gt=0)
    #: Latencies the request-latency histogram takes per export interval and replica; past it,
    #: a uniform sample of that many (request counters stay exact). Each is one Ray metric call
    #: on the export thread: at 10,000 the OIP v2 route ran at 0.82-0.86x the v1 route on 2
    #: cores (P1 direct), at 1,000 0.88-0.90x.
    metrics_max_latencies: int = Field(1_000, ge=1)
    #: Ray Serve's throughput-optimized mode and HAProxy ingress (ray-2.60-notes.md: 10x on
    #: 2 cores). They act only when set before Ray starts, so mlplat exports them then.
    throughput_optimized: bool = True
    haproxy: bool = False
    #: HAProxy worker threads. None: half the cores of the machine that starts Ray, 1 to 4
    #: (Serve's own default of 4 competes with the replicas on a 2-core box: -9% req/s).
    haproxy_threads: int | None = Field(None, ge=1)
    #: HAProxy's ``timeout client``: a client silent this long mid-request (or idle between
    #: keep-alive requests) is disconnected. Serve's default is 3600 s.
    haproxy_timeout_client_s: int = Field(30, ge=1)
    #: Serve's per-request HTTP metrics in HAProxy mode (a log datagram per request, parsed
    #: by the HAProxyManager actor: ~15% of a core at 1,800 req/s). mlplat's telemetry
    #: records every inference with its latency either way.
    haproxy_metrics: bool = False
    #: The niceness of Ray's worker processes (Serve replicas and their HAProxy, trainers) on
    #: a Ray that mlplat starts. Ray's own default, 15, hands the CPU to every other process
    #: on the machine first: on 2 cores with a load generator beside it, P1's p99 was 69 ms at
    #: 15 and 27 ms at 0 (docs/benchmarks.md). None keeps Ray's default. A `ray start` cluster
    #: takes it from ``RAY_worker_niceness`` in the environment of ``ray start``.
    worker_niceness: int | None = Field(0, ge=0, le=19)
    #: Ray's start of idle Python workers when the first driver connects
    #: (``RAY_prestart_worker_first_driver``), on a Ray that mlplat starts. Off (the default):
    #: an idle worker kept for a task that may never come wakes ~150 times a second and holds
    #: ~100 MB beside the replicas (P1's p99 on 2 cores, docs/benchmarks.md); a task's first
    #: worker then starts when the task does. A `ray start` cluster takes it from the
    #: environment of ``ray start`` (cluster.yaml sets it to 0).
    prestart_workers: bool = False
    #: Serve's per-request access log lines in the replica logs. mlplat's telemetry already
    #: records every inference; the access log costs CPU on the request path.
    access_log: bool = False
    #: Python's generation-0 GC threshold in the serving replicas (Python's default is 700).
    #: Every request allocates short-lived objects; collecting them 30x less often is +5%
    #: req/s on the P1 benchmark. None keeps Python's default.
    gc_threshold: int | None = Field(20_000, ge=1)
    #: The ingress replicas freeze their heap after start-up and after each model they load
    #: (``gc.collect`` then ``gc.freeze``): collections then skip the long-lived objects (Ray,
    #: numpy, the models), which took older-generation collections from ~50-140 ms to a few ms
    #: on the P1 benchmark (docs/benchmarks.md). False: Python's plain collector.
    gc_freeze: bool = True
    pool: PoolSettings = Field(default_factory=PoolSettings)
    dedicated: DedicatedSettings = Field(default_factory=DedicatedSettings)

    @model_validator(mode="after")
    def _check_ingress_scaling(self) -> ServeSettings:
        if self.ingress_health_headroom >= self.ingress_max_ongoing_requests:
            raise ValueError(f"serve.ingress_health_headroom ({self.ingress_health_headroom}) must be below "
                             f"serve.ingress_max_ongoing_requests ({self.ingress_max_ongoing_requests}): an ingress "
                             "replica admits max_ongoing - headroom inference requests at once")
        if self.direct_port and self.direct_port in (self.port, self.grpc_port):
            raise ValueError(f"serve.direct_port ({self.direct_port}) must differ from serve.port and serve.grpc_port: "
                             "the ingress replicas listen on it themselves")
        scaling = self.ingress_autoscaling
        if scaling is None:
            return self
        if self.ingress_replicas is not None:
            raise ValueError("serve.ingress_replicas (a fixed count) and serve.ingress_autoscaling (min/max replicas) "
                             "are both set: keep one of them")
        if scaling.min_replicas < 1:
            raise ValueError("serve.ingress_autoscaling.min_replicas must be >= 1: the ingress answers health checks")
        return self
