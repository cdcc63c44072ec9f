"""Build, start, inspect and stop the mlplat Serve application."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mlplat.config import PlatformConfig

__all__ = ["build_app", "start_serving", "dedicated_policies", "serving_status", "stop_serving", "serve_env", "apply_serve_env",
           "grpc_options"]


def serve_env(config: PlatformConfig) -> dict[str, str]:
    """Environment that must be set before Ray starts for the configured Serve mode."""
    env: dict[str, str] = {}
    if config.serve.worker_niceness is not None:
        env["RAY_worker_niceness"] = str(config.serve.worker_niceness)  # read by the raylet
    if not config.serve.prestart_workers:
        env["RAY_prestart_worker_first_driver"] = "0"  # read by the raylet
    if config.serve.throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    if config.serve.haproxy:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "1" if config.serve.haproxy_metrics else "0"
        threads = config.serve.haproxy_threads or min(4, max(1, (os.cpu_count() or 2) // 2))
        env["RAY_SERVE_HAPROXY_NBTHREAD"] = str(threads)
        # a client silent mid-request is cut off (Serve's default: 3600 s); Serve 2.60 exposes no
        # variable for HAProxy's `timeout http-request` or request buffering (docs/reliability.md)
        env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] = str(config.serve.haproxy_timeout_client_s)
    return env


def build_app(config: PlatformConfig, registry_actor: str,
              dedicated_models: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None = None):
    """The Serve application: ingress -> (model pool | one deployment per dedicated model).

    ``dedicated_models``: names (each gets ``serve.dedicated``'s autoscaling), or name -> the
    model's serving_policy, whose ``autoscaling`` section overrides those defaults field by field."""
    from mlplat.names import validate_name
    from mlplat.serving.admission import queue_options
    from mlplat.serving.deployments import DedicatedModel, ModelPool
    from mlplat.serving.ingress import Ingress, ingress_deployment_name
    from mlplat.serving.scaling import dedicated_actor_options, dedicated_device, dedicated_scaling, ingress_replicas_options

    s = config.serve
    policies = _policies_of(dedicated_models)
    gpus = cluster_gpus() if any(dedicated_device(p).device == "cuda" for p in policies.values()) else 0.0
    # @serve.deployment turns these classes into Deployments (with .options) at runtime; mypy sees the classes.
    pool = ModelPool.options(  # type: ignore[attr-defined]
        autoscaling_config=s.pool.autoscaling_config(),
        max_ongoing_requests=s.pool.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.pool.num_cpus},
        **queue_options(s.pool.max_queued_requests, s.retry_after_s),
    ).bind(config, registry_actor)
    dedicated = {}
    for name, policy in policies.items():
        validate_name(name, "model name")
        dedicated[name] = DedicatedModel.options(  # type: ignore[attr-defined]
            name=f"model-{name}",
            autoscaling_config=dedicated_scaling(s.dedicated, policy, model=name).autoscaling_config(),
            max_ongoing_requests=s.dedicated.max_ongoing_requests,
            ray_actor_options=dedicated_actor_options(s.dedicated.num_cpus, policy, cluster_gpus=gpus, model=name),
            **queue_options(s.dedicated.max_queued_requests, s.retry_after_s),
        ).bind(config, name, registry_actor, device=dedicated_device(policy, model=name).device)
    return Ingress.options(  # type: ignore[attr-defined]
        name=ingress_deployment_name(s.region),
        logging_config={"enable_access_log": s.access_log},
        max_ongoing_requests=s.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": s.ingress_num_cpus},
        **ingress_replicas_options(s),
        **queue_options(s.ingress_max_queued_requests, s.retry_after_s),
    ).bind(config, registry_actor, pool, dedicated)


def cluster_gpus() -> float:
    """GPUs of the running Ray cluster (0 when Ray is not initialized)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def _policies_of(dedicated_models: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None) -> dict[str, Mapping[str, Any]]:
    if dedicated_models is None:
        return {}
    if isinstance(dedicated_models, Mapping):
        return {name: policy or {} for name, policy in dedicated_models.items()}
    return {name: {} for name in dedicated_models}


def dedicated_policies(config: PlatformConfig, registry_actor: str, names: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """The serving policy of each named model, read through the running registry actor."""
    import ray

    from mlplat.registry import ActorRegistry

    registry = ActorRegistry(ray.get_actor(registry_actor, namespace=config.namespace))
    return {name: registry.get_model(name).serving_policy for name in names}


def start_serving(config: PlatformConfig, *, registry_actor: str,
                  dedicated_models: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = (),
                  blocking: bool = False) -> str:
    """Deploy (or redeploy: Serve restarts every replica) the app; returns the base URL.
    ``dedicated_models`` get their own deployment (the caller lists the models whose serving
    policy says ``dedicated: true``); every other model is served from the pool. Given names,
    their serving policies (``autoscaling`` overrides) are read from the registry actor; a bad
    override is a ConfigError before anything is deployed. With ``serve.grpc_port`` Serve's gRPC
    proxy serves the OIP v2 gRPC service too (:func:`grpc_options`; only if Serve starts here)."""
    from ray import serve

    from mlplat.serving.scaling import dedicated_actor_options, dedicated_scaling

    actor_name = registry_actor
    if isinstance(dedicated_models, Mapping):
        policies = _policies_of(dedicated_models)
    else:
        policies = dedicated_policies(config, actor_name, list(dedicated_models)) if dedicated_models else {}
    gpus = cluster_gpus()
    for name, policy in policies.items():  # fail before serve.start
        dedicated_scaling(config.serve.dedicated, policy, model=name)
        dedicated_actor_options(config.serve.dedicated.num_cpus, policy, cluster_gpus=gpus, model=name)
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port}, grpc_options=grpc_options(config))
    serve.run(build_app(config, actor_name, policies), name=config.serve.app_name, route_prefix=config.serve.route_prefix,
              blocking=blocking)
    return f"http://{config.serve.host}:{config.serve.port}{config.serve.route_prefix.rstrip('/')}"


def grpc_options(config: PlatformConfig) -> dict[str, Any] | None:
    """Serve's ``grpc_options`` for ``serve.grpc_port``: the OIP v2 gRPC service on that port
    (mlplat/serving/oip_grpc), or None (no gRPC) when it is None or 0. Serve applies them only
    at its first start on a Ray instance: a later ``serve.start`` keeps the proxy it has.

    >>> from mlplat.config import PlatformConfig
    >>> grpc_options(PlatformConfig(serve={"grpc_port": 9001}))
    {'port': 9001, 'grpc_servicer_functions': ['mlplat.serving.oip_grpc.add_GRPCInferenceServiceServicer_to_server']}
    >>> grpc_options(PlatformConfig(serve={"grpc_port": 0})) is None
    True
    """
    if not config.serve.grpc_port:
        return None
    from mlplat.serving.oip_grpc import SERVICER_FUNCTION

    return {"port": config.serve.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]}


def serving_status(config: PlatformConfig) -> dict[str, Any]:
    from ray import serve

    status = serve.status()
    app = status.applications.get(config.serve.app_name)
    if app is None:
        return {"app": config.serve.app_name, "status": "NOT_RUNNING", "deployments": {}}
    return {"app": config.serve.app_name, "status": str(app.status.value if hasattr(app.status, "value") else app.status),
            "deployments": {name: {"status": str(getattr(d.status, "value", d.status)),
                                   "replicas": {str(k): v for k, v in (d.replica_states or {}).items()}}
                            for name, d in app.deployments.items()},
            "url": f"http://{config.serve.host}:{config.serve.port}"}


def stop_serving(config: PlatformConfig) -> None:
    from ray import serve

    serve.delete(config.serve.app_name)


def apply_serve_env(config: PlatformConfig) -> None:
    """Export the Serve mode variables into this process before it starts Ray. In HAProxy mode
    also HAProxy's stats (8404) and metrics (9101) listeners go to loopback: Serve binds them on
    every interface without auth (haproxy_loopback.py; an operator's own
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` is left alone)."""
    for key, value in serve_env(config).items():
        os.environ.setdefault(key, value)
    if config.serve.haproxy:
        from mlplat.serving.haproxy_loopback import loopback_env

        # HAProxy's own request deadline (408), the same as the ingress's body deadline
        os.environ.update(loopback_env(os.environ, request_timeout_s=math.ceil(config.serve.body_read_timeout_s)))
