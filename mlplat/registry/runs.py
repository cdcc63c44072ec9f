"""The durable run queue (training requests) in the registry database.

A run moves along :data:`~mlplat.records.RUN_TRANSITIONS`. :meth:`RunsPart.claim_next_run` is one
conditional ``UPDATE ... WHERE state='QUEUED'`` inside a write transaction that excludes other
writers, so a request is claimed by exactly one scheduler even with several schedulers, several
clusters on one PostgreSQL, or retried calls. See docs/training.md ("Queue semantics").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlplat.errors import AlreadyExists, ConflictError, NotFound, ValidationError
from mlplat.records import Run, RunState, check_run_transition
from mlplat.registry.backends import Row
from mlplat.registry.codec import dumps_json, loads_json
from mlplat.registry.events import emit
from mlplat.registry.tx import StoreCore, Tx, payload_dict, reads, writes

__all__ = ["RunsPart"]

_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_Q = RunState.QUEUED.value


def _run_state(value: RunState | str) -> RunState:
    try:
        return RunState(str(value).upper())
    except ValueError:
        raise ValidationError(f"unknown run state {value!r}; run states are: {', '.join(s.value for s in RunState)}") from None


def _run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValidationError(f"invalid run id {run_id!r}: expected lowercase letters, digits, '_', '.' or '-' (1-128)")
    return run_id


def _run_row(tx: Tx, run_id: str) -> Row:
    row = tx.one("SELECT * FROM runs WHERE run_id=?", (_run_id(run_id),))
    if row is None:
        raise NotFound(f"run {run_id!r} does not exist; list runs with `mlplat runs list`")
    return row


#: The queue, in the order runs are claimed, each with its 1-based position: the one definition
#: of queue order (claim_next_run takes its first row).
_QUEUE = (f"SELECT r.*, ROW_NUMBER() OVER (ORDER BY priority DESC, created_at, run_id) AS queue_pos "
          f"FROM runs r WHERE r.state = '{_Q}'")


def _run_record(tx: Tx, row: Row, position: int | None = None) -> Run:
    if position is None and row["state"] == _Q:
        position = int(tx.scalar(f"SELECT queue_pos FROM ({_QUEUE}) q WHERE q.run_id = ?", (row["run_id"],)))
    return Run(
        run_id=row["run_id"], kind=row["kind"], model=row["model"], version=row["version"], state=RunState(row["state"]),
        request=loads_json(row["request"], {}), priority=row["priority"], attempts=row["attempts"],
        claimed_by=row["claimed_by"], claimed_at=row["claimed_at"], heartbeat_at=row["heartbeat_at"],
        cancel_requested=bool(row["cancel_requested"]), progress=loads_json(row["progress"], {}),
        metrics=loads_json(row["metrics"], {}), result=loads_json(row["result"]), error=row["error"],
        created_at=row["created_at"], updated_at=row["updated_at"], finished_at=row["finished_at"], queue_position=position,
    )


def _move_run(tx: Tx, row: Row, target: RunState, **fields: Any) -> None:
    current = RunState(row["state"])
    check_run_transition(row["run_id"], current, target)
    fields = {"state": target.value, "updated_at": tx.now, **fields}
    if target.is_terminal:
        fields.setdefault("finished_at", tx.now)
    tx.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE run_id=?", (*fields.values(), row["run_id"]))
    if target != current:
        payload = {"run_id": row["run_id"], "from": current.value, "to": target.value}
        if fields.get("error"):
            payload["error"] = fields["error"]
        emit(tx, f"run_{target.value.lower()}", f"model:{row['model']}", row["version"], payload)


class RunsPart(StoreCore):
    @writes
    def enqueue_run(self, tx: Tx, run_id: str, *, kind: str, model: str, request: Mapping[str, Any],
                    version: int | None = None, priority: int = 0, idempotency_key: str | None = None) -> Run:
        _run_id(run_id)
        if tx.one("SELECT 1 AS x FROM runs WHERE run_id=?", (run_id,)):
            raise AlreadyExists(f"run {run_id!r} exists already")
        body = payload_dict(request, "run request")
        tx.execute(
            "INSERT INTO runs(run_id, kind, model, version, state, request, priority, attempts, claimed_by, claimed_at, "
            "heartbeat_at, cancel_requested, progress, metrics, result, error, created_at, updated_at, finished_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, str(kind), str(model), None if version is None else int(version), _Q, dumps_json(body, "run request"),
             int(priority), 0, None, None, None, 0, "{}", "{}", None, None, tx.now, tx.now, None))
        emit(tx, "run_queued", f"model:{model}", version, {"run_id": run_id, "kind": kind})
        return _run_record(tx, _run_row(tx, run_id))

    @writes
    def claim_next_run(self, tx: Tx, worker: str, *, run_id: str | None = None, kinds: Sequence[str] | None = None,
                       idempotency_key: str | None = None) -> Run | None:
        where, params = ["q.cancel_requested=0"], []
        if run_id is not None:
            where.append("q.run_id=?")
            params.append(_run_id(run_id))
        if kinds:
            where.append(f"q.kind IN ({','.join('?' * len(kinds))})")
            params += list(kinds)
        row = tx.one(f"SELECT * FROM ({_QUEUE}) q WHERE {' AND '.join(where)} ORDER BY q.queue_pos LIMIT 1", params)
        if row is None:
            return None
        changed = tx.execute(
            f"UPDATE runs SET state='RUNNING', claimed_by=?, claimed_at=?, heartbeat_at=?, attempts=attempts+1, "
            f"updated_at=? WHERE run_id=? AND state='{_Q}'", (str(worker), tx.now, tx.now, tx.now, row["run_id"]))
        if changed != 1:  # cannot happen while writers exclude each other, but never hand out a run twice
            return None
        emit(tx, "run_running", f"model:{row['model']}", row["version"],
             {"run_id": row["run_id"], "from": _Q, "to": "RUNNING", "worker": worker, "attempt": row["attempts"] + 1})
        return _run_record(tx, _run_row(tx, row["run_id"]))

    @writes
    def update_run(self, tx: Tx, run_id: str, *, state: RunState | str | None = None,
                   expected_state: RunState | str | None = None, claimed_by: str | None = None,
                   version: int | None = None, progress: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None, result: Mapping[str, Any] | None = None,
                   error: str | None = None, idempotency_key: str | None = None) -> Run:
        """``expected_state`` / ``claimed_by``: ConflictError when the run is not in that state or
        not held by that worker."""
        row = _run_row(tx, run_id)
        if expected_state is not None and row["state"] != _run_state(expected_state).value:
            raise ConflictError(f"run {run_id} is {row['state']}, not the expected {_run_state(expected_state).value}")
        if claimed_by is not None and row["claimed_by"] != claimed_by:
            raise ConflictError(f"run {run_id} is held by {row['claimed_by']!r}, not {claimed_by!r}")
        fields: dict[str, Any] = {"heartbeat_at": tx.now}
        if version is not None:
            fields["version"] = int(version)
        if progress is not None:
            fields["progress"] = dumps_json(payload_dict(progress, "run progress"), "run progress")
        if metrics is not None:
            fields["metrics"] = dumps_json(payload_dict(metrics, "run metrics"), "run metrics")
        if result is not None:
            fields["result"] = dumps_json(payload_dict(result, "run result"), "run result")
        if error is not None:
            fields["error"] = str(error)[:4000]
        if state is None:
            fields["updated_at"] = tx.now
            tx.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE run_id=?", (*fields.values(), row["run_id"]))
        else:
            target = _run_state(state)
            if target == RunState.QUEUED and row["cancel_requested"]:
                # A retry of a run somebody asked to cancel meanwhile: it ends here, never queued again.
                target = RunState.CANCELLED
                fields["error"] = "cancelled by request"
            if target == RunState.QUEUED:
                fields.update(claimed_by=None, claimed_at=None)
            _move_run(tx, row, target, **fields)
        return _run_record(tx, _run_row(tx, run_id))

    @writes
    def cancel_run(self, tx: Tx, run_id: str, *, idempotency_key: str | None = None) -> Run:
        row = _run_row(tx, run_id)
        if row["state"] == _Q:
            _move_run(tx, row, RunState.CANCELLED, cancel_requested=1, error="cancelled before it started")
        elif row["state"] == RunState.RUNNING.value and not row["cancel_requested"]:
            tx.execute("UPDATE runs SET cancel_requested=1, updated_at=? WHERE run_id=?", (tx.now, run_id))
            emit(tx, "run_cancel_requested", f"model:{row['model']}", row["version"], {"run_id": run_id})
        return _run_record(tx, _run_row(tx, run_id))

    @reads
    def get_run(self, tx: Tx, run_id: str) -> Run:
        return _run_record(tx, _run_row(tx, run_id))

    @reads
    def list_runs(self, tx: Tx, *, state: RunState | str | None = None, model: str | None = None,
                  limit: int = 100) -> list[Run]:
        """Newest first; QUEUED runs in queue order (the next to run first) with their position."""
        if state is not None and _run_state(state) == RunState.QUEUED:
            model_filter, model_params = ("WHERE q.model = ?", [str(model)]) if model is not None else ("", [])
            rows = tx.all(f"SELECT * FROM ({_QUEUE}) q {model_filter} ORDER BY q.queue_pos LIMIT ?",
                          (*model_params, max(1, int(limit))))
            return [_run_record(tx, r, int(r["queue_pos"])) for r in rows]
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            where.append("state=?")
            params.append(_run_state(state).value)
        if model is not None:
            where.append("model=?")
            params.append(str(model))
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY created_at DESC LIMIT ?"
        return [_run_record(tx, r) for r in tx.all(sql, (*params, max(1, int(limit))))]
