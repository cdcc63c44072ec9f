"""Platform settings and strict config loading.

Settings come from (lowest to highest precedence): defaults, an optional YAML file, the
environment (``MLPLAT_*``), then explicit keyword overrides. Every config model forbids
unknown keys, and :func:`load_config` reports problems by dotted path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from mlplat.errors import ConfigError

__all__ = [
    "StrictModel",
    "S3Settings",
    "ScalingSettings",
    "PoolSettings",
    "DedicatedSettings",
    "ServeSettings",
    "PlatformConfig",
    "RegistrySettings",
    "WeightStorageSettings",
    "normalize_registry_url",
    "redact_url",
    "REGISTRY_URL_SETTING",
    "load_config",
    "parse_config",
    "platform_config",
    "ENV_VARS",
    "env_setting",
]

M = TypeVar("M", bound=BaseModel)


#: How messages name the registry URL setting.
REGISTRY_URL_SETTING = "registry.url (env MLPLAT_REGISTRY_URL)"


def normalize_registry_url(url_or_path: str | Path) -> str:
    """``registry.url`` in canonical form; a one-line ConfigError naming the setting otherwise.

    SQLite paths become absolute (relative ones to this process's directory): the registry actor
    opens the file from another working directory.

    >>> normalize_registry_url("/var/lib/mlplat/registry.db")
    'sqlite:////var/lib/mlplat/registry.db'
    >>> normalize_registry_url("postgres://u@db/mlplat")
    'postgresql://u@db/mlplat'
    """
    text = str(url_or_path).strip()
    if not text:
        raise ConfigError(f"{REGISTRY_URL_SETTING} is empty: expected sqlite:///PATH or postgresql://USER@HOST/DB")
    if "://" not in text:
        if re.match(r"^(host|dbname|user|port|password)\s*=", text):
            raise ConfigError(f"{REGISTRY_URL_SETTING}: a libpq keyword string is not supported; write it as a URL: "
                              "postgresql://USER:PASSWORD@HOST:PORT/DB")
        return _sqlite_url(text)  # a plain file path
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"{REGISTRY_URL_SETTING} {text!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return _sqlite_url(rest[1:])
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        parts = urlsplit("postgresql://" + rest)
        if not parts.netloc and "host=" not in parts.query:
            raise ConfigError(f"{REGISTRY_URL_SETTING} {redact_url(text)!r}: expected postgresql://USER@HOST[:PORT]/DB "
                              "or postgresql://USER@/DB?host=/socket/dir")
        return urlunsplit(parts)
    raise ConfigError(f"{REGISTRY_URL_SETTING} {redact_url(text)!r} is not supported: expected sqlite:///PATH or "
                      "postgresql://USER@HOST/DB")


def _sqlite_url(path: str) -> str:
    if path == ":memory:":
        return "sqlite:///:memory:"
    return "sqlite:///" + str(Path(path).expanduser().resolve())


def redact_url(url: str) -> str:
    """The URL without its password, in the user part or in ``?password=`` (for messages)."""
    parts = urlsplit(url)
    if not parts.password and "password=" not in parts.query:
        return url  # untouched: urlunsplit would also rewrite sqlite:////abs as sqlite://abs
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if "password=" in parts.query:
        parts = parts._replace(query=re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query))
    return urlunsplit(parts)



class StrictModel(BaseModel):
    """Base for every user-facing config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class S3Settings(StrictModel):
    """Credentials and endpoint for an S3-compatible store (AWS, SeaweedFS, MinIO...)."""

    endpoint_url: str | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str = "us-east-1"


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


class RegistrySettings(StrictModel):
    """Where the registry's database is: ``url`` is ``sqlite:///PATH`` (embedded, the default:
    ``<root>/registry.db`` for a local root) or ``postgresql://USER@HOST/DB`` (shared by clusters)."""

    url: str | None = None


class WeightStorageSettings(StrictModel):
    """How a model version's weights are laid out on storage, chosen by their size in bytes
    (mlplat/models/placement.py, docs/weights.md): small ones packed, medium ones in one
    ``model.safetensors``, very large ones in several safetensors shards."""

    #: Weights of at most this many bytes are packed: a lone version's weights travel inside its
    #: bundle.json (one read on a cold load); model families pack many members into shared files.
    #: 0: never pack.
    packed_max_bytes: int = Field(1024 * 1024, ge=0)
    #: Weights above ``packed_max_bytes`` and up to this many bytes go into one ``model.safetensors``;
    #: larger ones are sharded (``model-00001-of-0000N.safetensors`` + an index), loaded and verified
    #: shard by shard, so a load holds one shard's bytes in memory at a time.
    file_max_bytes: int = Field(2 * 1024**3, ge=0)
    #: The most bytes of tensor data one shard file holds (sharded weights and packs). A single tensor
    #: (sharded) or a single member (packs) larger than this gets a shard of its own; neither is split.
    shard_max_bytes: int = Field(1024**3, ge=1)

    @model_validator(mode="after")
    def _check_thresholds(self) -> WeightStorageSettings:
        if self.packed_max_bytes > self.file_max_bytes:
            raise ValueError(f"weights.packed_max_bytes ({self.packed_max_bytes}) must be <= weights.file_max_bytes "
                             f"({self.file_max_bytes}): weights up to packed_max_bytes are packed, up to "
                             "file_max_bytes go in one file, the rest are sharded")
        return self


class PlatformConfig(StrictModel):
    """Where mlplat keeps its state and how it reaches Ray."""

    root: str = "./.mlplat"
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    registry_db: str | None = None  # a SQLite file path; registry.url is the general form
    ray_address: str | None = None
    namespace: str = "mlplat"
    api_token: SecretStr | None = None
    #: The token of the serving app's /admin routes (rollback without a Ray driver). A separate
    #: secret from api_token; without it the admin routes answer 401.
    admin_token: SecretStr | None = None
    #: The regional cells this platform serves; ``--region`` must name one of them.
    regions: list[str] = Field(default_factory=list)
    s3: S3Settings = Field(default_factory=S3Settings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    #: Where each model version's weights go by size: packed, one file or sharded.
    weights: WeightStorageSettings = Field(default_factory=WeightStorageSettings)

    @model_validator(mode="after")
    def _check_cells_and_tokens(self) -> PlatformConfig:
        for region in self.regions:
            if not _REGION.fullmatch(region):
                raise ValueError(f"regions: {region!r} is not a region name (lowercase letters, digits, '_' or '-', "
                                 "starting with a letter, e.g. 'eu' or 'us-east')")
        cell = self.serve.region
        if cell is not None and (not _REGION.fullmatch(cell) or (self.regions and cell not in self.regions)):
            known = ", ".join(self.regions) or "none listed"
            raise ValueError(f"serve.region {cell!r} must be a region name and one of `regions` ({known})")
        if self.admin_token is not None and self.api_token is not None and \
                self.admin_token.get_secret_value() == self.api_token.get_secret_value():
            raise ValueError("admin_token (MLPLAT_ADMIN_TOKEN) must differ from api_token (MLPLAT_API_TOKEN): "
                             "an inference client must not be able to roll models back")
        return self

    def check_region(self, region: str | None) -> str | None:
        """``region`` if it names one of the configured ``regions`` (None/"" = all regions), else ConfigError.

        >>> PlatformConfig(regions=["eu", "us"]).check_region("eu")
        'eu'
        """
        if region is None or region == "":
            return None
        if region not in self.regions:
            known = ", ".join(self.regions) if self.regions else "none are configured (set `regions: [eu, us]` in the config)"
            raise ConfigError(f"unknown region {region!r}: the platform's regions are {known}")
        return region

    def registry_url(self) -> str:
        """The registry database as a URL: ``registry.url``, else ``registry_db`` (a SQLite path),
        else ``sqlite:///<root>/registry.db`` for a local root. Both set and different: ConfigError."""
        if self.registry.url and self.registry_db:
            url, path = normalize_registry_url(self.registry.url), normalize_registry_url(self.registry_db)
            if url != path:
                raise ConfigError(f"registry.url {self.registry.url!r} (MLPLAT_REGISTRY_URL) and registry_db "
                                  f"{self.registry_db!r} (MLPLAT_REGISTRY_DB) name different databases; set one of them")
        if self.registry.url:
            return normalize_registry_url(self.registry.url)
        return normalize_registry_url(self.registry_db_path())

    def registry_db_path(self) -> str:
        """The SQLite file of the registry: explicit, else ``<root>/registry.db`` for a local root."""
        if self.registry.url:
            url = normalize_registry_url(self.registry.url)
            if not url.startswith("sqlite:///"):
                raise ConfigError(f"the registry is not a SQLite file: registry.url is {redact_url(url)!r}")
            return url.removeprefix("sqlite:///")
        if self.registry_db:
            return self.registry_db
        if "://" in self.root and not self.root.startswith("file://"):
            raise ConfigError(
                f"root {self.root!r} is remote, so the registry database needs a local path: "
                "set MLPLAT_REGISTRY_DB (or registry_db in the config file)"
            )
        local_root = self.root.removeprefix("file://")
        return str(Path(local_root).expanduser().resolve() / "registry.db")


#: Environment variable -> dotted config key.
ENV_VARS: dict[str, str] = {
    "MLPLAT_ROOT": "root",
    "MLPLAT_REGISTRY_DB": "registry_db",
    "MLPLAT_REGISTRY_URL": "registry.url",
    "MLPLAT_RAY_ADDRESS": "ray_address",
    "MLPLAT_NAMESPACE": "namespace",
    "MLPLAT_API_TOKEN": "api_token",
    "MLPLAT_ADMIN_TOKEN": "admin_token",
    "MLPLAT_SERVE_REGION": "serve.region",
    "MLPLAT_S3_ENDPOINT": "s3.endpoint_url",
    "AWS_ENDPOINT_URL": "s3.endpoint_url",
    "AWS_ACCESS_KEY_ID": "s3.access_key",
    "AWS_SECRET_ACCESS_KEY": "s3.secret_key",
    "AWS_REGION": "s3.region",
    "MLPLAT_SERVE_HOST": "serve.host",
    "MLPLAT_SERVE_PORT": "serve.port",
    "MLPLAT_SERVE_GRPC_PORT": "serve.grpc_port",
    "MLPLAT_SERVE_DIRECT_PORT": "serve.direct_port",
    "MLPLAT_SERVE_HAPROXY": "serve.haproxy",
}


_REGION = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def env_setting(var: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of environment variable ``var``, stripped; None when it is unset, empty or blank.

    ``MLPLAT_ROOT=`` (set but empty) means "not set", never "the current directory".

    >>> env_setting("MLPLAT_ROOT", {"MLPLAT_ROOT": "  "}) is None
    True
    >>> env_setting("MLPLAT_ROOT", {"MLPLAT_ROOT": " /data/mlplat "})
    '/data/mlplat'
    """
    value = (os.environ if env is None else env).get(var)
    if value is None or not value.strip():
        return None
    return value.strip()


def acting_user() -> str:
    """Who runs a control action (deploy, rollback, approve), for its event: ``MLPLAT_USER``,
    else the login name."""
    import getpass

    try:
        return env_setting("MLPLAT_USER") or getpass.getuser()
    except Exception:
        return "unknown"


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(target.get(part), dict):  # absent, or None (an optional section such as ingress_autoscaling)
            target[part] = {}
        target = target[part]
    target[leaf] = value


def _format_errors(exc: pydantic.ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{where}' (remove it or check its spelling)")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key '{where}'")
        elif not err["loc"]:  # a check across keys: its message names them; the input may hold secrets
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
        else:
            secret = any(word in where for word in ("token", "secret", "password", "access_key"))
            lines.append(f"{source}: '{where}': {err['msg']} (got {'***' if secret else repr(err.get('input'))})")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any] | None, model: type[M], source: str = "config") -> M:
    """Validate a mapping against ``model``; raise :class:`ConfigError` naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None


def load_config(path: str | os.PathLike[str], model: type[M]) -> M:
    """Load a YAML file into ``model``.

    >>> load_config("configs/platform.yaml", PlatformConfig)  # doctest: +SKIP
    """
    return parse_config(_read_yaml(path), model, source=str(path))


def platform_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> PlatformConfig:
    """Build the platform settings from defaults < YAML file < environment < overrides.

    ``path`` defaults to ``$MLPLAT_CONFIG`` when that is set.
    """
    env = os.environ if env is None else env
    path = path or env_setting("MLPLAT_CONFIG", env)
    data: dict[str, Any] = {}
    source = "settings"
    if path:
        loaded = _read_yaml(path)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = dict(loaded or {})
        source = str(path)
    for var, dotted in ENV_VARS.items():
        value = env_setting(var, env)
        if value is not None:
            _set_dotted(data, dotted, value)
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(data, key.replace("__", "."), value)
    return parse_config(data, PlatformConfig, source=source)

