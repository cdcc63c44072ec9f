"""The canary traffic split and per-version live stats (pure; no Ray). Their doctests run in test_lifecycle_policy.py."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from mlplat.serving.traffic import LATENCY_BUCKETS_MS, VersionStats, canary_bucket, request_key, routes_to_canary

KEYS = [f"user-{i}" for i in range(2_000)]


def test_latency_buckets_are_log_spaced_from_a_tenth_of_a_ms_to_a_minute() -> None:
    assert LATENCY_BUCKETS_MS[0] == 0.1 and LATENCY_BUCKETS_MS[-1] == 60_000.0
    assert 50 <= len(LATENCY_BUCKETS_MS) <= 70
    ratios = [b / a for a, b in zip(LATENCY_BUCKETS_MS[:-1], LATENCY_BUCKETS_MS[1:], strict=True)]
    assert all(1.2 < r < 1.3 for r in ratios)
    assert len(VersionStats().latency_counts) == len(LATENCY_BUCKETS_MS) + 1


def test_canary_bucket_is_stable_and_in_range() -> None:
    # Hard-coded: a change of hash function (or of its salt) moves every user between versions.
    assert canary_bucket("alice") == 4287
    assert canary_bucket("bob") == 2638
    assert canary_bucket("k") == 7469
    buckets = [canary_bucket(k) for k in KEYS]
    assert all(0 <= b <= 9999 for b in buckets)
    assert len(set(buckets)) > 1_500


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_keyed_share_is_close_to_the_percent(percent: float) -> None:
    share = 100 * sum(routes_to_canary(k, percent) for k in KEYS) / len(KEYS)
    assert abs(share - percent) <= 3


def test_routing_is_sticky_and_raising_the_percent_only_adds_keys() -> None:
    for key in KEYS[:50]:
        assert len({routes_to_canary(key, 25) for _ in range(100)}) == 1
    at_10 = {k for k in KEYS if routes_to_canary(k, 10)}
    at_25 = {k for k in KEYS if routes_to_canary(k, 25)}
    assert at_10 < at_25


def test_zero_and_hundred_percent_are_absolute() -> None:
    assert not any(routes_to_canary(k, 0) for k in KEYS)
    assert all(routes_to_canary(k, 100) for k in KEYS)
    assert not routes_to_canary(None, 0) and routes_to_canary(None, 100)


@pytest.mark.parametrize("percent", [-0.1, 100.5, math.nan, math.inf])
def test_out_of_range_percent_raises(percent: float) -> None:
    with pytest.raises(ValueError, match=f"between 0 and 100, got {percent!r}"):
        routes_to_canary("k", percent)
    with pytest.raises(ValueError):
        routes_to_canary(None, percent)


def test_unkeyed_requests_draw_from_the_given_rng() -> None:
    draws = [routes_to_canary(None, 30, rng=random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same first draw
    rng = random.Random(7)
    share = 100 * sum(routes_to_canary(None, 30, rng=rng) for _ in range(5_000)) / 5_000
    assert abs(share - 30) <= 3


@pytest.mark.parametrize(("caller", "row", "key_feature", "expected"), [
    ("svc", {"user_id": 42}, "user_id", "42"),          # the configured feature wins
    ("svc", {"user_id": None}, "user_id", "svc"),       # null feature: the caller
    ("svc", {"user_id": math.nan}, "user_id", "svc"),   # NaN is null too
    ("svc", {"other": 1}, "user_id", "svc"),            # feature absent
    ("svc", {"user_id": 42}, None, "svc"),              # no feature configured
    ("svc", None, "user_id", "svc"),                    # no row
    ("", {"user_id": 42}, None, None),                  # empty caller: no key
    (None, None, None, None),
    (None, {"user_id": "abc"}, "user_id", "abc"),
    (None, {"user_id": 0}, "user_id", "0"),             # falsy but not null
])
def test_request_key_precedence(caller, row, key_feature, expected) -> None:
    assert request_key(caller, row, key_feature) == expected


def _bucket_bounds(upper: float) -> tuple[float, float]:
    if math.isinf(upper):
        return LATENCY_BUCKETS_MS[-1], math.inf
    index = LATENCY_BUCKETS_MS.index(upper)
    return (LATENCY_BUCKETS_MS[index - 1] if index else -math.inf), upper


def test_latency_quantile_lies_in_the_bucket_of_numpys_quantile() -> None:
    samples = np.random.default_rng(0).lognormal(mean=3.0, sigma=1.2, size=4_999)
    stats = VersionStats()
    for ms in samples:
        stats.record(float(ms), ok=True)
    assert stats.requests == sum(stats.latency_counts) == samples.size
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0):
        value = float(np.quantile(samples, q, method="inverted_cdf"))
        upper = stats.latency_quantile_ms(q)
        assert upper is not None
        lower, upper = _bucket_bounds(upper)
        assert lower < value <= upper, (q, value, lower, upper)


def test_latency_edges() -> None:
    stats = VersionStats()
    assert stats.latency_quantile_ms(0.99) is None
    for ms in (0.0, -1.0, 0.1, 60_000.0, 60_001.0, math.nan, math.inf):
        stats.record(ms, ok=True)
    assert stats.latency_counts[0] == 3 and stats.latency_counts[-2] == 1 and stats.latency_counts[-1] == 3
    assert stats.latency_quantile_ms(0.0) == 0.1
    assert stats.latency_quantile_ms(1.0) == math.inf
    with pytest.raises(ValueError, match="between 0 and 1"):
        stats.latency_quantile_ms(99)


def _record_all(stats: VersionStats, latencies, predictions, errors_every: int = 7) -> VersionStats:
    for i, (ms, batch) in enumerate(zip(latencies, predictions, strict=True)):
        stats.record(float(ms), ok=i % errors_every != 0, predictions=list(batch))
    return stats


def test_merge_of_two_halves_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    latencies = rng.lognormal(2.0, 1.0, size=400)
    predictions = rng.normal(1e3, 2.0, size=(400, 5))  # offset mean: a naive sum-of-squares would lose digits
    one = _record_all(VersionStats(), latencies, predictions)
    first = _record_all(VersionStats(), latencies[:150], predictions[:150])
    second = _record_all(VersionStats(), latencies[150:], predictions[150:])
    before = first.to_json()
    merged = first.merged(second)
    assert first.to_json() == before  # pure
    assert (merged.requests, merged.pred_n, merged.latency_counts) == (one.requests, one.pred_n, one.latency_counts)
    assert merged.errors == sum(1 for i in range(150) if i % 7 == 0) + sum(1 for i in range(250) if i % 7 == 0)
    values = predictions.ravel()
    assert merged.pred_mean == pytest.approx(float(values.mean()), rel=1e-9)
    assert merged.prediction_std == pytest.approx(float(values.std()), rel=1e-9)
    assert one.prediction_std == pytest.approx(float(values.std()), rel=1e-9)
    assert VersionStats().merged(VersionStats()) == VersionStats()


def test_record_uses_the_row_maximum_and_skips_non_finite() -> None:
    stats = VersionStats()
    stats.record(1.0, ok=True, predictions=[[0.1, 0.7, 0.2], [0.6, 0.4], np.array([0.3, math.nan])])
    stats.record(1.0, ok=False, predictions=[math.nan, math.inf, "cat", None, [], 0.5])
    assert stats.pred_n == 4 and stats.pred_mean == pytest.approx((0.7 + 0.6 + 0.3 + 0.5) / 4)
    assert (stats.requests, stats.errors, stats.error_rate) == (2, 1, 0.5)
    stats.record(1.0, ok=True, predictions=np.array([[0.2, 0.8], [0.9, 0.1]]))  # an array, as a model returns it
    stats.record(1.0, ok=True, predictions=np.array([]))
    assert stats.pred_n == 6 and stats.requests == 4
    assert VersionStats().error_rate == 0.0 and VersionStats().prediction_std == 0.0


def test_json_round_trip() -> None:
    stats = _record_all(VersionStats(), [1.0, 20.0, 300.0], [[0.1], [0.2, 0.9], [0.5]])
    data = stats.to_json()
    assert VersionStats.from_json(data) == stats
    assert VersionStats.from_json(json.loads(json.dumps(data))) == stats


def _good() -> dict:
    return VersionStats(requests=2, errors=1, latency_counts=[1, 1] + [0] * (len(LATENCY_BUCKETS_MS) - 1)).to_json()


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: [d], "expected a mapping"),
    (lambda d: {k: v for k, v in d.items() if k != "errors"}, r"missing key\(s\) \['errors'\]"),
    (lambda d: {**d, "extra": 1}, r"unknown key\(s\) \['extra'\]"),
    (lambda d: {**d, "requests": -2}, "requests must be a non-negative integer"),
    (lambda d: {**d, "errors": True}, "errors must be a non-negative integer"),
    (lambda d: {**d, "pred_n": 1.5}, "pred_n must be a non-negative integer"),
    (lambda d: {**d, "latency_counts": [1, 1]}, "latency_counts must be a list of 61 counts"),
    (lambda d: {**d, "latency_counts": "abc"}, "latency_counts must be a list"),
    (lambda d: {**d, "latency_counts": [1, -1, 2] + [0] * 58}, "latency_counts must be a non-negative integer"),
    (lambda d: {**d, "pred_mean": math.nan}, "pred_mean must be a finite number"),
    (lambda d: {**d, "pred_m2": "0"}, "pred_m2 must be a finite number"),
    (lambda d: {**d, "errors": 3}, "inconsistent counts"),
    (lambda d: {**d, "requests": 5}, "inconsistent counts"),
    (lambda d: {**d, "pred_m2": -1.0}, "inconsistent counts"),
])
def test_from_json_rejects_bad_input(change, match) -> None:
    with pytest.raises(ValueError, match=match):
        VersionStats.from_json(change(_good()))
