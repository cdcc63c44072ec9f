"""Autoscaling settings without Ray: the per-model override of a dedicated deployment, the
ingress's fixed count or autoscaling, and the bounds every ScalingSettings checks."""

from __future__ import annotations

import doctest

import pytest

from mlplat.config import DedicatedSettings, PlatformConfig, PoolSettings, ScalingSettings, ServeSettings, parse_config
from mlplat.errors import ConfigError
from mlplat.serving import scaling
from mlplat.serving.scaling import dedicated_scaling, ingress_replicas_options


def test_doctests():
    assert doctest.testmod(scaling).failed == 0


def test_no_override_takes_the_dedicated_defaults():
    defaults = DedicatedSettings(min_replicas=2, max_replicas=5, upscale_delay_s=3)
    got = dedicated_scaling(defaults, {"placement": "dedicated"})
    assert (got.min_replicas, got.max_replicas, got.target_ongoing_requests, got.upscale_delay_s) == (2, 5, 16.0, 3)
    assert dedicated_scaling(defaults, None) == got


def test_override_replaces_only_the_fields_it_names():
    defaults = DedicatedSettings(min_replicas=1, max_replicas=2, downscale_delay_s=60)
    got = dedicated_scaling(defaults, {"autoscaling": {"max_replicas": 4, "target_ongoing_requests": 3}})
    assert (got.min_replicas, got.max_replicas, got.target_ongoing_requests, got.downscale_delay_s) == (1, 4, 3.0, 60)
    assert got.autoscaling_config()["max_replicas"] == 4


@pytest.mark.parametrize("override, needle", [
    ({"max_replicas": 0}, "serving_policy.autoscaling.max_replicas: Input should be greater than or equal to 1 (got 0)"),
    ({"min_replicas": -1}, "serving_policy.autoscaling.min_replicas"),
    ({"target_ongoing_requests": "lots"}, "serving_policy.autoscaling.target_ongoing_requests"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas (2) must be >= min_replicas (3)"),
    ({"max_replica": 3}, "serving_policy.autoscaling.max_replica: unknown key"),
    ({"look_back_period_s": 1, "metrics_interval_s": 2}, "look_back_period_s (1.0) must be greater than metrics_interval_s"),
])
def test_bad_override_names_the_model_and_the_field(override, needle):
    with pytest.raises(ConfigError) as info:
        dedicated_scaling(DedicatedSettings(), {"autoscaling": override}, model="hot")
    message = str(info.value)
    assert message.startswith("model 'hot': ") and needle in message, message
    assert "min_replicas, max_replicas" in message  # what is expected


def test_override_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match=r"model 'hot': serving_policy.autoscaling: got int 4; expected a mapping"):
        dedicated_scaling(DedicatedSettings(), {"autoscaling": 4}, model="hot")


def test_min_above_default_max_is_refused_not_silently_raised():
    with pytest.raises(ConfigError, match=r"max_replicas \(2\) must be >= min_replicas \(3\)"):
        dedicated_scaling(DedicatedSettings(max_replicas=2), {"autoscaling": {"min_replicas": 3}})


def test_ingress_is_a_fixed_count_unless_autoscaling_is_set():
    assert ingress_replicas_options(ServeSettings(ingress_replicas=3)) == {"num_replicas": 3}
    options = ingress_replicas_options(ServeSettings(ingress_autoscaling={"min_replicas": 1, "max_replicas": 4,
                                                                          "upscale_delay_s": 1}))
    assert set(options) == {"autoscaling_config"}
    assert options["autoscaling_config"]["max_replicas"] == 4 and options["autoscaling_config"]["upscale_delay_s"] == 1


def test_ingress_count_and_autoscaling_together_is_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"serve.ingress_replicas .* and serve.ingress_autoscaling .* are both set"):
        parse_config({"serve": {"ingress_replicas": 2, "ingress_autoscaling": {"max_replicas": 3}}}, PlatformConfig)
    with pytest.raises(ConfigError, match=r"ingress_autoscaling.min_replicas must be >= 1"):
        parse_config({"serve": {"ingress_autoscaling": {"min_replicas": 0}}}, PlatformConfig)


def test_pool_bounds_are_checked_and_named():
    with pytest.raises(ConfigError, match=r"'serve.pool': .*max_replicas \(1\) must be >= min_replicas \(2\)"):
        parse_config({"serve": {"pool": {"min_replicas": 2, "max_replicas": 1}}}, PlatformConfig)
    assert PoolSettings().autoscaling_config() == {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8.0, "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0, "look_back_period_s": 30.0, "metrics_interval_s": 10.0}


def test_autoscaling_config_is_accepted_by_serve():
    from ray.serve.config import AutoscalingConfig

    for settings in (PoolSettings(), DedicatedSettings(), ScalingSettings(min_replicas=0, max_replicas=3,
                                                                          look_back_period_s=2, metrics_interval_s=0.5)):
        parsed = AutoscalingConfig(**settings.autoscaling_config())
        assert (parsed.min_replicas, parsed.max_replicas) == (settings.min_replicas, settings.max_replicas)


def test_build_app_gives_each_deployment_its_scaling():
    """The app graph (built without a cluster) carries the per-model override to Serve."""
    from mlplat.serving.app import build_app

    config = PlatformConfig(serve=ServeSettings(ingress_autoscaling={"max_replicas": 3},
                                                pool=PoolSettings(max_replicas=4),
                                                dedicated=DedicatedSettings(max_replicas=2)))
    app = build_app(config, "registry", {"hot": {"autoscaling": {"max_replicas": 5}}, "warm": None})
    ingress = app._bound_deployment
    pool, dedicated = ingress.init_args[2], ingress.init_args[3]
    assert ingress._deployment_config.autoscaling_config.max_replicas == 3
    assert pool._bound_deployment._deployment_config.autoscaling_config.max_replicas == 4
    assert dedicated["hot"]._bound_deployment._deployment_config.autoscaling_config.max_replicas == 5
    assert dedicated["warm"]._bound_deployment._deployment_config.autoscaling_config.max_replicas == 2
    with pytest.raises(ConfigError, match="model 'hot'"):
        build_app(config, "registry", {"hot": {"autoscaling": {"max_replicas": 0}}})
