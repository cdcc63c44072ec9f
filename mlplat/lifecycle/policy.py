"""The safe-rollout policy of a model and the canary decision, pure (no Ray, no I/O).

:class:`RolloutPolicy` is a model's ``serving_policy.rollout``: ``"manual"`` (a person promotes),
``"auto"`` (the controller promotes or rolls back by :func:`decide_canary`) or a mapping of the
fields. :func:`decide_canary` compares the canary's live :class:`VersionStats` with production's
and returns hold / rollback / promote with reasons, in this order:

1. rollback early when the canary's errors reach ``rollback_after_errors`` and its error rate is
   above ``max_error_rate``, even before ``min_requests``;
2. hold while the canary has fewer than ``min_requests`` requests;
3. rollback when any check fails (all failures listed): error rate, error-rate increase over
   production, p99 latency ratio, prediction shift, label metric ratios;
4. else promote, the reasons saying how each check passed.

When production has no requests (a first version), only the absolute error-rate check is judged.
Latencies come from a histogram whose buckets are about 1.25x apart, so a p99 ratio is known to
within that factor: with ``max_p99_ratio=1.5`` a p99 one bucket up passes, two buckets up fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from mlplat.errors import ConfigError
from mlplat.serving.traffic import VersionStats

__all__ = ["CanaryPolicy", "RolloutPolicy", "CanaryDecision", "decide_canary", "MIN_SHIFT_SAMPLES"]

#: Fewer predictions than this on either side: the prediction shift is an absolute mean difference.
MIN_SHIFT_SAMPLES = 30


class CanaryPolicy(BaseModel):
    """When a canary is promoted, held or rolled back (see :func:`decide_canary`). Rates are
    fractions (0.01 = 1%). The stats judged are cumulative from the start of the canary, for the
    canary and for production over the same period."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_requests: int = Field(200, ge=0)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_error_rate_increase: float = Field(0.005, ge=0, le=1)
    rollback_after_errors: int = Field(5, ge=1)
    max_p99_ratio: float = Field(1.5, gt=0)
    p99_floor_ms: float = Field(5.0, ge=0)
    max_prediction_shift: float = Field(0.5, ge=0)
    min_label_metric_ratio: float = Field(0.98, ge=0)


_EXPECTED = ("expected 'auto', 'manual' or a mapping with keys mode, canary_percent, canary_key, prewarm_timeout_s, "
             "canary")


class RolloutPolicy(BaseModel):
    """How a model's new versions reach production. ``canary_percent=0`` is blue-green without a
    canary (straight to production after the pre-warm); ``canary_key`` names a request feature
    used for sticky assignment instead of the ``x-mlplat-caller`` header."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["auto", "manual"] = "manual"
    canary_percent: float = Field(10.0, ge=0, le=100)
    canary_key: str | None = Field(None, min_length=1)
    prewarm_timeout_s: float = Field(120.0, gt=0)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)

    @classmethod
    def from_serving_policy(cls, serving_policy: Mapping[str, Any] | None) -> RolloutPolicy:
        """The policy in ``serving_policy["rollout"]``: missing -> defaults, ``"auto"``/``"manual"``
        -> that mode, a mapping -> those fields; anything else -> :class:`ConfigError` (one line).

        >>> RolloutPolicy.from_serving_policy({}).mode, RolloutPolicy.from_serving_policy({"rollout": "auto"}).mode
        ('manual', 'auto')
        >>> RolloutPolicy.from_serving_policy({"rollout": {"canary_percent": 5, "canary": {"min_requests": 50}}}).canary
        ... # doctest: +NORMALIZE_WHITESPACE
        CanaryPolicy(min_requests=50, max_error_rate=0.01, max_error_rate_increase=0.005, rollback_after_errors=5,
                     max_p99_ratio=1.5, p99_floor_ms=5.0, max_prediction_shift=0.5, min_label_metric_ratio=0.98)
        >>> RolloutPolicy.from_serving_policy({"rollout": "fast"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mlplat.errors.ConfigError: serving_policy.rollout: got 'fast'; expected 'auto', 'manual' or a mapping ...
        """
        raw = (serving_policy or {}).get("rollout")
        if raw is None:
            return cls()
        if isinstance(raw, str):
            if raw in ("auto", "manual"):
                return cls(mode=raw)
            raise ConfigError(f"serving_policy.rollout: got {raw!r}; {_EXPECTED}")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"serving_policy.rollout: got {type(raw).__name__} {raw!r}; {_EXPECTED}")
        try:
            return cls.model_validate(dict(raw))
        except pydantic.ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in ("serving_policy", "rollout", *err["loc"]))
                if err["type"] == "extra_forbidden":
                    problems.append(f"{where}: unknown key (remove it or check its spelling)")
                else:
                    problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
            raise ConfigError(f"{'; '.join(problems)}; {_EXPECTED}") from None


@dataclass(frozen=True)
class CanaryDecision:
    """What to do with the canary, and why (each reason names the number and the threshold)."""

    action: Literal["promote", "hold", "rollback"]
    reasons: tuple[str, ...]


def _pct(rate: float) -> str:
    return f"{rate:.1%}" if rate == 0 or abs(rate) >= 0.01 else f"{rate:.2%}"


def _ms(value: float) -> str:
    return f"{value:g} ms" if math.isfinite(value) else "over 60000 ms"


Check = tuple[bool, str]  # (passed, reason)


def _error_checks(canary: VersionStats, production: VersionStats | None, policy: CanaryPolicy) -> list[Check]:
    rate = canary.error_rate
    ok = rate <= policy.max_error_rate
    checks = [(ok, f"error rate {_pct(rate)} ({canary.errors} of {canary.requests}) "
                   f"{'<=' if ok else '>'} max {_pct(policy.max_error_rate)}")]
    if production is not None:
        increase = rate - production.error_rate
        ok = increase <= policy.max_error_rate_increase
        checks.append((ok, f"error rate increase {_pct(increase)} over production's {_pct(production.error_rate)} "
                           f"{'<=' if ok else '>'} max {_pct(policy.max_error_rate_increase)}"))
    return checks


def _latency_checks(canary: VersionStats, production: VersionStats, policy: CanaryPolicy) -> list[Check]:
    c99, p99 = canary.latency_quantile_ms(0.99), production.latency_quantile_ms(0.99)
    if c99 is None or p99 is None:
        return [(True, "p99 latency not judged: no latencies recorded")]
    if c99 <= policy.p99_floor_ms:
        return [(True, f"p99 latency {_ms(c99)} is under the {_ms(policy.p99_floor_ms)} floor: ratio not judged")]
    if not math.isfinite(p99):
        return [(True, f"p99 latency ratio not judged: production p99 is {_ms(p99)}")]
    ratio = c99 / p99
    ok = ratio <= policy.max_p99_ratio
    return [(ok, f"p99 latency ratio {ratio:.2f} (canary {_ms(c99)}, production {_ms(p99)}) {'<=' if ok else '>'} "
                 f"max {policy.max_p99_ratio:.2f}")]


def _prediction_checks(canary: VersionStats, production: VersionStats, policy: CanaryPolicy) -> list[Check]:
    if not canary.pred_n or not production.pred_n:
        return [(True, f"prediction shift not judged: {canary.pred_n} canary and {production.pred_n} production predictions")]
    diff = abs(canary.pred_mean - production.pred_mean)
    means = f"mean {canary.pred_mean:.4g} vs production {production.pred_mean:.4g}"
    pooled = 0.0
    if min(canary.pred_n, production.pred_n) >= MIN_SHIFT_SAMPLES:
        pooled = math.sqrt((canary.pred_m2 + production.pred_m2) / (canary.pred_n + production.pred_n - 2))
    if pooled > 0:
        shift = diff / pooled
        ok = shift <= policy.max_prediction_shift
        return [(ok, f"prediction shift {shift:.2f} pooled std ({means}) {'<=' if ok else '>'} "
                     f"max {policy.max_prediction_shift:.2f}")]
    ok = diff <= policy.max_prediction_shift
    return [(ok, f"prediction mean difference {diff:.4g} ({means}; absolute: under {MIN_SHIFT_SAMPLES} predictions or no spread) "
                 f"{'<=' if ok else '>'} max {policy.max_prediction_shift:.4g}")]


def _label_checks(label_metrics: Mapping[str, tuple[float, float]], policy: CanaryPolicy) -> list[Check]:
    checks: list[Check] = []
    for name, (c_value, p_value) in sorted(label_metrics.items()):
        values = f"label metric {name} {c_value:.4g} vs production {p_value:.4g}"
        if not math.isfinite(p_value):
            checks.append((True, f"{values}: not judged (production value not finite)"))
            continue
        # c >= ratio * p for a positive p; the same relative margin below p for p <= 0.
        floor = p_value - (1.0 - policy.min_label_metric_ratio) * abs(p_value)
        ok = math.isfinite(c_value) and c_value >= floor
        ratio = f"ratio {c_value / p_value:.3f}" if p_value > 0 else f"floor {floor:.4g}"
        checks.append((ok, f"{values}: {ratio} {'>=' if ok else '<'} min {policy.min_label_metric_ratio:.3f}"))
    return checks


def decide_canary(canary: VersionStats, production: VersionStats, policy: CanaryPolicy, *,
                  label_metrics: Mapping[str, tuple[float, float]] | None = None) -> CanaryDecision:
    """Promote, hold or roll back the canary (see the module doc for the order of the checks).
    ``label_metrics``: name -> (canary value, production value), higher is better.

    >>> def stats(requests, errors=0, latency_ms=10.0):
    ...     s = VersionStats()
    ...     for i in range(requests): s.record(latency_ms, ok=i >= errors)
    ...     return s
    >>> production = stats(1000, errors=2)
    >>> decide_canary(stats(12), production, CanaryPolicy())
    CanaryDecision(action='hold', reasons=('12 of 200 requests: waiting for more traffic',))
    >>> decide_canary(stats(300, errors=9), production, CanaryPolicy())  # doctest: +NORMALIZE_WHITESPACE
    CanaryDecision(action='rollback', reasons=('error rate 3.0% (9 of 300) > max 1.0%',
                   "error rate increase 2.8% over production's 0.20% > max 0.50%"))
    >>> decision = decide_canary(stats(300, latency_ms=12.0), production, CanaryPolicy(), label_metrics={"auc": (0.90, 0.91)})
    >>> decision.action, decision.reasons[2]
    ('promote', 'p99 latency ratio 1.25 (canary 14.27 ms, production 11.39 ms) <= max 1.50')
    """
    if canary.requests < policy.min_requests:
        if canary.errors >= policy.rollback_after_errors and canary.error_rate > policy.max_error_rate:
            return CanaryDecision("rollback", (f"{canary.errors} errors in {canary.requests} requests: error rate "
                                               f"{_pct(canary.error_rate)} > max {_pct(policy.max_error_rate)} "
                                               f"(rolled back before {policy.min_requests} requests)",))
        return CanaryDecision("hold", (f"{canary.requests} of {policy.min_requests} requests: waiting for more traffic",))
    if production.requests == 0:
        checks = _error_checks(canary, None, policy)
        checks.append((True, "production has no traffic to compare: judged the absolute error rate only"))
    else:
        checks = [*_error_checks(canary, production, policy), *_latency_checks(canary, production, policy),
                  *_prediction_checks(canary, production, policy), *_label_checks(label_metrics or {}, policy)]
    failed = tuple(reason for ok, reason in checks if not ok)
    if failed:
        return CanaryDecision("rollback", failed)
    return CanaryDecision("promote", tuple(reason for _, reason in checks))
