"""How many replicas each deployment of the Serve app may run: pure decisions over the settings.

The pool and the ingress scale as ``serve.pool`` and ``serve.ingress_autoscaling`` say; a
dedicated model's deployment starts from ``serve.dedicated`` and takes the fields its
``serving_policy.autoscaling`` names (e.g. ``{"autoscaling": {"max_replicas": 4}}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from mlplat.config import DedicatedSettings, ScalingSettings, ServeSettings
from mlplat.errors import ConfigError

__all__ = ["dedicated_scaling", "ingress_replicas_options"]

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
    """
    if serve.ingress_autoscaling is None:
        return {"num_replicas": serve.ingress_replicas or 1}
    return {"autoscaling_config": serve.ingress_autoscaling.autoscaling_config()}
