"""The guardrail gate: a pure function from reports to a decision.

Guardrails are one line each, as people write them in a model's config::

    rmse <= 3.0                 # absolute threshold
    auc >= 0.8
    auc >= champion - 0.005     # no regression against the production version, same split
    rmse <= champion * 1.05     # at most 5% worse than production

``gate(report, champion_report, guardrails)`` never touches Ray, storage or the registry.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from mlplat.config import StrictModel
from mlplat.errors import ConfigError
from mlplat.validation.metrics import METRICS_BY_TASK

#: Where batch inference runs (mlplat.validation.inference.choose_executor decides "auto").
Executor = Literal["auto", "actors", "tasks"]

__all__ = ["Guardrail", "Check", "Decision", "ValidationPolicy", "ValidationJobConfig", "parse_guardrail", "gate"]

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GUARDRAIL = re.compile(
    rf"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*"
    rf"(?:(?P<champion>champion)\s*(?:(?P<sign>[-+*])\s*(?P<delta>{_NUMBER}))?|(?P<value>{_NUMBER}))\s*$"
)


@dataclass(frozen=True)
class Guardrail:
    """One parsed guardrail. ``relative``: compares against the champion's value of the metric,
    shifted by ``+ delta`` / ``- delta`` or scaled by ``* delta``."""

    metric: str
    op: str
    value: float | None = None
    relative: bool = False
    sign: str = "+"
    delta: float = 0.0
    text: str = ""

    def threshold(self, champion_value: float | None) -> float | None:
        if not self.relative:
            return self.value
        if champion_value is None:
            return None
        if self.sign == "*":
            return champion_value * self.delta
        return champion_value + self.delta if self.sign == "+" else champion_value - self.delta


def parse_guardrail(text: str) -> Guardrail:
    """Parse ``"auc >= champion - 0.005"``; ConfigError naming the line if it does not parse.

    >>> parse_guardrail("rmse <= 3.0")
    Guardrail(metric='rmse', op='<=', value=3.0, relative=False, sign='+', delta=0.0, text='rmse <= 3.0')
    """
    if not isinstance(text, str):
        raise ConfigError(f"guardrail {text!r}: expected a string such as 'auc >= 0.8'")
    m = _GUARDRAIL.match(text)
    if not m:
        raise ConfigError(
            f"guardrail {text!r} does not parse; expected '<metric> <op> <number>' or "
            "'<metric> <op> champion [+|-|* <number>]' with op one of <=, >=, <, > (e.g. 'auc >= champion - 0.005')"
        )
    clean = " ".join(text.split())
    if m["champion"]:
        return Guardrail(metric=m["metric"], op=m["op"], relative=True, sign=m["sign"] or "+",
                         delta=float(m["delta"]) if m["delta"] else (1.0 if m["sign"] == "*" else 0.0), text=clean)
    return Guardrail(metric=m["metric"], op=m["op"], value=float(m["value"]), text=clean)


class ValidationPolicy(StrictModel):
    """A model's validation settings; lives under ``validation:`` in the model's config
    (``serving_policy.validation`` in the registry) or in a ``configs/validate-*.yaml`` job."""

    guardrails: list[str] = Field(default_factory=list)
    require_approval: bool = False
    compare_to_production: bool = True
    slices: list[str] = Field(default_factory=list)
    batch_size: int = Field(4096, ge=1, le=1_000_000)
    max_actors: int | None = Field(None, ge=1)
    #: batch inference: "auto" (actor pool on GPU clusters, cached-bundle tasks on CPU), "actors", "tasks"
    executor: Executor = "auto"

    @field_validator("guardrails")
    @classmethod
    def _parse_each(cls, value: list[str]) -> list[str]:
        for line in value:
            try:
                parse_guardrail(line)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    def parsed(self) -> list[Guardrail]:
        return [parse_guardrail(g) for g in self.guardrails]

    def check_task(self, task: str) -> None:
        """ConfigError if a guardrail names a metric the task does not compute."""
        known = METRICS_BY_TASK.get(task, ())
        for g in self.parsed():
            if g.metric not in known:
                raise ConfigError(f"guardrail {g.text!r}: metric {g.metric!r} is not computed for task {task!r}; "
                                  f"available: {', '.join(known)}")


class ValidationJobConfig(StrictModel):
    """``configs/validate-*.yaml`` for ``jobs/validate.py``: which version, on which data, and
    optionally a policy that replaces the model's own."""

    model: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    version: int = Field(ge=1)
    feature_set: str | None = None
    policy: ValidationPolicy | None = None


@dataclass(frozen=True)
class Check:
    """The outcome of one guardrail."""

    guardrail: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"guardrail": self.guardrail, "metric": self.metric, "value": self.value,
                "threshold": self.threshold, "passed": self.passed, "note": self.note}


@dataclass(frozen=True)
class Decision:
    """``passed`` and, when not, one human-readable reason per failed check."""

    passed: bool
    reasons: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "notes": list(self.notes),
                "checks": [c.to_json() for c in self.checks]}


def _metric(report: Mapping[str, Any] | None, name: str) -> float | None:
    if not report:
        return None
    value = (report.get("metrics") or {}).get(name)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def gate(report: Mapping[str, Any], champion_report: Mapping[str, Any] | None,
         guardrails: Sequence[Guardrail | str]) -> Decision:
    """Decide whether a candidate may serve.

    ``report``: ``{"metrics": {...}, "rows": n, "non_finite_predictions": k}``;
    ``champion_report``: the production version's metrics on the same split, or None when
    there is no production version (relative guardrails then pass with a note).
    Any non-finite prediction, an empty split, or a metric that could not be computed fails.
    """
    rails = [g if isinstance(g, Guardrail) else parse_guardrail(g) for g in guardrails]
    reasons: list[str] = []
    notes: list[str] = []
    checks: list[Check] = []
    rows = int(report.get("rows") or 0)
    bad = int(report.get("non_finite_predictions") or 0)
    if rows <= 0:
        reasons.append("the validation split has no rows")
    if bad:
        reasons.append(f"the model produced NaN/Inf predictions for {bad} of {rows} rows")
    for g in rails:
        value = _metric(report, g.metric)
        if g.relative and champion_report is None:
            note = "no production version to compare with; skipped"
            checks.append(Check(g.text, g.metric, value, None, True, note))
            notes.append(f"{g.text}: {note}")
            continue
        champ_value = _metric(champion_report, g.metric) if g.relative else None
        if g.relative and champ_value is None:
            note = f"the production version has no value for {g.metric}; skipped"
            checks.append(Check(g.text, g.metric, value, None, True, note))
            notes.append(f"{g.text}: {note}")
            continue
        threshold = g.threshold(champ_value)
        if value is None:
            reason = f"{g.text}: {g.metric} could not be computed (undefined on this split)"
            checks.append(Check(g.text, g.metric, None, threshold, False, "undefined"))
            reasons.append(reason)
            continue
        if threshold is None:
            raise ConfigError(f"guardrail {g.text!r} has no threshold to compare {g.metric} with")
        ok = _OPS[g.op](value, threshold)
        note = f"champion {g.metric} = {_fmt(champ_value)}" if g.relative else ""
        checks.append(Check(g.text, g.metric, value, threshold, ok, note))
        if not ok:
            against = f" (champion {_fmt(champ_value)})" if g.relative else ""
            reasons.append(f"{g.text}: {g.metric} = {_fmt(value)}, needs {g.op} {_fmt(threshold)}{against}")
    return Decision(passed=not reasons, reasons=tuple(reasons), checks=tuple(checks), notes=tuple(notes))
