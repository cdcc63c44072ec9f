"""After a retrain run ended: validate its version, or record why the retrain failed.

:func:`finish_retrain` validates the version of a SUCCEEDED retrain run with the model's
validation policy (Ray Data batch inference) and writes ``retrain_validated``, or records
``retrain_failed`` when the run failed or was cancelled; :func:`fail_stale_validation` gives up
a retrained version left VALIDATING too long. Starting a retrain, deciding on triggers and the
follower that calls these are :mod:`mlplat.lifecycle.retrain`, which re-exports every name here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlplat.errors import ConflictError, InvalidTransition
from mlplat.monitoring.retrain import VALIDATING_TIMEOUT_S
from mlplat.monitoring.retrain_requests import EVENT_FAILED, EVENT_VALIDATED, failure_payload, record_failed
from mlplat.records import ModelState, ModelVersion, Run, RunState
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = [
    "is_retrain_run",
    "finish_retrain",
    "fail_stale_validation",
]

# one logger for retraining: the one of mlplat.lifecycle.retrain
log = logging.getLogger("mlplat.lifecycle.retrain")


Validate = Callable[[Registry, Storage, str, int], Any]


def is_retrain_run(run: Run) -> bool:
    """Whether the run was queued by :func:`~mlplat.lifecycle.retrain.start_retrain`."""
    return isinstance(run.request.get("retrain"), Mapping)


def finish_retrain(registry: Registry, storage: Storage, run_id: str, *, validate_fn: Validate | None = None,
                   now: float | None = None) -> str:
    """After a retrain run ended: validate its version when it SUCCEEDED (the model's validation
    policy; Ray Data) and write ``retrain_validated``; record ``retrain_failed`` when the run
    failed or was cancelled. Idempotent: a version no longer TRAINED (validated meanwhile, or
    being validated) is left alone -- except one VALIDATING for longer than
    :data:`VALIDATING_TIMEOUT_S` at ``now``, whose validation died: :func:`fail_stale_validation`.
    Returns what it did, in words."""
    run = registry.get_run(run_id)
    if not is_retrain_run(run):
        return f"run {run_id}: not a retrain"
    name = run.model
    cause = dict(run.request.get("cause") or {})
    request_id = (run.request.get("retrain") or {}).get("request_id")
    if run.state in (RunState.FAILED, RunState.CANCELLED):
        record_failed(registry, name, stage="training", error=run.error or f"run {run.state.value}", cause=cause,
                      request_id=request_id, run_id=run_id, version=run.version,
                      idempotency_key=f"retrain-failed:{run_id}:training")
        return f"run {run_id}: {run.state.value}"
    if run.state != RunState.SUCCEEDED or run.version is None:
        return f"run {run_id}: still {run.state.value}"
    mv = registry.get_version(name, run.version)
    if mv.state == ModelState.VALIDATING:
        stale = fail_stale_validation(registry, mv, now=now)
        if stale is not None:
            return stale
    if mv.state != ModelState.TRAINED:
        return f"{name} v{mv.version}: already {mv.state.value}"
    try:
        outcome = (validate_fn or _validate)(registry, storage, name, run.version)
    except (ConflictError, InvalidTransition) as exc:  # validated by someone else meanwhile
        return f"{name} v{run.version}: not validated here ({exc})"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        record_failed(registry, name, stage="validation", error=error, cause=cause, request_id=request_id,
                      run_id=run_id, version=run.version, idempotency_key=f"retrain-failed:{run_id}:validation")
        return f"{name} v{run.version}: validation failed: {error}"
    state = getattr(getattr(outcome, "state", None), "value", str(getattr(outcome, "state", "")))
    decision = getattr(outcome, "decision", None)
    approval = getattr(getattr(outcome, "approval", None), "value", None)
    registry.append_event(EVENT_VALIDATED, f"model:{name}", {
        "run_id": run_id, "version": run.version, "state": state, "passed": bool(getattr(outcome, "passed", False)),
        "reasons": list(getattr(decision, "reasons", ()) or ()), "approval": approval, "report": getattr(outcome, "report_path", None),
        "request_id": request_id, "cause": cause}, version=run.version, idempotency_key=f"retrain-validated:{run_id}")
    return f"{name} v{run.version}: {state}" + (" (awaiting approval)" if approval == "PENDING" else "")


def fail_stale_validation(registry: Registry, mv: ModelVersion, *, now: float | None = None) -> str | None:
    """A retrained version VALIDATING for more than :data:`VALIDATING_TIMEOUT_S` (its record
    unchanged that long) at ``now``: its validation died with its process. Records
    ``retrain_failed`` (stage ``validation``; the follower raises the ``retrain_failed`` alarm
    by the alarm policy) and moves the version to REJECTED (it was never judged: it must not
    be deployed, and nothing can validate it again from VALIDATING), in one transaction.
    Returns what it did, or None when the version is not such a one (not a retrain's, not
    VALIDATING, not stale yet, or it moved meanwhile)."""
    now = time.time() if now is None else now
    retrain = mv.extra.get("retrain")
    if mv.state != ModelState.VALIDATING or not isinstance(retrain, Mapping):
        return None
    age = now - mv.updated_at
    if age <= VALIDATING_TIMEOUT_S:
        return None
    name, run_id = mv.name, mv.run_id
    error = (f"validation of {name} v{mv.version} did not finish: VALIDATING for {age / 3600:.3g} h, more than "
             f"{VALIDATING_TIMEOUT_S / 3600:g} h (the process validating it stopped, e.g. a controller restart); "
             "the version is REJECTED unjudged -- retrain again to get a judged version")
    payload = failure_payload(stage="validation", error=error, cause=dict(retrain.get("cause") or {}),
                              request_id=retrain.get("request_id"), run_id=run_id)
    try:  # both or neither: the version REJECTED and its retrain_failed (whose alarm the follower raises)
        registry.batch([
            ("transition", {"name": name, "version": mv.version, "state": ModelState.REJECTED.value,
                            "expected_state": ModelState.VALIDATING.value, "error": error}),
            ("append_event", {"kind": EVENT_FAILED, "subject": f"model:{name}", "payload": payload,
                              "version": mv.version}),
        ], idempotency_key=f"retrain-stale-validation:{name}:v{mv.version}")
    except (ConflictError, InvalidTransition) as exc:  # it moved meanwhile: its validation did finish
        log.info("retrain: %s v%d left as it is: %s", name, mv.version, exc)
        return None
    log.warning("retrain: %s", error)
    return f"{name} v{mv.version}: validation given up (VALIDATING for over {VALIDATING_TIMEOUT_S / 3600:g} h)"


def _validate(registry: Registry, storage: Storage, name: str, version: int) -> Any:
    from mlplat.validation import validate

    return validate(registry, storage, name, version)
