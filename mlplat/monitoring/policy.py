"""A model's monitoring policy: ``serving_policy["monitoring"]`` in the registry, and window
lengths such as ``"15m"``, ``"1h"``, ``"7d"``. Pure; the drift verdict reads only this.

New sections (alarms, retraining) are new fields here; :meth:`MonitoringPolicy.from_serving_policy`
names any bad key as ``serving_policy.monitoring.<field>[.<sub-field>]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlplat.errors import ConfigError, ValidationError
from mlplat.models.metrics import HIGHER_IS_BETTER

__all__ = ["MonitoringPolicy", "parse_window", "format_window", "MAX_WINDOW_S"]

_WINDOW = re.compile(r"^\s*([1-9][0-9]{0,6})\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest window (a year): telemetry is partitioned by day and every day is listed.
MAX_WINDOW_S = 366 * 86400


def parse_window(text: str) -> int:
    """A window length in seconds: a positive integer and a unit ``s``, ``m``, ``h`` or ``d``.

    >>> parse_window("15m"), parse_window("1h"), parse_window("7d")
    (900, 3600, 604800)
    >>> parse_window("1 week")
    Traceback (most recent call last):
    ...
    mlplat.errors.ValidationError: window '1 week': expected a positive integer and a unit s, m, h or d (15m, 1h, 24h, 7d)
    """
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if not match:
        raise ValidationError(f"window {text!r}: expected a positive integer and a unit s, m, h or d (15m, 1h, 24h, 7d)")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds > MAX_WINDOW_S:
        raise ValidationError(f"window {text!r} is longer than the maximum of 366d")
    return seconds


def format_window(seconds: int) -> str:
    """The shortest text :func:`parse_window` reads back as ``seconds``.

    >>> format_window(3600), format_window(5400), format_window(86400 * 7)
    ('1h', '90m', '7d')
    """
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"


_EXPECTED = "expected a mapping of monitoring settings (docs/monitoring.md)"


class MonitoringPolicy(BaseModel):
    """How a model's live traffic is judged against its reference (docs/monitoring.md).

    ``features``: the raw features to watch (None: every input column of the feature set's
    reference statistics). ``prediction_reference``: how much of a version's first telemetry is
    the reference of its predictions. ``performance_*`` / ``max_performance_drop`` /
    ``min_outcomes``: performance drift on the window's outcomes (``performance_metric`` None:
    the task's primary metric, auc for binary, rmse for regression)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: str = "1h"
    min_rows: int = Field(1000, ge=1)
    features: tuple[str, ...] | None = None
    psi_max: float = Field(0.2, gt=0)
    ks_pvalue_min: float = Field(0.01, ge=0, le=1)
    ks_statistic_min: float = Field(0.1, ge=0, le=1)
    chi2_pvalue_min: float = Field(0.01, ge=0, le=1)
    chi2_effect_min: float = Field(0.1, ge=0)
    null_rate_increase_max: float = Field(0.1, ge=0, le=1)
    min_drifted_features: int = Field(1, ge=1)
    prediction_drift: bool = True
    prediction_reference: str = "24h"
    performance_drift: bool = True
    performance_metric: str | None = None
    max_performance_drop: float = Field(0.05, ge=0)
    min_outcomes: int = Field(100, ge=1)

    @field_validator("performance_metric")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        if value is not None and value not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {value!r}; expected one of {', '.join(sorted(HIGHER_IS_BETTER))}")
        return value

    @field_validator("window", "prediction_reference")
    @classmethod
    def _window(cls, value: str) -> str:
        try:
            parse_window(value)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @property
    def window_s(self) -> int:
        return parse_window(self.window)

    @property
    def prediction_reference_s(self) -> int:
        return parse_window(self.prediction_reference)

    @classmethod
    def from_serving_policy(cls, serving_policy: Mapping[str, Any] | None) -> MonitoringPolicy:
        """The policy in ``serving_policy["monitoring"]``: missing -> defaults, a mapping -> those
        fields; anything else -> :class:`ConfigError` in one line naming the field.

        >>> MonitoringPolicy.from_serving_policy({}).psi_max
        0.2
        >>> MonitoringPolicy.from_serving_policy({"monitoring": {"psi_max": 0.1, "window": "24h"}}).window_s
        86400
        >>> MonitoringPolicy.from_serving_policy({"monitoring": {"psi_max": -1}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mlplat.errors.ConfigError: serving_policy.monitoring.psi_max: Input should be greater than 0 (got -1); ...
        """
        raw = (serving_policy or {}).get("monitoring")
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"serving_policy.monitoring: got {type(raw).__name__} {raw!r}; {_EXPECTED}")
        try:
            return cls.model_validate(dict(raw))
        except pydantic.ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in ("serving_policy", "monitoring", *err["loc"]))
                if err["type"] == "extra_forbidden":
                    problems.append(f"{where}: unknown key (remove it or check its spelling)")
                else:
                    msg = err["msg"].removeprefix("Value error, ")
                    problems.append(f"{where}: {msg} (got {err.get('input')!r})")
            raise ConfigError(f"{'; '.join(problems)}; {_EXPECTED}") from None
