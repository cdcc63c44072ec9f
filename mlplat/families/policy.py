"""Decisions of the family path as pure functions over plain values (no Ray, storage or registry).

- :func:`member_name` / :func:`plan_members`: entity values -> member model names, and why an
  entity gets no member (null, nothing usable in its text, name too long, two values that map
  to the same name);
- :func:`fit_skip_reason`: whether a group has enough rows to fit;
- :func:`decide_validation`: one member's verdict from its measured metrics and its champion's,
  through the single-model guardrail :func:`mlplat.validation.gate.gate`;
- :func:`decide_promotion` / :func:`decide_rollback`: one member's step in a bulk promote or
  rollback, from its state, approval and aliases (re-running a finished bulk step plans nothing).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplat.errors import InvalidName
from mlplat.names import NAME_PATTERN, validate_name
from mlplat.records import ApprovalState, ModelState
from mlplat.validation.gate import Guardrail, gate

__all__ = ["MEMBER_SEPARATOR", "MAX_NAME_CHARS", "validate_family_name", "entity_slug", "entity_key", "member_name",
           "MemberPlan", "plan_members", "fit_skip_reason", "MemberEvaluation", "Verdict", "MemberVerdict",
           "decide_validation", "StepAction", "MemberStep", "decide_promotion", "decide_rollback"]

#: ``<family>--<entity>``: names allow no '.', and an entity slug never holds two '-' in a row.
MEMBER_SEPARATOR = "--"
MAX_NAME_CHARS = 63
_NOT_SLUG = re.compile(r"[^a-z0-9_]+")


def validate_family_name(name: object) -> str:
    """A family name: a model name without ``--`` (that separates the family from the entity).

    >>> validate_family_name("store-sales")
    'store-sales'
    """
    validate_name(name, "family name")
    assert isinstance(name, str)
    if MEMBER_SEPARATOR in name:
        raise InvalidName(f"invalid family name {name!r}: '{MEMBER_SEPARATOR}' separates a family from its entity "
                          "in member names; use single '-' or '_'")
    if len(name) > MAX_NAME_CHARS - len(MEMBER_SEPARATOR) - 1:
        raise InvalidName(f"invalid family name {name!r}: at most {MAX_NAME_CHARS - 3} characters, so members "
                          f"'{name}{MEMBER_SEPARATOR}<entity>' stay within {MAX_NAME_CHARS}")
    return name


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def entity_key(value: object) -> str:
    """The text an entity value is matched by (the same in training, validation and serving).

    >>> entity_key(17), entity_key("Store 17"), entity_key(3.0)
    ('17', 'Store 17', '3.0')
    """
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalars: 17, not "np.int64(17)"
    return value.decode() if isinstance(value, bytes) else str(value)


def entity_slug(value: object) -> str:
    """The entity part of a member name: lowercase; each run of characters a name cannot hold
    becomes one '-'; '' when nothing usable is left.

    >>> entity_slug("Store 17"), entity_slug("us/East--1"), entity_slug(42), entity_slug("!!")
    ('store-17', 'us-east-1', '42', '')
    """
    return _NOT_SLUG.sub("-", entity_key(value).lower()).strip("-")


def member_name(family: str, entity: object) -> str:
    """``<family>--<entity slug>``; InvalidName naming the entity when that is not a model name.

    >>> member_name("sales", "Store 17")
    'sales--store-17'
    """
    slug = entity_slug(entity)
    if not slug:
        raise InvalidName(f"entity {entity_key(entity)!r} has no letter or digit to name a member with")
    name = f"{family}{MEMBER_SEPARATOR}{slug}"
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidName(f"entity {entity_key(entity)!r} gives member name {name!r} ({len(name)} characters); "
                          f"member names are at most {MAX_NAME_CHARS} characters matching {NAME_PATTERN.pattern}")
    return name


@dataclass(frozen=True)
class MemberPlan:
    """``members``: member name -> entity key; ``skipped``: entity key -> why it gets no member."""

    members: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def plan_members(family: str, entities: Iterable[object]) -> MemberPlan:
    """Name one member per entity value; values that cannot be named, or that collide with
    another value's name, are skipped with the reason (never both of a colliding pair kept).

    >>> plan = plan_members("sales", ["A 1", "a-1", "b", None, "b"])
    >>> plan.members
    {'sales--b': 'b'}
    >>> sorted(plan.skipped)
    ['A 1', 'None', 'a-1']
    """
    by_name: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for value in entities:
        key = entity_key(value)
        if _is_null(value):
            skipped[key] = "the entity value is null"
            continue
        try:
            name = member_name(family, value)
        except InvalidName as exc:
            skipped[key] = str(exc)
            continue
        keys = by_name.setdefault(name, [])
        if key not in keys:
            keys.append(key)
    members: dict[str, str] = {}
    for name, keys in by_name.items():
        if len(keys) == 1:
            members[name] = keys[0]
            continue
        for key in keys:
            others = ", ".join(repr(k) for k in keys if k != key)
            skipped[key] = f"entity values {key!r} and {others} all map to member {name!r}; make them differ in letters or digits"
    return MemberPlan(members=dict(sorted(members.items())), skipped=skipped)


def fit_skip_reason(rows: int, min_rows: int) -> str | None:
    """Why a group is not fitted, or None to fit it.

    >>> fit_skip_reason(3, 10)
    'only 3 training rows (min_rows_per_member: 10)'
    >>> fit_skip_reason(10, 10) is None
    True
    """
    if rows < min_rows:
        return f"only {rows} training rows (min_rows_per_member: {min_rows})"
    return None


# -- validation ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemberEvaluation:
    """What one pass over a member's validation rows measured. ``load_error``: its weights did
    not load (checksum, missing from the pack); ``champion``: ``{"version", "metrics",
    "non_finite_predictions"}`` of its production version on the same rows, or None."""

    rows: int = 0
    non_finite_predictions: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    load_error: str | None = None
    champion: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()

    def report(self) -> dict[str, Any]:
        return {"rows": self.rows, "non_finite_predictions": self.non_finite_predictions, "metrics": dict(self.metrics)}


class Verdict(str, enum.Enum):
    """A member's outcome of bulk validation; UNCHANGED: the member keeps its state."""

    VALIDATED = "VALIDATED"
    REJECTED = "REJECTED"
    UNCHANGED = "UNCHANGED"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MemberVerdict:
    member: str
    version: int
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    decision: Mapping[str, Any] | None = None  # the gate's Decision.to_json() when the gate ran


def decide_validation(member: str, version: int, state: ModelState | str, evaluation: MemberEvaluation | None,
                      guardrails: Sequence[Guardrail | str]) -> MemberVerdict:
    """One member's verdict. Only TRAINED members move; a member without validation rows stays
    TRAINED (as a single model does); weights that do not load are REJECTED with the error;
    otherwise the guardrail gate decides, against the champion when there is one.

    >>> decide_validation("s--a", 2, "TRAINED", MemberEvaluation(rows=50, metrics={"rmse": 0.4}), ["rmse <= 1"]).verdict
    <Verdict.VALIDATED: 'VALIDATED'>
    >>> decide_validation("s--a", 2, "TRAINED", MemberEvaluation(load_error="sha256 mismatch"), []).reasons
    ('weights failed to load: sha256 mismatch',)
    """
    state = ModelState(state)
    if state != ModelState.TRAINED:
        return MemberVerdict(member, version, Verdict.UNCHANGED, (f"is {state.value}; only TRAINED members are validated",))
    if evaluation is None:
        return MemberVerdict(member, version, Verdict.UNCHANGED,
                             ("no rows for this entity in the validation split; stays TRAINED",))
    if evaluation.load_error:
        return MemberVerdict(member, version, Verdict.REJECTED, (f"weights failed to load: {evaluation.load_error}",),
                             evaluation.notes)
    decision = gate(evaluation.report(), evaluation.champion, guardrails)
    verdict = Verdict.VALIDATED if decision.passed else Verdict.REJECTED
    return MemberVerdict(member, version, verdict, decision.reasons, (*evaluation.notes, *decision.notes),
                         decision.to_json())


# -- promotion and rollback ------------------------------------------------------------------------

class StepAction(str, enum.Enum):
    """What a bulk promote or rollback does to one member. DONE: it is already where the step
    would put it (a re-run); SKIP: it cannot take the step (the reason says why)."""

    PROMOTE = "PROMOTE"
    ROLLBACK = "ROLLBACK"
    DONE = "DONE"
    SKIP = "SKIP"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MemberStep:
    member: str
    version: int
    action: StepAction
    reason: str = ""
    expected_production: int | None = None  # the guard the registry call carries (0: none yet)


def decide_promotion(member: str, version: int, state: ModelState | str, approval: ApprovalState | str,
                     aliases: Mapping[str, int]) -> MemberStep:
    """Promote a VALIDATED member (approved, or needing no approval) of this family version.

    >>> decide_promotion("s--a", 2, "VALIDATED", "NOT_REQUIRED", {"production": 1}).action
    <StepAction.PROMOTE: 'PROMOTE'>
    >>> decide_promotion("s--a", 2, "PRODUCTION", "NOT_REQUIRED", {"production": 2}).action
    <StepAction.DONE: 'DONE'>
    """
    state, approval = ModelState(state), ApprovalState(approval)
    production = aliases.get("production")
    if state == ModelState.PRODUCTION and production == version:
        return MemberStep(member, version, StepAction.DONE, f"v{version} is production already")
    if state != ModelState.VALIDATED:
        return MemberStep(member, version, StepAction.SKIP, f"v{version} is {state.value}; only VALIDATED members are promoted")
    if approval in (ApprovalState.PENDING, ApprovalState.REJECTED):
        return MemberStep(member, version, StepAction.SKIP,
                          f"v{version} approval is {approval.value}: `mlplat models approve {member} {version}` first")
    if "canary" in aliases:
        return MemberStep(member, version, StepAction.SKIP,
                          f"v{aliases['canary']} is in canary; finish or roll back that rollout first")
    return MemberStep(member, version, StepAction.PROMOTE, "", production or 0)


def decide_rollback(member: str, version: int, state: ModelState | str, aliases: Mapping[str, int]) -> MemberStep:
    """Roll a member back to its ``previous`` version when this family version serves it.

    >>> decide_rollback("s--a", 2, "PRODUCTION", {"production": 2, "previous": 1}).action
    <StepAction.ROLLBACK: 'ROLLBACK'>
    >>> decide_rollback("s--a", 2, "ARCHIVED", {"production": 1}).action
    <StepAction.DONE: 'DONE'>
    """
    state = ModelState(state)
    production = aliases.get("production")
    if production != version:
        now = f"v{production}" if production is not None else "unset"
        if state == ModelState.ARCHIVED and production is not None:
            return MemberStep(member, version, StepAction.DONE, f"rolled back already: production is {now}")
        return MemberStep(member, version, StepAction.SKIP, f"v{version} is {state.value} and production is {now}: "
                          "this family version does not serve it")
    if "canary" in aliases:
        return MemberStep(member, version, StepAction.SKIP,
                          f"v{aliases['canary']} is in canary; `mlplat rollback {member}` ends that canary first")
    if "previous" not in aliases:
        return MemberStep(member, version, StepAction.SKIP, "no previous version to roll back to")
    return MemberStep(member, version, StepAction.ROLLBACK, "", version)
