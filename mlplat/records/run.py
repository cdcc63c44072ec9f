"""Records of the training run queue and of the catalog, as the registry returns them."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field

from mlplat.errors import InvalidTransition
from mlplat.records.model import Record

__all__ = ["RunState", "RUN_TRANSITIONS", "check_run_transition", "Run", "CatalogEntry"]


class RunState(str, enum.Enum):
    """A training request's state; ``is_terminal``: the run is over and never moves again."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return not RUN_TRANSITIONS[self]

    def __str__(self) -> str:
        return self.value


_R = RunState
#: The only legal run moves. RUNNING -> QUEUED: the runner was lost and the run is retried
#: (it resumes from its last checkpoint under the same run id).
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _R.QUEUED: frozenset({_R.RUNNING, _R.CANCELLED, _R.FAILED}),
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.FAILED, _R.CANCELLED, _R.QUEUED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
    _R.CANCELLED: frozenset(),
}


def check_run_transition(run_id: str, current: RunState | str, target: RunState | str) -> RunState:
    """Return ``target`` if a run may move there from ``current`` (staying put is allowed while
    the run is not finished; a finished run never changes).

    >>> check_run_transition("r1", "QUEUED", "RUNNING")
    <RunState.RUNNING: 'RUNNING'>
    """
    current_state, target_state = RunState(current), RunState(target)
    stays = target_state == current_state and not current_state.is_terminal
    if not stays and target_state not in RUN_TRANSITIONS[current_state]:
        allowed = ", ".join(sorted(s.value for s in RUN_TRANSITIONS[current_state])) or "none (finished)"
        raise InvalidTransition(
            f"run {run_id}: illegal move {current_state.value} -> {target_state.value}; allowed from {current_state.value}: {allowed}"
        )
    return target_state


class Run(Record):
    """One training (``kind="train"``) or sweep (``kind="tune"``) request in the run queue.

    ``metrics``: the trained version's final metrics once SUCCEEDED; ``progress``: the live
    summary (epoch, last metrics) while RUNNING; ``result``: the runner's full outcome.
    """

    run_id: str
    kind: str
    model: str
    version: int | None = None
    state: RunState
    request: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    attempts: int = 0
    claimed_by: str | None = None
    claimed_at: float | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False
    progress: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    queue_position: int | None = None  # 1 = next to run; None unless QUEUED

    @property
    def is_finished(self) -> bool:
        return self.state.is_terminal


class CatalogEntry(Record):
    """One version of a dataset or feature set in the registry's catalog; ``payload`` is the data
    layer's record (status, schema, paths...), opaque to the registry."""

    kind: str
    name: str
    version: int = Field(ge=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()
    created_at: float
    updated_at: float
