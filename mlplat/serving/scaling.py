"""How many replicas each deployment of the Serve app may run, and on which device: pure
decisions over the settings.

The pool and the ingress scale as ``serve.pool`` and ``serve.ingress_autoscaling`` say; a
dedicated model's deployment starts from ``serve.dedicated`` and takes the fields its
``serving_policy.autoscaling`` names (e.g. ``{"autoscaling": {"max_replicas": 4}}``). Its
``serving_policy.device`` (``cpu`` or ``cuda``, with ``gpus_per_replica``) decides where its
replicas run (:func:`dedicated_device`, :func:`dedicated_actor_options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from mlplat.config import DedicatedSettings, ScalingSettings, ServeSettings
from mlplat.errors import ConfigError

__all__ = ["dedicated_scaling", "ingress_replicas_options", "DevicePlacement", "dedicated_device",
           "dedicated_actor_options", "DEVICES"]

_EXPECTED = (f"expected a mapping with any of {', '.join(ScalingSettings.model_fields)} "
             "(e.g. {\"autoscaling\": {\"min_replicas\": 1, \"max_replicas\": 4}}); fix the model's serving_policy")


def dedicated_scaling(defaults: DedicatedSettings, serving_policy: Mapping[str, Any] | None, *,
                      model: str = "") -> ScalingSettings:
    """The autoscaling of ``model``'s own deployment: ``serve.dedicated`` overridden field by field
    by ``serving_policy["autoscaling"]``; a bad value is a :class:`ConfigError` naming the model
    and each bad ``serving_policy.autoscaling.<field>``.

    >>> dedicated_scaling(DedicatedSettings(), {"autoscaling": {"max_replicas": 4}}).max_replicas
    4
    >>> dedicated_scaling(DedicatedSettings(), {}).target_ongoing_requests
    16.0
    >>> dedicated_scaling(DedicatedSettings(), {"autoscaling": {"max_replicas": 0}}, model="hot")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlplat.errors.ConfigError: model 'hot': serving_policy.autoscaling.max_replicas: Input should be greater than or equal to 1 (got 0); ...
    """
    base = {name: getattr(defaults, name) for name in ScalingSettings.model_fields}
    raw = (serving_policy or {}).get("autoscaling")
    who = f"model {model!r}: " if model else ""
    if raw is None:
        return ScalingSettings(**base)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{who}serving_policy.autoscaling: got {type(raw).__name__} {raw!r}; {_EXPECTED}")
    try:
        return ScalingSettings.model_validate({**base, **raw})
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in ("serving_policy", "autoscaling", *err["loc"]))
            if err["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown key (remove it or check its spelling)")
            elif not err["loc"]:  # a check across fields (min > max): the message names them
                problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{who}{'; '.join(problems)}; {_EXPECTED}") from None


def ingress_replicas_options(serve: ServeSettings) -> dict[str, Any]:
    """The ingress deployment's replica options: a fixed ``num_replicas``, or Serve's
    ``autoscaling_config`` when ``serve.ingress_autoscaling`` is set.

    >>> ingress_replicas_options(ServeSettings(ingress_replicas=2))
    {'num_replicas': 2}
    >>> ingress_replicas_options(ServeSettings(ingress_autoscaling={"max_replicas": 3}))["autoscaling_config"]["max_replicas"]
    3
    >>> ingress_replicas_options(ServeSettings(ingress_autoscaling={"max_replicas": 3}, direct_port=8100)
    ...                          )["autoscaling_config"]["policy"]
    {'policy_function': 'mlplat.serving.direct:direct_aware_policy'}
    """
    if serve.ingress_autoscaling is None:
        return {"num_replicas": serve.ingress_replicas or 1}
    config = serve.ingress_autoscaling.autoscaling_config()
    if serve.direct_port:  # the requests on the direct port count too (serving/direct.py)
        from mlplat.serving.direct import DIRECT_POLICY_PATH

        config["policy"] = {"policy_function": DIRECT_POLICY_PATH}
    return {"autoscaling_config": config}


DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class DevicePlacement:
    """Where a dedicated model's replicas run: ``device`` and the GPUs each replica reserves."""

    device: str = "cpu"
    gpus_per_replica: float = 0.0


def dedicated_device(serving_policy: Mapping[str, Any] | None, *, model: str = "") -> DevicePlacement:
    """``serving_policy.device`` (``cpu``, the default, or ``cuda``) and ``gpus_per_replica``
    (cuda only; default 1, a fraction shares a GPU between replicas); a bad value is a
    :class:`ConfigError` naming the key.

    >>> dedicated_device({"device": "cuda"})
    DevicePlacement(device='cuda', gpus_per_replica=1.0)
    >>> dedicated_device({"device": "cuda", "gpus_per_replica": 0.5}).gpus_per_replica
    0.5
    >>> dedicated_device({})
    DevicePlacement(device='cpu', gpus_per_replica=0.0)
    >>> dedicated_device({"device": "gpu"}, model="hot")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlplat.errors.ConfigError: model 'hot': serving_policy.device: expected one of cpu, cuda, got 'gpu'; ...
    """
    policy = serving_policy or {}
    who = f"model {model!r}: " if model else ""
    device = policy.get("device", "cpu")
    if device not in DEVICES:
        raise ConfigError(f"{who}serving_policy.device: expected one of {', '.join(DEVICES)}, got {device!r}; "
                          "fix the model's serving_policy (e.g. {\"placement\": \"dedicated\", \"device\": \"cuda\"})")
    raw = policy.get("gpus_per_replica")
    if device == "cpu":
        if raw not in (None, 0):
            raise ConfigError(f"{who}serving_policy.gpus_per_replica: {raw!r} needs serving_policy.device: cuda")
        return DevicePlacement()
    gpus = 1.0 if raw is None else raw
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or not 0 < gpus <= 8 or (gpus > 1 and gpus != int(gpus)):
        raise ConfigError(f"{who}serving_policy.gpus_per_replica: expected a fraction in (0, 1] or a whole number "
                          f"up to 8, got {raw!r}")
    return DevicePlacement("cuda", float(gpus))


def dedicated_actor_options(num_cpus: float, serving_policy: Mapping[str, Any] | None, *, cluster_gpus: float,
                            model: str = "") -> dict[str, Any]:
    """The ``ray_actor_options`` of a dedicated model's replicas. ``device: cuda`` on a cluster
    without (enough) GPUs is a :class:`ConfigError` now, not a replica that waits forever for a GPU.

    >>> dedicated_actor_options(0.5, {"device": "cuda", "gpus_per_replica": 0.25}, cluster_gpus=2)
    {'num_cpus': 0.5, 'num_gpus': 0.25}
    >>> dedicated_actor_options(0.5, {}, cluster_gpus=0)
    {'num_cpus': 0.5}
    >>> dedicated_actor_options(0.5, {"device": "cuda"}, cluster_gpus=0, model="hot")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlplat.errors.ConfigError: model 'hot': serving_policy.device is 'cuda' but the Ray cluster has no GPU ...
    """
    placement = dedicated_device(serving_policy, model=model)
    if placement.device == "cpu":
        return {"num_cpus": num_cpus}
    who = f"model {model!r}: " if model else ""
    if cluster_gpus <= 0:
        raise ConfigError(f"{who}serving_policy.device is 'cuda' but the Ray cluster has no GPU (ray.cluster_resources() "
                          "lists none): its replicas would wait forever. Start Ray on a node with GPUs (ray start "
                          "--num-gpus N), or set the model's serving_policy.device to 'cpu'")
    if placement.gpus_per_replica > cluster_gpus:
        raise ConfigError(f"{who}serving_policy.gpus_per_replica is {placement.gpus_per_replica:g} but the Ray cluster has "
                          f"{cluster_gpus:g} GPU(s): no replica could start. Lower gpus_per_replica")
    return {"num_cpus": num_cpus, "num_gpus": placement.gpus_per_replica}
