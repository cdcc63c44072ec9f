"""The rollout policy and the pure canary decision (table-driven; no Ray)."""

from __future__ import annotations

import dataclasses
import doctest
import math
from typing import Any

import pydantic
import pytest

from mlplat.errors import ConfigError
from mlplat.lifecycle import policy as policy_module
from mlplat.lifecycle.policy import CanaryDecision, CanaryPolicy, RolloutPolicy, decide_canary
from mlplat.serving import traffic
from mlplat.serving.traffic import VersionStats


def stats(requests: int, errors: int = 0, latency_ms: float = 10.0, *,
          pred: tuple[int, float, float] | None = None) -> VersionStats:
    """``requests`` requests at ``latency_ms``, the first ``errors`` failed; ``pred``: (n, mean, std) of predictions."""
    s = VersionStats()
    for i in range(requests):
        s.record(latency_ms, ok=i >= errors)
    if pred is not None:
        n, mean, std = pred
        s = dataclasses.replace(s, pred_n=n, pred_mean=mean, pred_m2=std * std * n)
    return s


DEFAULT = CanaryPolicy()
PROD = stats(1_000, errors=2, pred=(1_000, 0.5, 0.1))  # 0.2% errors, p99 in the 11.39 ms bucket

CASES = [
    pytest.param(stats(12), PROD, DEFAULT, None, "hold", ["12 of 200 requests"], id="hold-under-min-requests"),
    pytest.param(stats(40, errors=4), PROD, DEFAULT, None, "hold", ["40 of 200"], id="hold-errors-below-early-count"),
    pytest.param(stats(40, errors=5), PROD, DEFAULT, None, "rollback", ["5 errors in 40 requests", "12.5% > max 1.0%"],
                 id="early-error-rollback"),
    pytest.param(stats(300, errors=9), stats(1_000, errors=26), DEFAULT, None, "rollback",
                 ["error rate 3.0% (9 of 300) > max 1.0%"], id="error-rate-rollback"),
    pytest.param(stats(300, errors=6), PROD, DEFAULT.model_copy(update={"max_error_rate": 0.05}), None, "rollback",
                 ["error rate increase 1.8%", "> max 0.50%"], id="error-increase-rollback"),
    pytest.param(stats(300, latency_ms=20.0), PROD, DEFAULT, None, "rollback",
                 ["p99 latency ratio 1.97", "canary 22.41 ms", "production 11.39 ms", "> max 1.50"], id="p99-ratio-rollback"),
    pytest.param(stats(300, latency_ms=4.0), stats(1_000, latency_ms=1.0), DEFAULT, None, "promote",
                 ["p99 latency 4.623 ms is under the 5 ms floor"], id="p99-under-floor-not-judged"),
    pytest.param(stats(300, pred=(300, 0.8, 0.1)), PROD, DEFAULT, None, "rollback",
                 ["prediction shift 3.00 pooled std", "> max 0.50"], id="prediction-shift-rollback"),
    pytest.param(stats(300, pred=(10, 1.5, 0.0)), stats(1_000, pred=(10, 0.5, 0.0)), DEFAULT, None, "rollback",
                 ["prediction mean difference 1 ", "absolute", "> max 0.5"], id="prediction-shift-absolute-few-samples"),
    pytest.param(stats(300), PROD, DEFAULT, {"auc": (0.85, 0.90)}, "rollback",
                 ["label metric auc 0.85 vs production 0.9", "ratio 0.944 < min 0.980"], id="label-metric-rollback"),
    pytest.param(stats(300, errors=1, latency_ms=12.0, pred=(300, 0.51, 0.1)), PROD, DEFAULT, {"auc": (0.895, 0.90)}, "promote",
                 ["error rate 0.33% (1 of 300) <= max 1.0%", "error rate increase 0.13%", "p99 latency ratio 1.25",
                  "prediction shift 0.10 pooled std", "label metric auc", "ratio 0.994 >= min 0.980"], id="all-good-promote"),
    pytest.param(stats(300, latency_ms=500.0, pred=(300, 9.0, 0.1)), stats(0), DEFAULT, {"auc": (0.1, 0.9)}, "promote",
                 ["error rate 0.0% (0 of 300) <= max 1.0%", "production has no traffic", "absolute error rate only"],
                 id="no-production-traffic-absolute-only"),
    pytest.param(stats(300, errors=9), stats(0), DEFAULT, None, "rollback", ["error rate 3.0% (9 of 300) > max 1.0%"],
                 id="no-production-traffic-error-rollback"),
]


@pytest.mark.parametrize(("canary", "production", "policy", "labels", "action", "mentions"), CASES)
def test_decide_canary(canary: VersionStats, production: VersionStats, policy: CanaryPolicy,
                       labels: dict[str, tuple[float, float]] | None, action: str, mentions: list[str]) -> None:
    decision = decide_canary(canary, production, policy, label_metrics=labels)
    assert isinstance(decision, CanaryDecision)
    assert decision.action == action, decision.reasons
    text = " | ".join(decision.reasons)
    for fragment in mentions:
        assert fragment in text, (fragment, decision.reasons)


def test_rollback_lists_every_failing_check_and_only_those() -> None:
    canary = stats(300, errors=30, latency_ms=100.0, pred=(300, 2.0, 0.1))
    decision = decide_canary(canary, PROD, DEFAULT, label_metrics={"auc": (0.5, 0.9), "f1": (0.9, 0.9)})
    assert decision.action == "rollback"
    assert [r.split(" ")[0] + " " + r.split(" ")[1] for r in decision.reasons] == [
        "error rate", "error rate", "p99 latency", "prediction shift", "label metric"]
    assert all(("auc" in r) for r in decision.reasons if r.startswith("label"))


def test_label_metric_at_or_below_zero_uses_the_same_relative_margin() -> None:
    ok = decide_canary(stats(300), PROD, DEFAULT, label_metrics={"r2": (-0.101, -0.1)})
    bad = decide_canary(stats(300), PROD, DEFAULT, label_metrics={"r2": (-0.2, -0.1)})
    nan = decide_canary(stats(300), PROD, DEFAULT, label_metrics={"auc": (math.nan, 0.9)})
    assert (ok.action, bad.action, nan.action) == ("promote", "rollback", "rollback")


def test_overflowing_canary_latency_rolls_back() -> None:
    decision = decide_canary(stats(300, latency_ms=90_000.0), PROD, DEFAULT)
    assert decision.action == "rollback"
    assert any("p99 latency ratio inf (canary over 60000 ms" in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize(("serving_policy", "expected"), [
    (None, RolloutPolicy()),
    ({}, RolloutPolicy()),
    ({"rollout": None, "dedicated": True}, RolloutPolicy()),
    ({"rollout": "auto"}, RolloutPolicy(mode="auto")),
    ({"rollout": "manual"}, RolloutPolicy(mode="manual")),
    ({"rollout": {"mode": "auto", "canary_percent": 0, "canary_key": "user_id",
                  "canary": {"min_requests": 50, "max_p99_ratio": 2}}},
     RolloutPolicy(mode="auto", canary_percent=0, canary_key="user_id",
                   canary=CanaryPolicy(min_requests=50, max_p99_ratio=2.0))),
])
def test_rollout_policy_from_serving_policy(serving_policy: Any, expected: RolloutPolicy) -> None:
    got = RolloutPolicy.from_serving_policy(serving_policy)
    assert got == expected
    assert got.model_dump() == expected.model_dump()


@pytest.mark.parametrize(("rollout", "mentions"), [
    ("fast", ["serving_policy.rollout", "'fast'", "expected 'auto', 'manual' or a mapping"]),
    ("Auto", ["serving_policy.rollout", "'Auto'"]),
    (5, ["serving_policy.rollout", "int 5"]),
    ({"mode": "auto", "percent": 5}, ["serving_policy.rollout.percent: unknown key", "canary_percent"]),
    ({"canary_percent": 150}, ["serving_policy.rollout.canary_percent", "less than or equal to 100", "150"]),
    ({"canary_percent": -1}, ["serving_policy.rollout.canary_percent", "-1"]),
    ({"mode": "sometimes"}, ["serving_policy.rollout.mode", "'sometimes'"]),
    ({"canary": {"min_requests": -3}}, ["serving_policy.rollout.canary.min_requests", "-3"]),
    ({"canary": {"max_errors": 3}}, ["serving_policy.rollout.canary.max_errors: unknown key"]),
    ({"prewarm_timeout_s": 0}, ["serving_policy.rollout.prewarm_timeout_s", "greater than 0"]),
])
def test_rollout_policy_rejects_bad_config(rollout: Any, mentions: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        RolloutPolicy.from_serving_policy({"rollout": rollout})
    message = str(info.value)
    assert "\n" not in message
    for fragment in mentions:
        assert fragment in message, (fragment, message)


def test_policies_are_frozen_and_strict() -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        RolloutPolicy().mode = "auto"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="unknown"):
        CanaryPolicy(unknown=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("module", [policy_module, traffic], ids=["policy", "traffic"])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted >= 5 and result.failed == 0
