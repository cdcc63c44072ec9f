"""The retraining policy, its pure decision, and retrain requests kept in the registry.

- :class:`RetrainPolicy` is a model's ``serving_policy["retrain"]``. Absent, the model is never
  retrained by a trigger (``mlplat retrain`` and ``jobs/retrain.py`` still work, as ``manual``).
- :func:`decide_retrain` (pure) turns a trigger and what is known about the model into
  ``start`` (train now), ``request`` (record a request for a person: ``mlplat retrain
  approve|dismiss``) or ``skip``, with the reason.
- Requests (:mod:`mlplat.monitoring.retrain_requests`, with the event kinds and trigger names;
  every name re-exported here) are registry events on ``model:<name>`` -- no table of their
  own, nothing to migrate: ``retrain_requested`` opens one (its id is that event's ``seq``);
  ``retrain_approved`` or ``retrain_dismissed`` decides it, written with one idempotency key per
  request, so of two people deciding at once exactly one wins and the other gets a
  :class:`ConflictError`; ``retrain_started`` (with the run id) or ``retrain_failed`` records
  what came of it. :func:`fold_requests` (pure) rebuilds every request's status from those events.
- What the decision needs is read here from the registry only (:func:`retrain_status`,
  :func:`data_status`); starting a run is the lifecycle layer's job
  (:mod:`mlplat.lifecycle.retrain`), which may import training and validation.

What counts as in flight (no triggered retrain while one is, :func:`retrain_status`): a
QUEUED/RUNNING run of the model; a version a retrain produced that is still TRAINED or
VALIDATING (not judged yet; unless a ``retrain_failed`` was recorded for it, or it has been
VALIDATING for more than :data:`VALIDATING_TIMEOUT_S`: a validation that died); an active
(PREWARMING or CANARY) deployment of the model.

Which ``drift_checked`` events may trigger at all (:func:`drift_scope_problem`): those of the
model's current production or canary version whose window is recent.

"New rows" are the rows a retrain would train on that the model's newest trained version did
not see: rows of the *complete* partitions (a partition still being written is never used) of
the latest ready version of the feature set's source dataset, from the feature-set spec's
``partitions.start`` on (open-ended), minus the rows of the feature-set version that version
trained on when that was built from the same dataset version (a feature set has one row per
source row); all of them when the dataset version changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlplat.errors import ConfigError, NotFound
from mlplat.monitoring.alarms import policy_errors
from mlplat.monitoring.policy import parse_window
from mlplat.monitoring.retrain_requests import (
    ALL_TRIGGERS,
    EVENT_APPROVED,
    EVENT_DISMISSED,
    EVENT_FAILED,
    EVENT_REQUESTED,
    EVENT_SKIPPED,
    EVENT_STARTED,
    EVENT_VALIDATED,
    RETRAIN_EVENT_KINDS,
    TRIGGERS,
    RetrainRequest,
    Trigger,
    _retrain_events,
    approve,
    dismiss,
    failure_payload,
    fold_requests,
    get_request,
    pending,
    record_failed,
    record_started,
    request_retrain,
    requests,
)
from mlplat.records import (
    ALIAS_CANARY,
    ALIAS_PRODUCTION,
    CATALOG_DATASET,
    CATALOG_FEATURE_SET,
    STATUS_READY,
    DatasetVersion,
    Event,
    FeatureSetVersion,
    ModelState,
    ModelVersion,
    Run,
    RunState,
)
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
    "RetrainPolicy",
    "RetrainDecision",
    "RetrainRequest",
    "RetrainStatus",
    "DataStatus",
    "decide_retrain",
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
    "retrain_status",
    "data_status",
    "eligible_rows",
    "new_rows",
    "trained_version",
    "drift_verdict",
    "drift_scope_problem",
    "serving_versions",
    "cause_of",
    "VALIDATING_TIMEOUT_S",
    "DRIFT_MIN_AGE_S",
    "source_datasets",
    "MANUAL_ONLY",
]


#: A retrained version VALIDATING for longer than this (its record unchanged that long) is taken
#: for a validation that died with its process (a controller restart): no longer in flight,
#: and the retrain controller records ``retrain_failed`` and REJECTs it.
VALIDATING_TIMEOUT_S = 3600.0
#: A ``drift_checked`` event triggers only when its window ended at most one window length, and
#: at least this long, before the event was recorded.
DRIFT_MIN_AGE_S = 3600.0

_EXPECTED = ("expected 'auto', 'manual' or a mapping with keys mode, cooldown_s, min_new_rows, triggers, schedule_s")


class RetrainPolicy(BaseModel):
    """When a model is retrained (``serving_policy.retrain``).

    ``mode``: ``auto`` trains at once; ``manual`` records a request a person approves.
    ``cooldown_s``: no triggered retrain sooner than this after the model's last training run,
    retrain attempt or dismissed request (a dismissal is an answer: the next check does not ask
    again at once). ``min_new_rows``: triggered retrains wait for this many new rows; the
    ``drift`` trigger needs at least one whatever this says (retraining on the very data the
    model already saw cannot fix drift).
    ``triggers``: which of ``drift``, ``partition_completed``, ``schedule`` retrain (empty: only
    a person does). ``schedule_s``: with ``schedule``, retrain this long after the last run.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["auto", "manual"] = "manual"
    cooldown_s: float = Field(6 * 3600.0, ge=0)
    min_new_rows: int = Field(1000, ge=0)
    triggers: tuple[Trigger, ...] = ("drift", "partition_completed")
    schedule_s: float | None = Field(None, gt=0)

    @field_validator("triggers", mode="before")
    @classmethod
    def _one_trigger(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("triggers")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _schedule(self) -> RetrainPolicy:
        if "schedule" in self.triggers and self.schedule_s is None:
            raise ValueError("triggers lists 'schedule' but schedule_s is not set (seconds between retrains)")
        if self.schedule_s is not None and "schedule" not in self.triggers:
            raise ValueError("schedule_s is set but 'schedule' is not in triggers (add it, or remove schedule_s)")
        return self

    @classmethod
    def from_serving_policy(cls, serving_policy: Mapping[str, Any] | None) -> RetrainPolicy | None:
        """The policy in ``serving_policy["retrain"]``: missing -> None (no triggered retrains),
        ``"auto"``/``"manual"`` -> that mode, a mapping -> those fields; anything else is a
        :class:`ConfigError` naming ``serving_policy.retrain.<field>``.

        >>> RetrainPolicy.from_serving_policy({}) is None
        True
        >>> RetrainPolicy.from_serving_policy({"retrain": "auto"}).triggers
        ('drift', 'partition_completed')
        >>> RetrainPolicy.from_serving_policy({"retrain": {"cooldown_s": -1}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mlplat.errors.ConfigError: serving_policy.retrain.cooldown_s: Input should be greater than or equal to 0 (got -1); ...
        """
        raw = (serving_policy or {}).get("retrain")
        if raw is None:
            return None
        if isinstance(raw, str):
            if raw in ("auto", "manual"):
                return cls(mode=raw)  # type: ignore[arg-type]
            raise ConfigError(f"serving_policy.retrain: got {raw!r}; {_EXPECTED}")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"serving_policy.retrain: got {type(raw).__name__}; {_EXPECTED}")
        try:
            return cls.model_validate(dict(raw))
        except pydantic.ValidationError as exc:
            raise ConfigError(policy_errors("retrain", exc, _EXPECTED)) from None


#: The policy a person's retrain runs under when the model has none: manual, no triggers.
MANUAL_ONLY = RetrainPolicy(mode="manual", triggers=())


@dataclass(frozen=True)
class RetrainDecision:
    """``start`` (train now), ``request`` (ask a person) or ``skip``; ``reason`` says why."""

    action: Literal["start", "request", "skip"]
    reason: str


def _dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def decide_retrain(trigger: str, policy: RetrainPolicy | None, *, now: float, last_retrain_at: float | None,
                   new_rows: int | None, pending_request: int | str | None,
                   in_flight: str | None = None) -> RetrainDecision:
    """What to do about ``trigger`` for one model (pure). Checked in this order:

    1. a trigger the policy does not list (or no policy) -> skip; ``manual`` always passes;
    2. a retrain still in flight (``in_flight``: what, in words -- a queued or running run, a
       retrained version not judged yet, an active deployment; see :func:`retrain_status`) -> skip;
    3. a request already pending -> skip (one at a time; a ``manual`` trigger is told to approve it);
    4. ``manual``: start in ``auto`` mode, else request (no cooldown, no row count);
    5. cooldown since ``last_retrain_at`` (the model's last training run, retrain attempt or
       dismissed request) -> skip;
    6. ``schedule``: not due yet (``schedule_s`` since the last run), or never trained -> skip;
    7. ``drift`` with no new row at all -> skip (retraining on the data the model already saw
       cannot fix drift); fewer than ``min_new_rows`` new rows (``None``: unknown, counted as 0) -> skip;
    8. ``auto`` -> start; ``manual`` -> request.

    >>> auto = RetrainPolicy(mode="auto", cooldown_s=3600, min_new_rows=100)
    >>> decide_retrain("drift", auto, now=10_000, last_retrain_at=0, new_rows=500, pending_request=None)
    RetrainDecision(action='start', reason='drift: 500 new rows >= 100; mode auto')
    >>> decide_retrain("drift", auto, now=1_000, last_retrain_at=0, new_rows=500, pending_request=None).reason
    'cooldown: last training, retrain attempt or dismissal 16.7 min ago, next allowed in 43.3 min'
    >>> decide_retrain("drift", auto.model_copy(update={"min_new_rows": 0}), now=10_000, last_retrain_at=0,
    ...                new_rows=0, pending_request=None).action
    'skip'
    >>> decide_retrain("partition_completed", RetrainPolicy(), now=9e9, last_retrain_at=0, new_rows=5000,
    ...                pending_request=None).action
    'request'
    """
    if trigger not in ALL_TRIGGERS:
        return RetrainDecision("skip", f"unknown trigger {trigger!r} (expected one of {', '.join(ALL_TRIGGERS)})")
    if trigger != "manual":
        if policy is None:
            return RetrainDecision("skip", f"{trigger}: the model has no retrain policy (serving_policy.retrain)")
        if trigger not in policy.triggers:
            listed = ", ".join(policy.triggers) or "none"
            return RetrainDecision("skip", f"{trigger}: not a trigger of this model (triggers: {listed})")
    if in_flight:
        return RetrainDecision("skip", f"in flight: {in_flight} (one retrain at a time)")
    if pending_request is not None:
        hint = "; approve or dismiss it with `mlplat retrain approve|dismiss`" if trigger == "manual" else ""
        return RetrainDecision("skip", f"retrain request {pending_request} is already pending{hint}")
    mode = policy.mode if policy is not None else "manual"
    if trigger == "manual":
        return (RetrainDecision("start", "manual: mode auto") if mode == "auto"
                else RetrainDecision("request", "manual: mode manual, a person approves"))
    assert policy is not None
    if last_retrain_at is not None and now - last_retrain_at < policy.cooldown_s:
        ago = now - last_retrain_at
        return RetrainDecision("skip", f"cooldown: last training, retrain attempt or dismissal {_dur(ago)} ago, "
                                       f"next allowed in {_dur(policy.cooldown_s - ago)}")
    if trigger == "schedule":
        if last_retrain_at is None:
            return RetrainDecision("skip", "schedule: never trained (the schedule counts from the last training run)")
        due = last_retrain_at + float(policy.schedule_s or 0)
        if now < due:
            return RetrainDecision("skip", f"schedule: not due for {_dur(due - now)}")
    rows = 0 if new_rows is None else int(new_rows)
    known = "" if new_rows is not None else " (unknown: no data lineage)"
    if trigger == "drift" and rows < 1:
        return RetrainDecision("skip", f"drift: {rows} new rows{known}: retraining on the data the model already saw "
                                       "cannot fix drift (the drift trigger needs at least 1 new row)")
    if rows < policy.min_new_rows:
        return RetrainDecision("skip", f"{trigger}: {rows} new rows{known} < min_new_rows {policy.min_new_rows}")
    action: Literal["start", "request"] = "start" if mode == "auto" else "request"
    return RetrainDecision(action, f"{trigger}: {rows} new rows{known} >= {policy.min_new_rows}; mode {mode}")


# -- what the decision reads ------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainStatus:
    """A model's retrain state: ``last_retrain_at`` (the latest of its newest training run's
    creation, a retrain attempt and a dismissed request), ``in_flight`` (what is in flight, in
    words, or None) and its ``pending`` request id."""

    last_retrain_at: float | None
    in_flight: str | None
    pending: int | None
    requests: tuple[RetrainRequest, ...] = ()


_UNJUDGED = (ModelState.TRAINED, ModelState.VALIDATING)


def _in_flight(registry: Registry, name: str, runs: Sequence[Run], failed: Sequence[Event], now: float) -> str | None:
    """The first thing in flight (module doc), in words, or None."""
    run = next((r for r in runs if r.state in (RunState.QUEUED, RunState.RUNNING)), None)
    if run is not None:
        return f"run {run.run_id} of this model is already queued or running ({run.state.value})"
    failed_runs = {e.payload.get("run_id") for e in failed} - {None}
    failed_versions = {e.version for e in failed} - {None}
    for mv in registry.list_versions(name):
        if mv.state not in _UNJUDGED or not isinstance(mv.extra.get("retrain"), Mapping):
            continue
        if mv.version in failed_versions or (mv.run_id is not None and mv.run_id in failed_runs):
            continue  # its retrain_failed is recorded: over
        if mv.state == ModelState.VALIDATING and now - mv.updated_at > VALIDATING_TIMEOUT_S:
            continue  # a validation that died with its process (see VALIDATING_TIMEOUT_S)
        return f"v{mv.version} (a retrain's version) is still {mv.state.value}: not validated yet"
    for d in registry.list_deployments(name=name, active=True):
        return f"deployment {d.id} of v{d.version} is {d.state.value} (a rollout in progress)"
    return None


def retrain_status(registry: Registry, name: str, *, runs: Sequence[Run] | None = None,
                   now: float | None = None) -> RetrainStatus:
    """Gather :class:`RetrainStatus` from the run queue, the model's versions and deployments and
    its retrain events (``now``: for the VALIDATING timeout; default the clock)."""
    now = time.time() if now is None else now
    runs = list(runs) if runs is not None else registry.list_runs(model=name, limit=50)
    times = [r.created_at for r in runs if r.state != RunState.CANCELLED]
    events = _retrain_events(registry, name)
    times += [e.ts for e in events if e.kind in (EVENT_STARTED, EVENT_FAILED) and e.payload.get("stage") != "validation"]
    times += [e.ts for e in events if e.kind == EVENT_DISMISSED]  # an answer: no new request at the next check
    in_flight = _in_flight(registry, name, runs, [e for e in events if e.kind == EVENT_FAILED], now)
    folded = fold_requests(name, events)
    waiting = next((r.id for r in folded if r.is_pending), None)
    return RetrainStatus(max(times) if times else None, in_flight, waiting, tuple(folded))


def trained_version(registry: Registry, name: str) -> ModelVersion | None:
    """The model's newest version that finished training (TRAINED or later, REJECTED included:
    a retrain whose result was rejected has used its data too), or None."""
    unfinished = {ModelState.REGISTERED, ModelState.TRAINING, ModelState.FAILED}
    versions = [v for v in registry.list_versions(name) if v.state not in unfinished and v.feature_set is not None]
    return versions[-1] if versions else None


def _partition_start(fsv: FeatureSetVersion) -> tuple[str | None, str | None]:
    rng = (fsv.spec or {}).get("partitions") or {}
    return rng.get("key"), rng.get("start")


def eligible_rows(dataset: DatasetVersion, *, start: str | None = None, key: str | None = None) -> int:
    """Rows a retrain reads from ``dataset``: complete partitions whose ``key`` value is at least
    ``start``; an unpartitioned version: all its rows.

    >>> from mlplat.records import PartitionInfo
    >>> parts = tuple(PartitionInfo(key=f"date={d}", values={"date": d}, files=(), num_rows=n, complete=c)
    ...               for d, n, c in [("2026-11-01", 10, True), ("2026-11-02", 20, True), ("2026-11-03", 40, False)])
    >>> dv = DatasetVersion(name="clicks", version=1, path="datasets/clicks/v1", partition_keys=("date",), partitions=parts)
    >>> eligible_rows(dv), eligible_rows(dv, start="2026-11-02")
    (30, 20)
    """
    if not dataset.partition_keys:
        return dataset.num_rows
    key = key or dataset.partition_keys[0]
    return sum(p.num_rows for p in dataset.partitions
               if p.complete and (start is None or p.values.get(key, "") >= start))


def new_rows(dataset: DatasetVersion, seen: FeatureSetVersion) -> int:
    """Rows of ``dataset`` a model trained on ``seen`` has not seen (see the module doc)."""
    key, start = _partition_start(seen)
    rows = eligible_rows(dataset, start=start, key=key)
    if seen.source != dataset.ref:
        return rows
    return max(0, rows - seen.num_rows)


@dataclass(frozen=True)
class DataStatus:
    """The data side of a retrain: the feature set the newest trained version used (``seen``),
    the latest ready version of that feature set and of its source dataset, the ``new_rows``
    the model has not seen, and whether the latest feature-set version already holds every
    eligible row (``latest_covers``: then no rebuild is needed)."""

    seen: FeatureSetVersion | None
    latest: FeatureSetVersion
    dataset: DatasetVersion
    new_rows: int
    latest_covers: bool


def data_status(registry: Registry, name: str, feature_set: str | None = None) -> DataStatus:
    """Read :class:`DataStatus` for model ``name`` (``feature_set``: its training config's
    feature-set name; default the one of its newest trained version). Raises NotFound when
    the feature set or its dataset has no ready version."""
    seen_mv = trained_version(registry, name)
    seen: FeatureSetVersion | None = None
    if seen_mv is not None and seen_mv.feature_set is not None:
        try:
            seen = FeatureSetVersion.from_catalog(registry.catalog_get(
                CATALOG_FEATURE_SET, seen_mv.feature_set.name, seen_mv.feature_set.version))
        except NotFound:
            seen = None
    fs_name = feature_set or (seen.name if seen is not None else None)
    if fs_name is None:
        raise NotFound(f"model {name!r} has no trained version with a feature set; nothing to retrain from")
    try:
        latest = FeatureSetVersion.from_catalog(registry.catalog_get(CATALOG_FEATURE_SET, fs_name, status=STATUS_READY))
    except NotFound:
        raise NotFound(f"feature set {fs_name!r} has no ready version; build one with `mlplat features build`") from None
    source = latest.spec.get("source") or {}
    ds_name = source.get("dataset") or latest.source.name
    try:
        dataset = DatasetVersion.from_catalog(registry.catalog_get(CATALOG_DATASET, ds_name, status=STATUS_READY))
    except NotFound:
        raise NotFound(f"dataset {ds_name!r} (the source of feature set {fs_name!r}) has no ready version") from None
    rows = new_rows(dataset, seen) if seen is not None and seen.name == fs_name else eligible_rows(
        dataset, start=_partition_start(latest)[1], key=_partition_start(latest)[0])
    return DataStatus(seen=seen, latest=latest, dataset=dataset, new_rows=rows, latest_covers=new_rows(dataset, latest) == 0)


def source_datasets(registry: Registry, name: str) -> set[str]:
    """Names of the datasets the model's newest versions were trained from (lineage)."""
    try:
        versions = registry.list_versions(name)
    except NotFound:
        return set()
    for v in reversed(versions):
        if v.datasets:
            return {d.name for d in v.datasets}
    return set()


def drift_verdict(payload: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(drifted, drifted feature names) of a ``drift_checked`` event's payload.

    >>> drift_verdict({"drifted": True, "drifted_features": ["age"], "rows": 500})
    (True, ['age'])
    >>> drift_verdict({"drifted": False})
    (False, [])
    """
    drifted = payload.get("drifted")
    if drifted is None:
        drifted = str(payload.get("verdict", "")).lower() in ("drift", "drifted")
    features = payload.get("drifted_features")
    if features is None:
        features = payload.get("features") if isinstance(payload.get("features"), list) else []
    return bool(drifted), [str(f) for f in features or []]


def serving_versions(registry: Registry, name: str) -> dict[str, int]:
    """The model's ``production``, ``production.<region>``, ``canary`` and ``canary.<region>``
    aliases and their versions: what serves its traffic now."""
    return {alias: v for alias, v in registry.aliases(name).items()
            if alias.split(".", 1)[0] in (ALIAS_PRODUCTION, ALIAS_CANARY)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def drift_scope_problem(event: Event, serving: Mapping[str, int]) -> str | None:
    """Why a ``drift_checked`` event must trigger nothing (no alarm, no retrain), or None (pure).

    It may trigger only when it checked a version that serves now (``serving``: alias ->
    version, :func:`serving_versions`) and its window is recent: the window's ``end_s`` at most
    one window length (at least :data:`DRIFT_MIN_AGE_S`) before the event's ``ts``. A check of
    an old window (``--end`` in the past, a backfill) or of an archived or candidate version is
    a report, not a reason to retrain production.

    >>> e = Event(seq=1, ts=10_000.0, kind="drift_checked", subject="model:m", version=2,
    ...           payload={"window": "1h", "start_s": 6_000.0, "end_s": 9_600.0})
    >>> drift_scope_problem(e, {"production": 2}) is None
    True
    >>> drift_scope_problem(e, {"production": 3, "canary": 4})
    'v2 serves no traffic now (canary v4, production v3)'
    >>> drift_scope_problem(e.model_copy(update={"ts": 20_000.0}), {"production": 2})
    'stale window: it ended 2.89 h before the check was recorded (more than 1 h)'
    """
    p = event.payload
    version = event.version if event.version is not None else p.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return "the check names no model version"
    if version not in serving.values():
        now = ", ".join(f"{alias} v{v}" for alias, v in sorted(serving.items())) or "no production or canary alias"
        return f"v{version} serves no traffic now ({now})"
    end = _number(p.get("end_s"))
    if end is None:
        return "the check records no window end (end_s)"
    length: float | None = None
    if isinstance(p.get("window"), str):
        try:
            length = float(parse_window(p["window"]))
        except ValueError:
            length = None
    start = _number(p.get("start_s"))
    if length is None and start is not None:
        length = end - start
    limit = max(length or 0.0, DRIFT_MIN_AGE_S)
    age = event.ts - end
    if age > limit:
        return f"stale window: it ended {_dur(age)} before the check was recorded (more than {_dur(limit)})"
    return None


def cause_of(event: Event, trigger: str, **extra: Any) -> dict[str, Any]:
    """What a retrain records as its cause: the trigger and the triggering event (``seq``,
    ``kind``, ``subject``, ``at``), the form the lineage graph reads."""
    return {"trigger": trigger, "seq": event.seq, "kind": event.kind, "subject": event.subject, "at": event.ts, **extra}

