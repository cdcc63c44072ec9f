"""The weights placement rule: a pure function over a size and the settings (no storage)."""

from __future__ import annotations

import pytest

from mlplat.config import PlatformConfig, WeightStorageSettings, platform_config
from mlplat.errors import ConfigError
from mlplat.models.placement import choose_placement

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(("weight_bytes", "expected"), [
    (0, "packed"),
    (4 * KIB, "packed"),
    (MIB, "packed"),            # the limit is inclusive
    (MIB + 1, "file"),
    (300 * MIB, "file"),
    (2 * GIB, "file"),
    (2 * GIB + 1, "sharded"),
    (70 * GIB, "sharded"),
])
def test_default_settings(weight_bytes, expected):
    assert choose_placement(weight_bytes, WeightStorageSettings()) == expected


@pytest.mark.parametrize(("settings", "weight_bytes", "expected"), [
    (WeightStorageSettings(packed_max_bytes=0), 0, "file"),                      # 0: never pack
    (WeightStorageSettings(packed_max_bytes=0), 10, "file"),
    (WeightStorageSettings(packed_max_bytes=10, file_max_bytes=10), 11, "sharded"),  # no file band
    (WeightStorageSettings(packed_max_bytes=0, file_max_bytes=0), 1, "sharded"),
    (WeightStorageSettings(packed_max_bytes=100, file_max_bytes=1000), 100, "packed"),
    (WeightStorageSettings(packed_max_bytes=100, file_max_bytes=1000), 1000, "file"),
])
def test_custom_thresholds(settings, weight_bytes, expected):
    assert choose_placement(weight_bytes, settings) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True, None])
def test_bad_size_is_refused(bad):
    with pytest.raises(ValueError, match="weight_bytes"):
        choose_placement(bad, WeightStorageSettings())


def test_settings_live_on_the_platform_config_and_are_checked():
    assert PlatformConfig().weights == WeightStorageSettings()
    cfg = platform_config(env={}, weights__packed_max_bytes=4096)
    assert cfg.weights.packed_max_bytes == 4096
    with pytest.raises(ConfigError, match="packed_max_bytes"):
        platform_config(env={}, weights__packed_max_bytes=10, weights__file_max_bytes=5)
    with pytest.raises(ConfigError, match="unknown key 'weights.pack_max'"):
        platform_config(env={}, weights__pack_max=1)
    with pytest.raises(ConfigError, match="shard_max_bytes"):
        platform_config(env={}, weights__shard_max_bytes=0)
