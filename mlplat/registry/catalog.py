"""The catalog of datasets and feature sets, kept in the registry database.

Added to :class:`~mlplat.registry.store.RegistryStore` as a mixin (like the run queue in
``runs.py``): one ``catalog`` table of versioned entries per ``kind``, each with a JSON payload
(the data layer's record: status, schema, paths...) and tags. Registering and updating emit
``<kind>_registered`` / ``<kind>_updated`` events in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlplat.errors import NotFound, ValidationError
from mlplat.names import validate_name
from mlplat.registry.sqlutil import dumps_json, int_version, name_and_tag_filters, parse_tags, store_method

__all__ = ["CATALOG_KINDS", "CATALOG_SCHEMA", "CatalogStoreMixin"]

CATALOG_KINDS = ("dataset", "feature_set")

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, payload TEXT NOT NULL,
    tags TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (kind, name, version));
"""


def _catalog_kind(kind: object) -> str:
    if kind not in CATALOG_KINDS:
        raise ValidationError(f"unknown catalog kind {kind!r}; expected one of: {', '.join(CATALOG_KINDS)}")
    return kind  # type: ignore[return-value]


class CatalogStoreMixin:
    """Catalog methods of :class:`RegistryStore` (uses its ``_conn`` and ``_emit``)."""

    _conn: Any
    _emit: Any

    @staticmethod
    def _catalog_record(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "kind": row["kind"],
            "name": row["name"],
            "version": row["version"],
            "payload": json.loads(row["payload"]),
            "tags": json.loads(row["tags"]),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def _catalog_row(self, kind: str, name: str, version: int | None, status: str | None = None) -> sqlite3.Row:
        if version is None and status is not None:
            row = self._conn.execute(
                "SELECT * FROM catalog WHERE kind=? AND name=? AND json_extract(payload, '$.status') = ? "
                "ORDER BY version DESC LIMIT 1", (kind, name, status)).fetchone()
        elif version is None:
            row = self._conn.execute(
                "SELECT * FROM catalog WHERE kind=? AND name=? ORDER BY version DESC LIMIT 1", (kind, name)).fetchone()
        else:
            row = self._conn.execute(
                "SELECT * FROM catalog WHERE kind=? AND name=? AND version=?", (kind, name, int_version(version))).fetchone()
        if row is None:
            which = f"version {version}" if version is not None else (
                f"{status!r} version" if status is not None else "any version")
            raise NotFound(f"{kind.replace('_', ' ')} {name!r} has no {which} in the catalog")
        return row

    @store_method("write")
    def catalog_register(self, kind: str, name: str, payload: Mapping[str, Any], *, tags: Iterable[str] = (),
                         idempotency_key: str | None = None) -> dict[str, Any]:
        """Add the next version of a dataset or feature set; returns its catalog entry."""
        _catalog_kind(kind)
        validate_name(name, f"{kind.replace('_', '-')} name")
        if not isinstance(payload, Mapping):
            raise ValidationError(f"catalog payload must be a dict, got {type(payload).__name__}")
        tag_list = list(parse_tags(tags))
        row = self._conn.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM catalog WHERE kind=? AND name=?", (kind, name)).fetchone()
        now = time.time()
        self._conn.execute(
            "INSERT INTO catalog(kind, name, version, payload, tags, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
            (kind, name, row["v"], dumps_json(dict(payload), "catalog payload"), dumps_json(tag_list), now, now),
        )
        self._emit(f"{kind}_registered", f"{kind}:{name}", row["v"], {"tags": tag_list})
        return self._catalog_record(self._catalog_row(kind, name, row["v"]))

    @store_method("write")
    def catalog_update(self, kind: str, name: str, version: int, patch: Mapping[str, Any], *,
                       idempotency_key: str | None = None) -> dict[str, Any]:
        """Shallow-merge ``patch`` into the payload of one catalog version."""
        _catalog_kind(kind)
        validate_name(name, f"{kind.replace('_', '-')} name")
        if not isinstance(patch, Mapping):
            raise ValidationError(f"catalog patch must be a dict, got {type(patch).__name__}")
        row = self._catalog_row(kind, name, version)
        merged = {**json.loads(row["payload"]), **dict(patch)}
        self._conn.execute(
            "UPDATE catalog SET payload=?, updated_at=? WHERE kind=? AND name=? AND version=?",
            (dumps_json(merged, "catalog payload"), time.time(), kind, name, row["version"]),
        )
        self._emit(f"{kind}_updated", f"{kind}:{name}", row["version"], {"changed": sorted(patch)})
        return self._catalog_record(self._catalog_row(kind, name, row["version"]))

    @store_method("read")
    def catalog_get(self, kind: str, name: str, version: int | None = None, *,
                    status: str | None = None) -> dict[str, Any]:
        """One catalog version; the latest when ``version`` is None, or the latest whose
        payload ``status`` equals ``status`` (e.g. the latest *ready* dataset version)."""
        _catalog_kind(kind)
        validate_name(name, f"{kind.replace('_', '-')} name")
        return self._catalog_record(self._catalog_row(kind, name, version, status))

    @store_method("read")
    def catalog_list(self, kind: str, *, prefix: str | None = None, tag: str | None = None,
                     latest_only: bool = True) -> list[dict[str, Any]]:
        _catalog_kind(kind)
        where, params = name_and_tag_filters("c", prefix, tag)
        where.insert(0, "c.kind = ?")
        params.insert(0, kind)
        if latest_only:
            where.append("c.version = (SELECT MAX(version) FROM catalog x WHERE x.kind = c.kind AND x.name = c.name)")
        sql = f"SELECT * FROM catalog c WHERE {' AND '.join(where)} ORDER BY c.name, c.version"
        return [self._catalog_record(r) for r in self._conn.execute(sql, params)]
