"""Frozen records passed between stages, and the model-version state machine.

Records are plain pydantic models (JSON-serializable, immutable) so they cross Ray process
boundaries and land in the registry unchanged.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlplat.errors import InvalidTransition
from mlplat.records._html import record_html

__all__ = [
    "ModelState",
    "TRANSITIONS",
    "allowed_transitions",
    "check_transition",
    "ALIAS_PRODUCTION",
    "ALIAS_CANARY",
    "ALIAS_PREVIOUS",
    "Record",
    "ArtifactRef",
    "DatasetRef",
    "FeatureSetRef",
    "ModelVersion",
    "Event",
    "ModelInfo",
    "ApprovalState",
    "APPROVAL_TRANSITIONS",
    "check_approval",
    "Approval",
]


class ModelState(str, enum.Enum):
    """A model version's lifecycle state.

    ``is_terminal``: no move leaves the state. ``is_servable``: weights may take traffic.
    """

    REGISTERED = "REGISTERED"
    TRAINING = "TRAINING"
    TRAINED = "TRAINED"
    FAILED = "FAILED"
    VALIDATING = "VALIDATING"
    VALIDATED = "VALIDATED"
    REJECTED = "REJECTED"
    CANARY = "CANARY"
    PRODUCTION = "PRODUCTION"
    ARCHIVED = "ARCHIVED"

    @property
    def is_terminal(self) -> bool:
        return not TRANSITIONS[self]

    @property
    def is_servable(self) -> bool:
        return self in (ModelState.CANARY, ModelState.PRODUCTION)

    def __str__(self) -> str:  # "PRODUCTION", not "ModelState.PRODUCTION"
        return self.value


_S = ModelState
#: The only legal moves (architecture.md). ARCHIVED -> PRODUCTION is a rollback;
#: VALIDATED -> REJECTED is a human reviewer refusing a version that passed the gate.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    _S.REGISTERED: frozenset({_S.TRAINING}),
    _S.TRAINING: frozenset({_S.TRAINED, _S.FAILED}),
    _S.TRAINED: frozenset({_S.VALIDATING}),
    _S.FAILED: frozenset(),
    _S.VALIDATING: frozenset({_S.VALIDATED, _S.REJECTED}),
    _S.VALIDATED: frozenset({_S.CANARY, _S.PRODUCTION, _S.REJECTED}),  # REJECTED: a reviewer's "no"
    _S.REJECTED: frozenset(),
    _S.CANARY: frozenset({_S.PRODUCTION, _S.REJECTED}),
    _S.PRODUCTION: frozenset({_S.ARCHIVED}),
    _S.ARCHIVED: frozenset({_S.PRODUCTION}),
}


def allowed_transitions(state: ModelState | str) -> frozenset[ModelState]:
    """The states a version in ``state`` may move to."""
    return TRANSITIONS[ModelState(state)]


def check_transition(current: ModelState | str, target: ModelState | str) -> ModelState:
    """Return ``target`` as a ModelState if ``current -> target`` is legal, else raise.

    >>> check_transition("TRAINED", "VALIDATING")
    <ModelState.VALIDATING: 'VALIDATING'>
    """
    try:
        current_state, target_state = ModelState(current), ModelState(target)
    except ValueError:
        valid = ", ".join(s.value for s in ModelState)
        raise InvalidTransition(f"unknown state in {current!r} -> {target!r}; states are: {valid}") from None
    allowed = TRANSITIONS[current_state]
    if target_state not in allowed:
        allowed_text = ", ".join(sorted(s.value for s in allowed)) or "none (terminal state)"
        raise InvalidTransition(
            f"illegal transition {current_state.value} -> {target_state.value}; "
            f"allowed from {current_state.value}: {allowed_text}"
        )
    return target_state


ALIAS_PRODUCTION = "production"
ALIAS_CANARY = "canary"
ALIAS_PREVIOUS = "previous"


class Record(BaseModel):
    """Base of every record: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def _repr_html_(self) -> str:
        """A table in Jupyter: one row per field, nested fields by dotted name, values escaped."""
        return record_html(self)


class ArtifactRef(Record):
    """A stored file: URI relative to the storage root and its sha256."""

    path: str
    sha256: str
    size_bytes: int = 0


class DatasetRef(Record):
    """A dataset version in the catalog."""

    name: str
    version: int = Field(ge=1)


class FeatureSetRef(Record):
    """A materialized feature-set version."""

    name: str
    version: int = Field(ge=1)


class ApprovalState(str, enum.Enum):
    """The human gate of a version, next to its model state.

    ``NOT_REQUIRED`` unless the validation policy says ``require_approval``; then a version
    reaches VALIDATED with ``PENDING`` and a reviewer moves it to ``APPROVED`` or ``REJECTED``
    (the version itself then moves VALIDATED -> REJECTED).
    """

    NOT_REQUIRED = "NOT_REQUIRED"
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"

    def __str__(self) -> str:
        return self.value


_A = ApprovalState
#: The only legal approval moves; a decision is final.
APPROVAL_TRANSITIONS: dict[ApprovalState, frozenset[ApprovalState]] = {
    _A.NOT_REQUIRED: frozenset({_A.PENDING}),
    _A.PENDING: frozenset({_A.APPROVED, _A.REJECTED}),
    _A.APPROVED: frozenset(),
    _A.REJECTED: frozenset(),
}


def check_approval(current: ApprovalState | str, target: ApprovalState | str) -> ApprovalState:
    """Return ``target`` if the approval may move there from ``current``, else raise.

    >>> check_approval("PENDING", "APPROVED")
    <ApprovalState.APPROVED: 'APPROVED'>
    """
    try:
        current_state, target_state = ApprovalState(str(current).upper()), ApprovalState(str(target).upper())
    except ValueError:
        valid = ", ".join(a.value for a in ApprovalState)
        raise InvalidTransition(f"unknown approval state in {current!r} -> {target!r}; approval states are: {valid}") from None
    if target_state not in APPROVAL_TRANSITIONS[current_state]:
        allowed = ", ".join(sorted(a.value for a in APPROVAL_TRANSITIONS[current_state])) or "none (decided)"
        raise InvalidTransition(
            f"illegal approval move {current_state.value} -> {target_state.value}; allowed from {current_state.value}: {allowed}"
        )
    return target_state


class Approval(Record):
    """Who decided what about a version that needed a human; ``state`` alone when undecided."""

    state: ApprovalState = ApprovalState.NOT_REQUIRED
    by: str | None = None
    note: str | None = None
    at: float | None = None

    @property
    def blocks_promotion(self) -> bool:
        """A version waiting for, or refused by, a reviewer is never promoted."""
        return self.state in (ApprovalState.PENDING, ApprovalState.REJECTED)

    def describe(self, *, with_note: bool = True) -> str:
        """``PENDING``, or a decision with who (and why): ``REJECTED by alice: too slow``.

        >>> Approval(state="APPROVED", by="alice", note="ok").describe()
        'APPROVED by alice: ok'
        """
        text = self.state.value + (f" by {self.by}" if self.by else "")
        return text + (f": {self.note}" if with_note and self.note else "")


class ModelVersion(Record):
    """One version of a model as the registry holds it."""

    name: str
    version: int = Field(ge=1)
    state: ModelState
    created_at: float
    updated_at: float
    config_hash: str | None = None
    code_version: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    datasets: tuple[DatasetRef, ...] = ()
    feature_set: FeatureSetRef | None = None
    run_id: str | None = None
    error: str | None = None
    approval: Approval = Field(default_factory=Approval)
    extra: dict[str, Any] = Field(default_factory=dict)


class Event(Record):
    """One entry of the registry's append-only event log."""

    seq: int
    ts: float
    kind: str  # e.g. "version_registered", "state_changed", "alias_moved", "partition_completed"
    subject: str  # e.g. "model:churn", "dataset:clicks"
    version: int | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class ModelInfo(Record):
    """A model as the registry holds it (its versions are :class:`ModelVersion` records)."""

    name: str
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()
    task_type: str | None = None
    serving_policy: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    updated_at: float
    latest_version: int = 0  # 0 while the model has no version
