"""Aliases (``production``, ``canary``, ``previous``, ``production.<region>``), promotion and rollback.

An alias move is one transaction with one event; promote and rollback move states and aliases
together, so a follower of the event log never sees one without the other.
"""

from __future__ import annotations

from typing import Any

from mlplat.errors import ConflictError, InvalidTransition, NotFound
from mlplat.names import validate_name
from mlplat.records import (
    ALIAS_CANARY,
    ALIAS_PREVIOUS,
    ALIAS_PRODUCTION,
    Approval,
    ApprovalState,
    ModelState,
    ModelVersion,
    check_transition,
)
from mlplat.registry.codec import int_version, validate_alias
from mlplat.registry.events import emit
from mlplat.registry.tx import StoreCore, Tx, reads, writes
from mlplat.registry.versions import alias_version, model_row, set_state, version_record, version_row

__all__ = ["AliasesPart"]


def _put_alias(tx: Tx, name: str, alias: str, version: int | None) -> None:
    if version is None:
        tx.execute("DELETE FROM aliases WHERE model=? AND alias=?", (name, alias))
    else:
        tx.execute("INSERT INTO aliases(model, alias, version, updated_at) VALUES (?,?,?,?) "
                   "ON CONFLICT(model, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
                   (name, alias, version, tx.now))


def _check_expected_alias(name: str, alias: str, current: int | None, expected: int | None) -> None:
    if expected is not None and (current or 0) != int(expected):
        now = f"v{current}" if current else "unset"
        want = f"v{expected}" if expected else "unset"
        raise ConflictError(f"alias {name}:{alias} is {now}, not the expected {want}: somebody moved it first; re-read and retry")


class AliasesPart(StoreCore):
    @writes
    def set_alias(self, tx: Tx, name: str, alias: str, version: int, *, expected_version: int | None = None,
                  idempotency_key: str | None = None) -> int:
        """``production*`` and ``canary*`` aliases only point at servable versions (CANARY, PRODUCTION)."""
        validate_name(name, "model name")
        validate_alias(alias)
        version = int_version(version)
        state = ModelState(version_row(tx, name, version)["state"])
        if alias.split(".")[0] in (ALIAS_PRODUCTION, ALIAS_CANARY) and not state.is_servable:
            raise ConflictError(
                f"alias {alias!r} of {name!r} may only point at a CANARY or PRODUCTION version; v{version} is {state.value} "
                f"(use `mlplat models promote {name} {version}` to promote it)")
        current = alias_version(tx, name, alias)
        _check_expected_alias(name, alias, current, expected_version)
        if current != version:
            _put_alias(tx, name, alias, version)
            emit(tx, "alias_moved", f"model:{name}", version, {"alias": alias, "from": current, "to": version})
        return version

    @writes
    def delete_alias(self, tx: Tx, name: str, alias: str, *, expected_version: int | None = None,
                     idempotency_key: str | None = None) -> int | None:
        validate_name(name, "model name")
        validate_alias(alias)
        model_row(tx, name)
        current = alias_version(tx, name, alias)
        _check_expected_alias(name, alias, current, expected_version)
        if current is not None:
            _put_alias(tx, name, alias, None)
            emit(tx, "alias_removed", f"model:{name}", current, {"alias": alias, "from": current, "to": None})
        return current

    @reads
    def get_alias(self, tx: Tx, name: str, alias: str) -> int | None:
        validate_name(name, "model name")
        validate_alias(alias)
        model_row(tx, name)
        return alias_version(tx, name, alias)

    @reads
    def aliases(self, tx: Tx, name: str) -> dict[str, int]:
        validate_name(name, "model name")
        model_row(tx, name)
        return {r["alias"]: int(r["version"]) for r in tx.all("SELECT alias, version FROM aliases WHERE model=? ORDER BY alias", (name,))}

    @writes
    def promote(self, tx: Tx, name: str, version: int, *, expected_production: int | None = None,
                idempotency_key: str | None = None) -> ModelVersion:
        """The old production version becomes ARCHIVED and ``previous``; a ``canary`` alias on
        ``version`` is removed. Versions awaiting or refused approval are not promoted."""
        validate_name(name, "model name")
        version = int_version(version)
        mv = version_record(version_row(tx, name, version))
        old = alias_version(tx, name, ALIAS_PRODUCTION)
        _check_expected_alias(name, ALIAS_PRODUCTION, old, expected_production)
        check_transition(mv.state, ModelState.PRODUCTION)
        _check_approval(mv.name, mv.version, mv.approval)
        transitions: list[dict[str, Any]] = []
        alias_moves: dict[str, list[int | None]] = {}
        if old is not None and old != version:
            old_state = ModelState(version_row(tx, name, old)["state"])
            if old_state == ModelState.PRODUCTION:
                set_state(tx, name, old, old_state, ModelState.ARCHIVED)
                transitions.append({"version": old, "from": old_state.value, "to": ModelState.ARCHIVED.value})
            prev = alias_version(tx, name, ALIAS_PREVIOUS)
            _put_alias(tx, name, ALIAS_PREVIOUS, old)
            alias_moves[ALIAS_PREVIOUS] = [prev, old]
        set_state(tx, name, version, mv.state, ModelState.PRODUCTION)
        transitions.append({"version": version, "from": mv.state.value, "to": ModelState.PRODUCTION.value})
        _put_alias(tx, name, ALIAS_PRODUCTION, version)
        alias_moves[ALIAS_PRODUCTION] = [old, version]
        if alias_version(tx, name, ALIAS_CANARY) == version:
            _put_alias(tx, name, ALIAS_CANARY, None)
            alias_moves[ALIAS_CANARY] = [version, None]
        emit(tx, "promoted", f"model:{name}", version, {"previous": old, "transitions": transitions, "aliases": alias_moves})
        return version_record(version_row(tx, name, version))

    @writes
    def rollback(self, tx: Tx, name: str, *, expected_production: int | None = None,
                 idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        model_row(tx, name)
        current = alias_version(tx, name, ALIAS_PRODUCTION)
        _check_expected_alias(name, ALIAS_PRODUCTION, current, expected_production)
        prev = alias_version(tx, name, ALIAS_PREVIOUS)
        if current is None or prev is None:
            missing = ALIAS_PRODUCTION if current is None else ALIAS_PREVIOUS
            raise NotFound(f"cannot roll back {name!r}: it has no {missing!r} alias")
        cur_state = ModelState(version_row(tx, name, current)["state"])
        prev_state = ModelState(version_row(tx, name, prev)["state"])
        check_transition(prev_state, ModelState.PRODUCTION)  # previous must be ARCHIVED
        transitions = []
        if cur_state != ModelState.ARCHIVED:
            set_state(tx, name, current, cur_state, ModelState.ARCHIVED)
            transitions.append({"version": current, "from": cur_state.value, "to": ModelState.ARCHIVED.value})
        set_state(tx, name, prev, prev_state, ModelState.PRODUCTION)
        transitions.append({"version": prev, "from": prev_state.value, "to": ModelState.PRODUCTION.value})
        _put_alias(tx, name, ALIAS_PRODUCTION, prev)
        _put_alias(tx, name, ALIAS_PREVIOUS, current)
        emit(tx, "rolled_back", f"model:{name}", prev, {
            "from_version": current, "to_version": prev, "transitions": transitions,
            "aliases": {ALIAS_PRODUCTION: [current, prev], ALIAS_PREVIOUS: [prev, current]},
        })
        return version_record(version_row(tx, name, prev))


def _check_approval(name: str, version: int, approval: Approval) -> None:
    if approval.blocks_promotion:
        hint = (f"a reviewer must approve it first: `mlplat models approve {name} {version}`"
                if approval.state == ApprovalState.PENDING else f"{approval.by or 'a reviewer'} rejected it")
        raise InvalidTransition(f"{name} v{version} cannot be promoted: approval is {approval.state.value}; {hint}")
