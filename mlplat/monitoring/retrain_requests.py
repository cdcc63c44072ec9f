"""Retrain requests kept in the registry, and the retrain event kinds and trigger names.

A request is registry events on ``model:<name>`` -- no table of its own, nothing to migrate:
``retrain_requested`` opens one (its id is that event's ``seq``); ``retrain_approved`` or
``retrain_dismissed`` decides it (:func:`approve`, :func:`dismiss`), written with one
idempotency key per request, so of two people deciding at once exactly one wins and the other
gets a :class:`ConflictError`; ``retrain_started`` (with the run id) or ``retrain_failed``
records what came of it (:func:`record_started`, :func:`record_failed`). :func:`fold_requests`
(pure) rebuilds every request's status from those events.

The policy and the decision are :mod:`mlplat.monitoring.retrain`, which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlplat.errors import ConfigError, ConflictError, NotFound
from mlplat.names import validate_name
from mlplat.records import Event, Run
from mlplat.registry import Registry

__all__ = [
    "TRIGGERS",
    "ALL_TRIGGERS",
    "RETRAIN_EVENT_KINDS",
    "EVENT_REQUESTED",
    "EVENT_APPROVED",
    "EVENT_DISMISSED",
    "EVENT_STARTED",
    "EVENT_FAILED",
    "EVENT_SKIPPED",
    "EVENT_VALIDATED",
    "RetrainRequest",
    "fold_requests",
    "requests",
    "pending",
    "get_request",
    "request_retrain",
    "approve",
    "dismiss",
    "record_started",
    "record_failed",
    "failure_payload",
]

Trigger = Literal["drift", "partition_completed", "schedule"]
#: What a policy can list: a drift verdict (``drift_checked`` with drift), a completed partition
#: of the training data's source dataset, a schedule (``schedule_s``).
TRIGGERS: tuple[str, ...] = ("drift", "partition_completed", "schedule")
#: Plus ``manual``: a person (``jobs/retrain.py``), never subject to cooldown or row counts.
ALL_TRIGGERS: tuple[str, ...] = (*TRIGGERS, "manual")

EVENT_REQUESTED = "retrain_requested"
EVENT_APPROVED = "retrain_approved"
EVENT_DISMISSED = "retrain_dismissed"
EVENT_STARTED = "retrain_started"
EVENT_FAILED = "retrain_failed"
EVENT_SKIPPED = "retrain_skipped"
EVENT_VALIDATED = "retrain_validated"
#: Every retrain event kind (subject ``model:<name>``).
RETRAIN_EVENT_KINDS: tuple[str, ...] = (EVENT_REQUESTED, EVENT_APPROVED, EVENT_DISMISSED, EVENT_STARTED,
                                        EVENT_FAILED, EVENT_SKIPPED, EVENT_VALIDATED)
_REQUEST_KINDS = (EVENT_REQUESTED, EVENT_APPROVED, EVENT_DISMISSED, EVENT_STARTED, EVENT_FAILED)


class RetrainRequest(BaseModel):
    """One retrain request and what came of it. ``id`` is the seq of its ``retrain_requested``
    event. ``status``: pending -> approved -> started | failed, or pending -> dismissed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int
    model: str
    trigger: str
    status: Literal["pending", "approved", "dismissed", "started", "failed"] = "pending"
    reason: str = ""
    cause: dict[str, Any] = Field(default_factory=dict)
    requested_by: str = ""
    requested_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    note: str | None = None
    run_id: str | None = None
    version: int | None = None
    error: str | None = None

    @property
    def is_pending(self) -> bool:
        return self.status == "pending"


def fold_requests(name: str, events: Iterable[Event]) -> list[RetrainRequest]:
    """Every request of ``name`` with its status, from its retrain events (pure; oldest first)."""
    out: dict[int, RetrainRequest] = {}
    for e in sorted(events, key=lambda x: x.seq):
        p = e.payload
        if e.kind == EVENT_REQUESTED:
            out[e.seq] = RetrainRequest(id=e.seq, model=name, trigger=str(p.get("trigger", "manual")),
                                        reason=str(p.get("reason", "")), cause=dict(p.get("cause") or {}),
                                        requested_by=str(p.get("by", "")), requested_at=e.ts)
            continue
        rid = p.get("request_id")
        req = out.get(rid) if isinstance(rid, int) else None
        if req is None:
            continue
        update: dict[str, Any] = {}
        if e.kind in (EVENT_APPROVED, EVENT_DISMISSED) and req.status == "pending":
            update = {"status": "approved" if e.kind == EVENT_APPROVED else "dismissed",
                      "decided_by": p.get("by"), "decided_at": e.ts, "note": p.get("note") or None}
        elif e.kind == EVENT_STARTED and req.status in ("approved", "pending"):
            update = {"status": "started", "run_id": p.get("run_id"), "version": p.get("version")}
        elif e.kind == EVENT_FAILED and req.status in ("approved", "pending"):
            update = {"status": "failed", "error": p.get("error"), "run_id": p.get("run_id") or req.run_id}
        elif e.kind == EVENT_FAILED and req.status == "started" and p.get("run_id") == req.run_id:
            update = {"status": "failed", "error": p.get("error")}
        if update:
            out[req.id] = req.model_copy(update=update)
    return list(out.values())


def _retrain_events(registry: Registry, name: str, kinds: Sequence[str] = _REQUEST_KINDS) -> list[Event]:
    events: list[Event] = []
    seq = 0
    while True:
        page = registry.events_since(seq, subject=f"model:{name}", kinds=list(kinds), limit=1000)
        events += page
        if len(page) < 1000:
            return events
        seq = page[-1].seq


def requests(registry: Registry, name: str | None = None, *, status: str | None = None) -> list[RetrainRequest]:
    """Requests of ``name`` (every model when None), oldest first; ``status`` filters."""
    if name is not None:
        validate_name(name, "model name")
        registry.get_model(name)  # NotFound for an unknown model
        names = [name]
    else:
        names = [m.name for m in registry.list_models()]
    out: list[RetrainRequest] = []
    for model in names:
        out += [r for r in fold_requests(model, _retrain_events(registry, model)) if status is None or r.status == status]
    return out


def pending(registry: Registry, name: str | None = None) -> list[RetrainRequest]:
    """The requests waiting for a person (of ``name``, or of every model)."""
    return requests(registry, name, status="pending")


def get_request(registry: Registry, name: str, request_id: int | None = None, *,
                status: str | None = "pending") -> RetrainRequest:
    """Request ``request_id`` of ``name``; without an id, the one pending request (NotFound when
    there is none, ConfigError naming the ids when there are several)."""
    all_requests = requests(registry, name)
    if request_id is not None:
        found = next((r for r in all_requests if r.id == int(request_id)), None)
        if found is None:
            raise NotFound(f"model {name!r} has no retrain request {request_id} (see `mlplat retrain list {name}`)")
        return found
    waiting = [r for r in all_requests if status is None or r.status == status]
    if not waiting:
        raise NotFound(f"model {name!r} has no pending retrain request (see `mlplat retrain list {name}`)")
    if len(waiting) > 1:
        ids = ", ".join(str(r.id) for r in waiting)
        raise ConfigError(f"model {name!r} has {len(waiting)} pending retrain requests ({ids}); pick one with --request ID")
    return waiting[0]


def request_retrain(registry: Registry, name: str, *, trigger: str, cause: Mapping[str, Any] | None = None,
                    by: str = "", reason: str = "", idempotency_key: str | None = None) -> RetrainRequest:
    """Record a request for a person (``retrain_requested``). A request already pending is
    returned instead of opening a second one."""
    validate_name(name, "model name")
    if trigger not in ALL_TRIGGERS:
        raise ConfigError(f"unknown retrain trigger {trigger!r}; expected one of {', '.join(ALL_TRIGGERS)}")
    waiting = pending(registry, name)
    if waiting:
        return waiting[0]
    event = registry.append_event(EVENT_REQUESTED, f"model:{name}",
                                  {"trigger": trigger, "cause": dict(cause or {}), "by": by, "reason": reason},
                                  idempotency_key=idempotency_key)
    return fold_requests(name, [event])[0]


def _decide(registry: Registry, name: str, request_id: int | None, kind: str, by: str, note: str) -> RetrainRequest:
    req = get_request(registry, name, request_id)
    if not req.is_pending:
        who = f" by {req.decided_by}" if req.decided_by else ""
        raise ConflictError(f"retrain request {req.id} of {name!r} is already {req.status}{who}; nothing to decide")
    # One key per request for both verdicts: the first decision is stored, a concurrent or
    # later one gets that stored event back and is refused below.
    event = registry.append_event(kind, f"model:{name}", {"request_id": req.id, "by": by, "note": note},
                                  idempotency_key=f"retrain-decision:{name}:{req.id}")
    if event.kind != kind or event.payload.get("by") != by:  # someone else decided first (a retry of ours passes)
        verdict = "approved" if event.kind == EVENT_APPROVED else "dismissed"
        raise ConflictError(f"retrain request {req.id} of {name!r} was just {verdict} by {event.payload.get('by')}")
    return req.model_copy(update={"status": "approved" if kind == EVENT_APPROVED else "dismissed",
                                  "decided_by": by, "decided_at": event.ts, "note": note or None})


def approve(registry: Registry, name: str, *, request_id: int | None = None, by: str, note: str = "") -> RetrainRequest:
    """Approve a pending request (``retrain_approved``). Only records the decision: starting the
    run is :func:`mlplat.lifecycle.retrain.approve_and_start`."""
    return _decide(registry, name, request_id, EVENT_APPROVED, by, note)


def dismiss(registry: Registry, name: str, *, request_id: int | None = None, by: str, note: str = "") -> RetrainRequest:
    """Dismiss a pending request (``retrain_dismissed``): nothing is trained."""
    return _decide(registry, name, request_id, EVENT_DISMISSED, by, note)


def record_started(registry: Registry, name: str, run: Run, *, cause: Mapping[str, Any],
                   request_id: int | None = None, extra: Mapping[str, Any] | None = None) -> Event:
    """``retrain_started``: the run queued for this cause (and request)."""
    payload = {"run_id": run.run_id, "version": run.version, "trigger": cause.get("trigger"), "cause": dict(cause),
               "request_id": request_id, **dict(extra or {})}
    return registry.append_event(EVENT_STARTED, f"model:{name}", payload, version=run.version,
                                 idempotency_key=f"retrain-started:{run.run_id}")


def record_failed(registry: Registry, name: str, *, stage: str, error: str, cause: Mapping[str, Any] | None = None,
                  request_id: int | None = None, run_id: str | None = None, version: int | None = None,
                  idempotency_key: str | None = None) -> Event:
    """``retrain_failed``: ``stage`` is ``prepare`` (before any run), ``training`` or ``validation``."""
    payload = failure_payload(stage=stage, error=error, cause=cause, request_id=request_id, run_id=run_id)
    return registry.append_event(EVENT_FAILED, f"model:{name}", payload, version=version, idempotency_key=idempotency_key)


def failure_payload(*, stage: str, error: str, cause: Mapping[str, Any] | None = None, request_id: int | None = None,
                    run_id: str | None = None) -> dict[str, Any]:
    """The payload of a ``retrain_failed`` event (:func:`record_failed`)."""
    return {"stage": stage, "error": error[:2000], "trigger": (cause or {}).get("trigger"), "cause": dict(cause or {}),
            "request_id": request_id, "run_id": run_id}
