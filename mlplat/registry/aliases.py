"""Aliases (``production``, ``canary``, ``previous``, ``production.<region>``) set by hand.

An alias move is one transaction with one event. Promotion, rollback and deployments, which
move states and aliases together, are in ``rollouts.py``.
"""

from __future__ import annotations

from mlplat.errors import ConflictError
from mlplat.names import validate_name
from mlplat.records import (
    ALIAS_CANARY,
    ALIAS_PRODUCTION,
    ModelState,
)
from mlplat.registry.codec import int_version, validate_alias
from mlplat.registry.events import emit
from mlplat.registry.tx import StoreCore, Tx, reads, writes
from mlplat.registry.versions import alias_version, model_row, version_row

__all__ = ["AliasesPart", "put_alias", "check_expected_alias"]


def put_alias(tx: Tx, name: str, alias: str, version: int | None) -> None:
    if version is None:
        tx.execute("DELETE FROM aliases WHERE model=? AND alias=?", (name, alias))
    else:
        tx.execute("INSERT INTO aliases(model, alias, version, updated_at) VALUES (?,?,?,?) "
                   "ON CONFLICT(model, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
                   (name, alias, version, tx.now))


def check_expected_alias(name: str, alias: str, current: int | None, expected: int | None) -> None:
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
        check_expected_alias(name, alias, current, expected_version)
        if current != version:
            put_alias(tx, name, alias, version)
            emit(tx, "alias_moved", f"model:{name}", version, {"alias": alias, "from": current, "to": version})
        return version

    @writes
    def delete_alias(self, tx: Tx, name: str, alias: str, *, expected_version: int | None = None,
                     idempotency_key: str | None = None) -> int | None:
        validate_name(name, "model name")
        validate_alias(alias)
        model_row(tx, name)
        current = alias_version(tx, name, alias)
        check_expected_alias(name, alias, current, expected_version)
        if current is not None:
            put_alias(tx, name, alias, None)
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
