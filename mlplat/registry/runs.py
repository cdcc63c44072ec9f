"""The durable run queue (training requests), kept in the registry database.

Added to :class:`RegistryStore` / :class:`RegistryClient` as mixins so the rest of the
registry API is unchanged. A run moves ``QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED``
(and ``RUNNING -> QUEUED`` when its runner was lost and it is retried). :meth:`claim_next_run` is
one ``UPDATE ... WHERE state='QUEUED'`` inside the store's write transaction, so a request is
claimed by exactly one scheduler even with several schedulers or retried calls.
See docs/training.md ("Queue semantics").
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from mlplat.errors import AlreadyExists, ConflictError, InvalidTransition, NotFound, ValidationError
from mlplat.registry.sqlutil import dumps_json, store_method

__all__ = ["RUNS_SCHEMA", "RUN_STATES", "RUN_TERMINAL", "RunQueueStoreMixin", "RunQueueClientMixin"]

RUN_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
RUN_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_RUN_MOVES = {
    "QUEUED": {"RUNNING", "CANCELLED", "FAILED"},
    "RUNNING": {"SUCCEEDED", "FAILED", "CANCELLED", "QUEUED"},
    "SUCCEEDED": set(),
    "FAILED": set(),
    "CANCELLED": set(),
}
_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, version INTEGER, state TEXT NOT NULL,
    request TEXT NOT NULL, priority INTEGER NOT NULL, attempts INTEGER NOT NULL, claimed_by TEXT,
    claimed_at REAL, heartbeat_at REAL, cancel_requested INTEGER NOT NULL, progress TEXT NOT NULL,
    result TEXT, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL);
CREATE INDEX IF NOT EXISTS runs_queue ON runs(state, priority, created_at);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs(model, created_at);
"""


def _run_state(value: str) -> str:
    state = str(value).upper()
    if state not in RUN_STATES:
        raise ValidationError(f"unknown run state {value!r}; run states are: {', '.join(RUN_STATES)}")
    return state


def _run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValidationError(f"invalid run id {run_id!r}: expected lowercase letters, digits, '_', '.' or '-' (1-128)")
    return run_id


class RunQueueStoreMixin:
    """Queue methods of :class:`RegistryStore` (uses its ``_conn`` and ``_emit``)."""

    _conn: Any

    def _run_row(self, run_id: str) -> Any:
        row = self._conn.execute("SELECT * FROM runs WHERE run_id=?", (_run_id(run_id),)).fetchone()
        if row is None:
            raise NotFound(f"run {run_id!r} does not exist; list runs with `mlplat runs list`")
        return row

    def _run_record(self, row: Any) -> dict[str, Any]:
        record = {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row iterates values)
        for key in ("request", "progress", "result"):
            record[key] = json.loads(record[key]) if record[key] else ({} if key != "result" else None)
        record["cancel_requested"] = bool(record["cancel_requested"])
        record["queue_position"] = None
        if record["state"] == "QUEUED":
            ahead = self._conn.execute(
                "SELECT COUNT(*) FROM runs WHERE state='QUEUED' AND (priority > ? OR (priority = ? AND created_at < ?))",
                (row["priority"], row["priority"], row["created_at"])).fetchone()[0]
            record["queue_position"] = int(ahead) + 1
        return record

    def _move_run(self, row: Any, target: str, **fields: Any) -> None:
        current = row["state"]
        if target != current and target not in _RUN_MOVES[current]:
            allowed = ", ".join(sorted(_RUN_MOVES[current])) or "none (finished)"
            raise InvalidTransition(f"run {row['run_id']}: illegal move {current} -> {target}; allowed from {current}: {allowed}")
        now = time.time()
        fields = {"state": target, "updated_at": now, **fields}
        if target in RUN_TERMINAL:
            fields.setdefault("finished_at", now)
        self._conn.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE run_id=?",
                           (*fields.values(), row["run_id"]))
        if target != current:
            self._emit(f"run_{target.lower()}", f"model:{row['model']}", row["version"],  # type: ignore[attr-defined]
                       {"run_id": row["run_id"], "from": current, "to": target, **({"error": fields["error"]} if fields.get("error") else {})})

    @store_method("write")
    def enqueue_run(self, run_id: str, *, kind: str, model: str, request: Mapping[str, Any], version: int | None = None,
                    priority: int = 0, idempotency_key: str | None = None) -> dict[str, Any]:
        """Add a request in state QUEUED; AlreadyExists if ``run_id`` is taken."""
        _run_id(run_id)
        if self._conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone():
            raise AlreadyExists(f"run {run_id!r} exists already")
        if not isinstance(request, Mapping):
            raise ValidationError(f"run request must be a dict, got {type(request).__name__}")
        now = time.time()
        self._conn.execute(
            "INSERT INTO runs(run_id, kind, model, version, state, request, priority, attempts, claimed_by, claimed_at, "
            "heartbeat_at, cancel_requested, progress, result, error, created_at, updated_at, finished_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, str(kind), str(model), None if version is None else int(version), "QUEUED",
             dumps_json(dict(request), "run request"), int(priority), 0, None, None, None, 0, "{}", None, None, now, now, None))
        self._emit("run_queued", f"model:{model}", version, {"run_id": run_id, "kind": kind})  # type: ignore[attr-defined]
        return self._run_record(self._run_row(run_id))

    @store_method("write")
    def claim_next_run(self, worker: str, *, run_id: str | None = None, kinds: list[str] | None = None,
                       idempotency_key: str | None = None) -> dict[str, Any] | None:
        """Atomically move the next QUEUED run (highest priority, oldest first; or ``run_id``) to
        RUNNING for ``worker``; None when nothing is queued. A run is never claimed twice."""
        where, params = ["state='QUEUED'", "cancel_requested=0"], []
        if run_id is not None:
            where.append("run_id=?")
            params.append(_run_id(run_id))
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params += list(kinds)
        row = self._conn.execute(
            f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY priority DESC, created_at, run_id LIMIT 1",
            params).fetchone()
        if row is None:
            return None
        now = time.time()
        cur = self._conn.execute(
            "UPDATE runs SET state='RUNNING', claimed_by=?, claimed_at=?, heartbeat_at=?, attempts=attempts+1, "
            "updated_at=? WHERE run_id=? AND state='QUEUED'", (str(worker), now, now, now, row["run_id"]))
        if cur.rowcount != 1:  # cannot happen inside BEGIN IMMEDIATE, but never hand out a run twice
            return None
        self._emit("run_running", f"model:{row['model']}", row["version"],  # type: ignore[attr-defined]
                   {"run_id": row["run_id"], "from": "QUEUED", "to": "RUNNING", "worker": worker, "attempt": row["attempts"] + 1})
        return self._run_record(self._run_row(row["run_id"]))

    @store_method("write")
    def update_run(self, run_id: str, *, state: str | None = None, expected_state: str | None = None,
                   claimed_by: str | None = None, version: int | None = None, progress: Mapping[str, Any] | None = None,
                   result: Mapping[str, Any] | None = None, error: str | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        """Record progress (also a heartbeat) and/or move the run. ``expected_state`` / ``claimed_by``:
        ConflictError when the run is not in that state or not held by that worker."""
        row = self._run_row(run_id)
        if expected_state is not None and row["state"] != _run_state(expected_state):
            raise ConflictError(f"run {run_id} is {row['state']}, not the expected {_run_state(expected_state)}")
        if claimed_by is not None and row["claimed_by"] != claimed_by:
            raise ConflictError(f"run {run_id} is held by {row['claimed_by']!r}, not {claimed_by!r}")
        fields: dict[str, Any] = {"heartbeat_at": time.time()}
        if version is not None:
            fields["version"] = int(version)
        if progress is not None:
            fields["progress"] = dumps_json(dict(progress), "run progress")
        if result is not None:
            fields["result"] = dumps_json(dict(result), "run result")
        if error is not None:
            fields["error"] = str(error)[:4000]
        if state is None:
            fields["updated_at"] = time.time()
            self._conn.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE run_id=?",
                               (*fields.values(), row["run_id"]))
        else:
            target = _run_state(state)
            if target == "QUEUED":
                fields.update(claimed_by=None, claimed_at=None)
            self._move_run(row, target, **fields)
        return self._run_record(self._run_row(run_id))

    @store_method("write")
    def cancel_run(self, run_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """QUEUED -> CANCELLED at once; RUNNING: ``cancel_requested`` is set and the scheduler stops it."""
        row = self._run_row(run_id)
        if row["state"] == "QUEUED":
            self._move_run(row, "CANCELLED", cancel_requested=1, error="cancelled before it started")
        elif row["state"] == "RUNNING" and not row["cancel_requested"]:
            self._conn.execute("UPDATE runs SET cancel_requested=1, updated_at=? WHERE run_id=?", (time.time(), run_id))
            self._emit("run_cancel_requested", f"model:{row['model']}", row["version"], {"run_id": run_id})  # type: ignore[attr-defined]
        return self._run_record(self._run_row(run_id))

    @store_method("read")
    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._run_record(self._run_row(run_id))

    @store_method("read")
    def list_runs(self, *, state: str | None = None, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Runs, newest first (QUEUED ones carry their ``queue_position``)."""
        where, params = [], []
        if state is not None:
            where.append("state=?")
            params.append(_run_state(state))
        if model is not None:
            where.append("model=?")
            params.append(str(model))
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY created_at DESC LIMIT ?"
        return [self._run_record(r) for r in self._conn.execute(sql, (*params, max(1, int(limit))))]


class RunQueueClientMixin:
    """Queue methods of :class:`RegistryClient` (same names and arguments as the store's)."""

    def _read(self, method: str, **kwargs: Any) -> Any:  # provided by RegistryClient
        raise NotImplementedError

    def _write(self, method: str, **kwargs: Any) -> Any:  # provided by RegistryClient
        raise NotImplementedError

    def enqueue_run(self, run_id: str, *, kind: str, model: str, request: Mapping[str, Any], version: int | None = None,
                    priority: int = 0, idempotency_key: str | None = None) -> dict[str, Any]:
        return self._write("enqueue_run", run_id=run_id, kind=kind, model=model, request=dict(request), version=version,
                           priority=priority, idempotency_key=idempotency_key)

    def claim_next_run(self, worker: str, *, run_id: str | None = None, kinds: list[str] | None = None,
                       idempotency_key: str | None = None) -> dict[str, Any] | None:
        return self._write("claim_next_run", worker=worker, run_id=run_id, kinds=None if kinds is None else list(kinds),
                           idempotency_key=idempotency_key)

    def update_run(self, run_id: str, *, state: str | None = None, expected_state: str | None = None,
                   claimed_by: str | None = None, version: int | None = None, progress: Mapping[str, Any] | None = None,
                   result: Mapping[str, Any] | None = None, error: str | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        return self._write("update_run", run_id=run_id, state=state, expected_state=expected_state, claimed_by=claimed_by,
                           version=version, progress=None if progress is None else dict(progress),
                           result=None if result is None else dict(result), error=error, idempotency_key=idempotency_key)

    def cancel_run(self, run_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        return self._write("cancel_run", run_id=run_id, idempotency_key=idempotency_key)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._read("get_run", run_id=run_id)

    def list_runs(self, *, state: str | None = None, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self._read("list_runs", state=state, model=model, limit=limit)
