"""The registry's schema as numbered migrations, the same on SQLite and PostgreSQL.

``schema_migrations`` records each applied migration. Opening a database applies the missing
ones in order, each in its own write transaction (so two processes opening a fresh database at
once apply each migration once); a database whose schema is newer than this mlplat knows is
refused with a clear error rather than written with an older idea of its columns.

A database made before migrations were recorded (mlplat 0.1's SQLite file) has the tables of
migration 1 already: its ``CREATE TABLE IF NOT EXISTS`` statements leave them as they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlplat.config import redact_url
from mlplat.errors import StorageError
from mlplat.registry.backends import Backend, Dialect
from mlplat.registry.codec import dumps_json, loads_json

__all__ = ["Migration", "MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]


def _v1_tables(d: Dialect) -> str:
    f = d.float_type
    return f"""
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, owner TEXT NOT NULL, tags TEXT NOT NULL,
    task_type TEXT, serving_policy TEXT NOT NULL, created_at {f} NOT NULL, updated_at {f} NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL REFERENCES models(name), version INTEGER NOT NULL, state TEXT NOT NULL,
    created_at {f} NOT NULL, updated_at {f} NOT NULL, config_hash TEXT, code_version TEXT,
    metrics TEXT NOT NULL, artifacts TEXT NOT NULL, datasets TEXT NOT NULL, feature_set TEXT,
    run_id TEXT, error TEXT, extra TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE INDEX IF NOT EXISTS versions_by_state ON versions(state, model);
CREATE TABLE IF NOT EXISTS aliases (
    model TEXT NOT NULL REFERENCES models(name), alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at {f} NOT NULL, PRIMARY KEY (model, alias));
CREATE TABLE IF NOT EXISTS events (
    seq {d.seq_column}, ts {f} NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    version INTEGER, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_subject ON events(subject, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, method TEXT NOT NULL, result TEXT NOT NULL, created_at {f} NOT NULL);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, version INTEGER, state TEXT NOT NULL,
    request TEXT NOT NULL, priority INTEGER NOT NULL, attempts INTEGER NOT NULL, claimed_by TEXT,
    claimed_at {f}, heartbeat_at {f}, cancel_requested INTEGER NOT NULL, progress TEXT NOT NULL,
    result TEXT, error TEXT, created_at {f} NOT NULL, updated_at {f} NOT NULL, finished_at {f});
CREATE INDEX IF NOT EXISTS runs_queue ON runs(state, priority, created_at);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs(model, created_at);
CREATE TABLE IF NOT EXISTS catalog (
    kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, payload TEXT NOT NULL,
    tags TEXT NOT NULL, created_at {f} NOT NULL, updated_at {f} NOT NULL, PRIMARY KEY (kind, name, version));
"""


def _v1(backend: Backend) -> None:
    backend.execute_script(_v1_tables(backend.dialect))


def _v2(backend: Backend) -> None:
    """Approval as columns of its own (it lived in ``extra.approval``); run metrics as a column
    (they lived in ``result.metrics``). Existing rows are carried over."""
    f = backend.dialect.float_type
    backend.execute_script(f"""
ALTER TABLE versions ADD COLUMN approval_state TEXT NOT NULL DEFAULT 'NOT_REQUIRED';
ALTER TABLE versions ADD COLUMN approval_by TEXT;
ALTER TABLE versions ADD COLUMN approval_note TEXT;
ALTER TABLE versions ADD COLUMN approval_at {f};
ALTER TABLE runs ADD COLUMN metrics TEXT NOT NULL DEFAULT '{{}}'
""")
    rows = backend.execute("SELECT model, version, state, extra FROM versions WHERE extra LIKE ?",
                           ('%"approval"%',)).fetchall()
    for row in rows:
        extra = loads_json(row["extra"], {})
        old = str(extra.pop("approval", "") or "").upper()
        if old not in ("PENDING", "APPROVED", "REJECTED"):
            continue
        by, note, at = extra.pop("approval_by", None), extra.pop("approval_note", None), extra.pop("approval_at", None)
        # A reviewer's "no" used to leave the version VALIDATED; the state machine now has the move.
        state = "REJECTED" if old == "REJECTED" and row["state"] == "VALIDATED" else row["state"]
        backend.execute(
            "UPDATE versions SET approval_state=?, approval_by=?, approval_note=?, approval_at=?, state=?, extra=? "
            "WHERE model=? AND version=?",
            (old, by or None, note or None, at, state, dumps_json(extra), row["model"], row["version"]))
    for row in backend.execute("SELECT run_id, result FROM runs WHERE result IS NOT NULL").fetchall():
        metrics = (loads_json(row["result"], {}) or {}).get("metrics")
        if isinstance(metrics, dict) and metrics:
            backend.execute("UPDATE runs SET metrics=? WHERE run_id=?", (json.dumps(metrics, sort_keys=True), row["run_id"]))


def _v3(backend: Backend) -> None:
    """Rollouts: one row per deployment of a version, and the event-log cursors of followers
    (the rollout controller) so a restart resumes where it stopped."""
    f = backend.dialect.float_type
    backend.execute_script(f"""
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY, model TEXT NOT NULL REFERENCES models(name), version INTEGER NOT NULL,
    region TEXT NOT NULL, canary_percent {f} NOT NULL, state TEXT NOT NULL, previous_version INTEGER,
    reason TEXT, by_user TEXT NOT NULL, forced INTEGER NOT NULL, targets TEXT NOT NULL,
    deadline_at {f} NOT NULL, created_at {f} NOT NULL, updated_at {f} NOT NULL);
CREATE INDEX IF NOT EXISTS deployments_by_model ON deployments(model, region, state);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at {f} NOT NULL)
""")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Backend], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "models, versions, aliases, events, idempotency keys, runs, catalog", _v1),
    Migration(2, "approval columns on versions, metrics column on runs", _v2),
    Migration(3, "deployments (rollouts) and event-log cursors", _v3),
)
#: The newest schema this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(backend: Backend) -> int:
    row = backend.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations").fetchone()
    return int(row["v"])


def _refuse_newer(backend: Backend, found: int) -> None:
    if found > SCHEMA_VERSION:
        raise StorageError(
            f"registry database {redact_url(backend.url)} has schema version {found}, newer than this mlplat "
            f"understands ({SCHEMA_VERSION}): upgrade mlplat on this machine, or point registry.url elsewhere"
        )


def migrate(backend: Backend) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it was at."""
    f = backend.dialect.float_type
    try:
        backend.begin_write()
        backend.execute_script(
            f"CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
            f"applied_at {f} NOT NULL)")
        found = schema_version(backend)
        backend.commit()
    except BaseException:
        backend.rollback()
        raise
    _refuse_newer(backend, found)
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        try:
            backend.begin_write()
            now = schema_version(backend)  # another process may have migrated meanwhile
            _refuse_newer(backend, now)
            if now < migration.version:
                migration.apply(backend)
                backend.execute("INSERT INTO schema_migrations(version, description, applied_at) VALUES (?,?,?)",
                                (migration.version, migration.description, time.time()))
            backend.commit()
        except BaseException:
            backend.rollback()
            raise
    return found
