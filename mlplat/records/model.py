"""Frozen records passed between stages, and the model-version state machine.

Records are plain pydantic models (JSON-serializable, immutable) so they cross Ray process
boundaries and land in the registry unchanged.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlplat.errors import InvalidTransition

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
]


class ModelState(str, enum.Enum):
    """A model version's lifecycle state; each member carries its flags.

    ``is_terminal``: no move leaves the state. ``is_servable``: weights may take traffic.
    """

    REGISTERED = ("REGISTERED", False, False)
    TRAINING = ("TRAINING", False, False)
    TRAINED = ("TRAINED", False, False)
    FAILED = ("FAILED", True, False)
    VALIDATING = ("VALIDATING", False, False)
    VALIDATED = ("VALIDATED", False, False)
    REJECTED = ("REJECTED", True, False)
    CANARY = ("CANARY", False, True)
    PRODUCTION = ("PRODUCTION", False, True)
    ARCHIVED = ("ARCHIVED", False, False)

    def __new__(cls, value: str, is_terminal: bool, is_servable: bool) -> ModelState:
        member = str.__new__(cls, value)
        member._value_ = value
        member.is_terminal = is_terminal
        member.is_servable = is_servable
        return member

    def __str__(self) -> str:  # "PRODUCTION", not "ModelState.PRODUCTION"
        return self.value


_S = ModelState
#: The only legal moves (architecture.md). ARCHIVED -> PRODUCTION is a rollback.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    _S.REGISTERED: frozenset({_S.TRAINING}),
    _S.TRAINING: frozenset({_S.TRAINED, _S.FAILED}),
    _S.TRAINED: frozenset({_S.VALIDATING}),
    _S.FAILED: frozenset(),
    _S.VALIDATING: frozenset({_S.VALIDATED, _S.REJECTED}),
    _S.VALIDATED: frozenset({_S.CANARY, _S.PRODUCTION}),
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
