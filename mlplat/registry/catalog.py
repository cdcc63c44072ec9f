"""The catalog of datasets and feature sets in the registry database.

One ``catalog`` table of versioned entries per ``kind``, each with a JSON payload (the data
layer's record: status, schema, paths...) and tags. Registering and updating emit
``<kind>_registered`` / ``<kind>_updated`` events in the same transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mlplat.errors import ConflictError, NotFound, ValidationError
from mlplat.names import validate_name
from mlplat.records import CATALOG_DATASET, CATALOG_FEATURE_SET, CatalogEntry
from mlplat.registry.backends import Row
from mlplat.registry.codec import dumps_json, int_version, loads_json, parse_tags
from mlplat.registry.events import emit
from mlplat.registry.tx import StoreCore, Tx, payload_dict, reads, writes
from mlplat.registry.versions import name_and_tag_filters

__all__ = ["CATALOG_KINDS", "CatalogPart"]

CATALOG_KINDS = (CATALOG_DATASET, CATALOG_FEATURE_SET)


def _catalog_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in CATALOG_KINDS:
        raise ValidationError(f"unknown catalog kind {kind!r}; expected one of: {', '.join(CATALOG_KINDS)}")
    return kind


def _entry(row: Row) -> CatalogEntry:
    return CatalogEntry(kind=row["kind"], name=row["name"], version=row["version"], payload=loads_json(row["payload"], {}),
                        tags=tuple(loads_json(row["tags"], [])), created_at=row["created_at"], updated_at=row["updated_at"])


def _catalog_row(tx: Tx, kind: str, name: str, version: int | None, status: str | None = None) -> Row:
    if version is None and status is not None:
        row = tx.one(f"SELECT * FROM catalog WHERE kind=? AND name=? AND {tx.dialect.json_text('payload', 'status')} = ? "
                     "ORDER BY version DESC LIMIT 1", (kind, name, status))
    elif version is None:
        row = tx.one("SELECT * FROM catalog WHERE kind=? AND name=? ORDER BY version DESC LIMIT 1", (kind, name))
    else:
        row = tx.one("SELECT * FROM catalog WHERE kind=? AND name=? AND version=?", (kind, name, int_version(version)))
    if row is None:
        which = f"version {version}" if version is not None else (f"{status!r} version" if status is not None else "any version")
        raise NotFound(f"{kind.replace('_', ' ')} {name!r} has no {which} in the catalog")
    return row


class CatalogPart(StoreCore):
    @writes
    def catalog_register(self, tx: Tx, kind: str, name: str, payload: Mapping[str, Any], *, tags: Iterable[str] = (),
                         idempotency_key: str | None = None) -> CatalogEntry:
        """Add the next version of a dataset or feature set; returns its catalog entry."""
        _catalog_kind(kind)
        validate_name(name, f"{kind.replace('_', '-')} name")
        body = payload_dict(payload, "catalog payload")
        tag_list = list(parse_tags(tags))
        version = int(tx.scalar("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM catalog WHERE kind=? AND name=?", (kind, name)))
        tx.execute("INSERT INTO catalog(kind, name, version, payload, tags, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                   (kind, name, version, dumps_json(body, "catalog payload"), dumps_json(tag_list), tx.now, tx.now))
        emit(tx, f"{kind}_registered", f"{kind}:{name}", version, {"tags": tag_list})
        return _entry(_catalog_row(tx, kind, name, version))

    @writes
    def catalog_update(self, tx: Tx, kind: str, name: str, version: int, patch: Mapping[str, Any], *,
                       expected_updated_at: float | None = None, idempotency_key: str | None = None) -> CatalogEntry:
        """Shallow-merge ``patch`` into the payload of one catalog version.

        ``expected_updated_at``: compare-and-set for a read-modify-write of the payload (a list
        of partitions, say): the entry's ``updated_at`` must still be this value -- the one the
        caller read the payload with -- else :class:`ConflictError` and nothing is written
        (re-read, re-apply the change, retry). Every update moves ``updated_at`` strictly
        forward, so two writes never leave the same value behind."""
        _catalog_kind(kind)
        validate_name(name, f"{kind.replace('_', '-')} name")
        changes = payload_dict(patch, "catalog patch")
        if expected_updated_at is not None and (isinstance(expected_updated_at, bool)
                                                or not isinstance(expected_updated_at, int | float)):
            raise ValidationError(f"expected_updated_at must be a number (an entry's updated_at), "
                                  f"got {type(expected_updated_at).__name__}")
        row = _catalog_row(tx, kind, name, version)
        current = float(row["updated_at"])
        if expected_updated_at is not None and current != float(expected_updated_at):
            raise ConflictError(f"{kind.replace('_', ' ')} {name!r} v{row['version']} was updated at {current!r}, not at the "
                                f"expected {float(expected_updated_at)!r}: somebody changed it first; re-read and retry "
                                "(nothing was written)")
        merged = {**loads_json(row["payload"], {}), **changes}
        updated_at = tx.now if tx.now > current else math.nextafter(current, math.inf)  # strictly forward
        tx.execute("UPDATE catalog SET payload=?, updated_at=? WHERE kind=? AND name=? AND version=?",
                   (dumps_json(merged, "catalog payload"), updated_at, kind, name, row["version"]))
        emit(tx, f"{kind}_updated", f"{kind}:{name}", row["version"], {"changed": sorted(changes)})
        return _entry(_catalog_row(tx, kind, name, row["version"]))

    @reads
    def catalog_get(self, tx: Tx, kind: str, name: str, version: int | None = None, *,
                    status: str | None = None) -> CatalogEntry:
        _catalog_kind(kind)
        validate_name(name, f"{kind.replace('_', '-')} name")
        return _entry(_catalog_row(tx, kind, name, version, status))

    @reads
    def catalog_list(self, tx: Tx, kind: str, *, prefix: str | None = None, tag: str | None = None,
                     latest_only: bool = True) -> list[CatalogEntry]:
        _catalog_kind(kind)
        where, params = name_and_tag_filters(tx, "c", prefix, tag)
        where.insert(0, "c.kind = ?")
        params.insert(0, kind)
        if latest_only:
            where.append("c.version = (SELECT MAX(version) FROM catalog x WHERE x.kind = c.kind AND x.name = c.name)")
        return [_entry(r) for r in tx.all(f"SELECT * FROM catalog c WHERE {' AND '.join(where)} ORDER BY c.name, c.version", params)]
