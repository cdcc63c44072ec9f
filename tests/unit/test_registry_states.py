"""The state machines of versions, approvals and runs, exhaustively: every (from, to) pair, pure, no Ray."""

from __future__ import annotations

import itertools

import pytest

from mlplat.errors import InvalidTransition
from mlplat.records import (
    RUN_TRANSITIONS,
    TRANSITIONS,
    Approval,
    ApprovalState,
    ModelState,
    RunState,
    allowed_transitions,
    check_approval,
    check_run_transition,
    check_transition,
)

S = ModelState
LEGAL = {
    (S.REGISTERED, S.TRAINING),
    (S.TRAINING, S.TRAINED), (S.TRAINING, S.FAILED),
    (S.TRAINED, S.VALIDATING),
    (S.VALIDATING, S.VALIDATED), (S.VALIDATING, S.REJECTED),
    (S.VALIDATED, S.CANARY), (S.VALIDATED, S.PRODUCTION), (S.VALIDATED, S.REJECTED),  # a reviewer's no
    (S.CANARY, S.PRODUCTION), (S.CANARY, S.REJECTED),
    (S.PRODUCTION, S.ARCHIVED),
    (S.ARCHIVED, S.PRODUCTION),
}
PAIRS = list(itertools.product(ModelState, ModelState))


def test_table_matches_architecture():
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert set(TRANSITIONS) == set(ModelState)


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_every_pair(current, target):
    if (current, target) in LEGAL:
        assert check_transition(current, target) is target
        assert check_transition(current.value, target.value) is target
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition(current, target)
        message = str(info.value)
        assert f"{current.value} -> {target.value}" in message
        for allowed in allowed_transitions(current):
            assert allowed.value in message
        if not allowed_transitions(current):
            assert "terminal" in message


def test_terminal_and_servable_flags():
    assert {s for s in ModelState if s.is_terminal} == {S.FAILED, S.REJECTED}
    assert {s for s in ModelState if s.is_servable} == {S.CANARY, S.PRODUCTION}
    for state in ModelState:
        assert state.is_terminal == (not TRANSITIONS[state])


def test_unknown_state_is_invalid_transition():
    with pytest.raises(InvalidTransition, match="unknown state"):
        check_transition("TRAINED", "DEPLOYED")


@pytest.mark.parametrize(("current", "target"), [p for p in PAIRS if p not in LEGAL])
def test_store_rejects_illegal_moves_with_from_and_to(tmp_path, current, target):
    """The store uses the same table: drive a version into ``current`` then try ``target``."""
    from mlplat.registry import RegistryStore

    path_to = {
        S.REGISTERED: [], S.TRAINING: [S.TRAINING], S.TRAINED: [S.TRAINING, S.TRAINED],
        S.FAILED: [S.TRAINING, S.FAILED], S.VALIDATING: [S.TRAINING, S.TRAINED, S.VALIDATING],
        S.VALIDATED: [S.TRAINING, S.TRAINED, S.VALIDATING, S.VALIDATED],
        S.REJECTED: [S.TRAINING, S.TRAINED, S.VALIDATING, S.REJECTED],
        S.CANARY: [S.TRAINING, S.TRAINED, S.VALIDATING, S.VALIDATED, S.CANARY],
        S.PRODUCTION: [S.TRAINING, S.TRAINED, S.VALIDATING, S.VALIDATED, S.PRODUCTION],
        S.ARCHIVED: [S.TRAINING, S.TRAINED, S.VALIDATING, S.VALIDATED, S.PRODUCTION, S.ARCHIVED],
    }
    store = RegistryStore(tmp_path / "r.db", synchronous="NORMAL")
    v = store.register_version("m").version
    for step in path_to[current]:
        store.transition("m", v, step)
    seq = store.last_seq()
    with pytest.raises(InvalidTransition, match=f"{current.value} -> {target.value}"):
        store.transition("m", v, target)
    assert store.get_version("m", v).state is current
    assert store.last_seq() == seq  # nothing written


APPROVAL_LEGAL = {("NOT_REQUIRED", "PENDING"), ("PENDING", "APPROVED"), ("PENDING", "REJECTED")}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(ApprovalState, ApprovalState)))
def test_every_approval_pair(current, target):
    if (current.value, target.value) in APPROVAL_LEGAL:
        assert check_approval(current, target) is target
    else:
        with pytest.raises(InvalidTransition, match=f"{current.value} -> {target.value}"):
            check_approval(current, target)
    assert Approval(state=current).blocks_promotion == (current in (ApprovalState.PENDING, ApprovalState.REJECTED))


RUN_LEGAL = {("QUEUED", "RUNNING"), ("QUEUED", "CANCELLED"), ("QUEUED", "FAILED"), ("RUNNING", "SUCCEEDED"),
             ("RUNNING", "FAILED"), ("RUNNING", "CANCELLED"), ("RUNNING", "QUEUED")}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(RunState, RunState)))
def test_every_run_pair(current, target):
    if (current == target and not current.is_terminal) or (current.value, target.value) in RUN_LEGAL:
        assert check_run_transition("r1", current, target) is target
    else:
        with pytest.raises(InvalidTransition, match=f"run r1: illegal move {current.value} -> {target.value}"):
            check_run_transition("r1", current, target)
    assert current.is_terminal == (not RUN_TRANSITIONS[current])
