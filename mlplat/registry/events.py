"""The append-only event log.

Sequence numbers are assigned as ``MAX(seq) + 1`` inside the write transaction, which excludes
every other writer (backends.py): no gaps (a rolled-back call assigns nothing), and the order of
seqs is the order of commits, so a follower reading ``events_since(last)`` never skips one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mlplat.errors import ConflictError, ValidationError
from mlplat.records import Event
from mlplat.registry.codec import dumps_json, int_version, loads_json
from mlplat.registry.tx import StoreCore, Tx, payload_dict, reads, writes

__all__ = ["emit", "EventsPart"]

_EVENT_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,62}$")


def emit(tx: Tx, kind: str, subject: str, version: int | None = None, payload: Mapping[str, Any] | None = None) -> Event:
    """Append one event in the caller's write transaction."""
    body = dict(payload or {})
    # One statement (one round trip on PostgreSQL): the next seq and the row together.
    seq = int(tx.scalar(
        "INSERT INTO events(seq, ts, kind, subject, version, payload) "
        "SELECT COALESCE(MAX(seq), 0) + 1, ?, ?, ?, CAST(? AS INTEGER), ? FROM events RETURNING seq",
        (tx.now, kind, subject, version, dumps_json(body, "event payload"))))
    return Event(seq=seq, ts=tx.now, kind=kind, subject=subject, version=version, payload=body)


def _last_seq(tx: Tx) -> int:
    return int(tx.scalar("SELECT COALESCE(MAX(seq), 0) AS s FROM events"))


class EventsPart(StoreCore):
    @writes
    def append_event(self, tx: Tx, kind: str, subject: str, payload: Mapping[str, Any] | None = None, *,
                     version: int | None = None, expected_seq: int | None = None,
                     idempotency_key: str | None = None) -> Event:
        if not isinstance(kind, str) or not _EVENT_KIND.fullmatch(kind):
            raise ValidationError(f"invalid event kind {kind!r}: expected lowercase letters, digits, '_' or '.'")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise ValidationError(f"invalid event subject {subject!r}: expected e.g. 'model:churn' (1-256 characters)")
        body = payload_dict(payload, "event payload")
        if expected_seq is not None and _last_seq(tx) != int(expected_seq):
            raise ConflictError(f"event log is at seq {_last_seq(tx)}, not the expected {expected_seq}: re-read and retry")
        return emit(tx, kind, subject, None if version is None else int_version(version), body)

    @reads
    def last_seq(self, tx: Tx) -> int:
        """The highest sequence number assigned (0 for an empty log)."""
        return _last_seq(tx)

    @reads
    def events_since(self, tx: Tx, seq: int = 0, *, limit: int = 1000, subject: str | None = None,
                     kinds: Iterable[str] | str | None = None) -> list[Event]:
        where: list[str] = ["seq > ?"]
        params: list[Any] = [int(seq)]
        if subject:
            where.append("subject = ?")
            params.append(subject)
        if kinds:
            kind_list = [kinds] if isinstance(kinds, str) else list(kinds)
            where.append(f"kind IN ({','.join('?' * len(kind_list))})")
            params += kind_list
        rows = tx.all(f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                      (*params, max(0, int(limit))))
        return [Event(seq=r["seq"], ts=r["ts"], kind=r["kind"], subject=r["subject"], version=r["version"],
                      payload=loads_json(r["payload"], {})) for r in rows]

    @reads
    def get_cursor(self, tx: Tx, consumer: str) -> int | None:
        """The last event seq ``consumer`` (e.g. the rollout controller) applied; None before its first."""
        row = tx.one("SELECT seq FROM cursors WHERE consumer=?", (_consumer(consumer),))
        return None if row is None else int(row["seq"])

    @writes
    def set_cursor(self, tx: Tx, consumer: str, seq: int, *, idempotency_key: str | None = None) -> int:
        """Record that ``consumer`` applied every event up to ``seq`` (never moves backwards)."""
        consumer = _consumer(consumer)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValidationError(f"cursor seq must be a non-negative integer, got {seq!r}")
        tx.execute("INSERT INTO cursors(consumer, seq, updated_at) VALUES (?,?,?) ON CONFLICT(consumer) DO UPDATE SET "
                   "seq=CASE WHEN excluded.seq > cursors.seq THEN excluded.seq ELSE cursors.seq END, updated_at=excluded.updated_at",
                   (consumer, seq, tx.now))
        return int(tx.scalar("SELECT seq FROM cursors WHERE consumer=?", (consumer,)))


def _consumer(consumer: object) -> str:
    if not isinstance(consumer, str) or not _EVENT_KIND.fullmatch(consumer.replace("-", "_")):
        raise ValidationError(f"invalid cursor consumer {consumer!r}: expected e.g. 'rollout-controller'")
    return consumer
