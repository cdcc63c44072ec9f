"""Retraining executors: start a retrain through the training queue, validate its result, and
a follower of the registry's event log that turns triggers into retrains and alarms.

The decisions are pure and live in :mod:`mlplat.monitoring.retrain` (policy, ``decide_retrain``),
:mod:`mlplat.monitoring.retrain_requests` (requests) and :mod:`mlplat.monitoring.alarms`; this
module applies them, because starting a run needs :mod:`mlplat.training` and judging it needs
:mod:`mlplat.validation`. What comes after a retrain run (:func:`finish_retrain`,
:func:`fail_stale_validation`, :func:`is_retrain_run`) is :mod:`mlplat.lifecycle.retrain_finish`,
re-exported here.

A retrain is a new run of the model with the request of its last SUCCEEDED run, on the
latest data:

1. **Features.** The config's feature set is rebuilt from its stored spec when its latest ready
   version does not hold every eligible row (complete partitions of the source dataset's latest
   ready version, from the spec's ``partitions.start`` on). The rebuild reads exactly those
   partitions and pins the dataset version and the partition range it read in the new
   feature-set version's spec. It is a Ray Data job: Ray must be initialized (a driver, a job,
   or an actor) -- the one step here that needs Ray besides validation.
2. **Version and run.** The version is registered first (REGISTERED, as ``publish`` does) with
   its lineage and ``extra.retrain`` (cause, request, base run, feature set, new rows), then the
   run is queued with ``request["cause"]`` and ``request["retrain"]``: both records say what
   caused it. The scheduler actor claims it like any other run; ``wake`` (e.g.
   ``lambda: ensure_scheduler(config)``) makes sure one runs.
3. **Validation.** When the run SUCCEEDED, :func:`finish_retrain` validates the version with the
   model's validation policy (Ray Data batch inference). A VALIDATED version is then deployed
   by the rollout controller when the model's rollout is ``auto`` -- nothing else to call.

Events (subject ``model:<name>``): ``retrain_started``, ``retrain_failed`` (stage ``prepare``,
``training`` or ``validation``), ``retrain_validated``, ``retrain_skipped`` (an event trigger
the policy declined, or a ``drift_checked`` out of scope), the request events, and ``alarm_raised``.

Idempotency: a retrain is keyed by its cause -- the request, else the triggering event's
``seq``, else (``schedule``) the model and the due time -- so a replay after a crash between
registering the version and queueing the run finds the same version and queues its run.

A retrained version left VALIDATING for more than
:data:`~mlplat.monitoring.retrain.VALIDATING_TIMEOUT_S` (the process validating it died, e.g. a
controller restart) is given up: ``retrain_failed`` (stage ``validation``, so the
``retrain_failed`` alarm) and the version REJECTED. :func:`finish_retrain` does that on a
replayed run event, and :meth:`RetrainController.on_schedule` sweeps for such versions.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlplat.config import PlatformConfig
from mlplat.errors import AlreadyExists, ConfigError, MlplatError, NotFound
from mlplat.lifecycle.retrain_finish import Validate, fail_stale_validation, finish_retrain, is_retrain_run
from mlplat.monitoring.alarms import AlarmPolicy, WebhookSender, raise_alarm
from mlplat.monitoring.retrain import (
    MANUAL_ONLY,
    DataStatus,
    RetrainDecision,
    RetrainPolicy,
    cause_of,
    data_status,
    decide_retrain,
    drift_scope_problem,
    drift_verdict,
    retrain_status,
    serving_versions,
    source_datasets,
)
from mlplat.monitoring.retrain_requests import (
    EVENT_FAILED,
    EVENT_REQUESTED,
    EVENT_SKIPPED,
    EVENT_STARTED,
    EVENT_VALIDATED,
    RetrainRequest,
    approve,
    record_failed,
    record_started,
    request_retrain,
)
from mlplat.records import EVENT_PARTITION_COMPLETED, Event, FeatureSetVersion, ModelState, Run, RunState
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = [
    "CURSOR",
    "FOLLOWED_KINDS",
    "RetrainController",
    "RetrainOutcome",
    "base_run",
    "rebuild_features",
    "start_retrain",
    "approve_and_start",
    "handle_trigger",
    "finish_retrain",
    "fail_stale_validation",
    "is_retrain_run",
    "driver_hooks",
]

log = logging.getLogger("mlplat.lifecycle.retrain")

#: The registry cursor of :class:`RetrainController`.
CURSOR = "retrain-controller"
#: The event kinds :meth:`RetrainController.on_event` acts on.
FOLLOWED_KINDS: tuple[str, ...] = ("drift_checked", EVENT_PARTITION_COMPLETED, "run_succeeded", "run_failed",
                                   "run_cancelled", EVENT_REQUESTED, EVENT_STARTED, EVENT_FAILED, EVENT_VALIDATED)

#: The follower moves its cursor past this many events of other kinds at once.
SKIP_AHEAD = 1000

BuildFeatures = Callable[[Registry, Storage, DataStatus], FeatureSetVersion]


# -- start ------------------------------------------------------------------------------------


def base_run(registry: Registry, name: str) -> Run:
    """The model's newest SUCCEEDED run that carries a training config: what a retrain repeats."""
    for run in registry.list_runs(model=name, state=RunState.SUCCEEDED, limit=100):
        if isinstance(run.request.get("config"), Mapping):
            return run
    raise NotFound(f"model {name!r} has no successful training run to retrain from; train it once "
                   "(`mlplat train --config ...`) first")


def rebuild_features(registry: Registry, storage: Storage, status: DataStatus) -> FeatureSetVersion:
    """A new version of the feature set ``status.latest`` built from its spec over the eligible
    rows of ``status.dataset`` (complete partitions from ``partitions.start`` on). Ray Data."""
    from mlplat.data.catalog import read_dataset
    from mlplat.features.build import materialize, parse_spec
    from mlplat.records import PartitionRange

    spec = parse_spec(status.latest.spec)
    dv = status.dataset
    rng = spec.partitions
    update: dict[str, Any] = {"source": spec.source.model_copy(update={"dataset": dv.name, "version": dv.version})}
    start = end = key = None
    if dv.partition_keys:
        key = rng.key if rng is not None else dv.partition_keys[0]
        start = rng.start if rng is not None else None
        complete = tuple(p for p in dv.partitions if p.complete and (start is None or p.values.get(key, "") >= start))
        if not complete:
            raise NotFound(f"dataset {dv.name!r} v{dv.version} has no complete partition"
                           f"{f' from {key}={start} on' if start else ''}; mark finished ones with `mlplat data complete`")
        end = max(p.values.get(key, "") for p in complete)
        dv = dv.model_copy(update={"partitions": complete})
        update["partitions"] = PartitionRange(key=key, start=start, end=end)
    spec = spec.model_copy(update=update)
    ds = read_dataset(storage, dv, start=start, end=end, key=key)
    log.info("retrain: rebuilding feature set %s from %s v%d (%s..%s)", spec.name, dv.name, dv.version, start, end)
    fsv: FeatureSetVersion = materialize(storage, registry, spec, status.dataset, ds)
    return fsv


def _cause_key(cause: Mapping[str, Any], request_id: int | None) -> str:
    """The idempotency key of a retrain's records: its request, its triggering event, or (a
    schedule) its due time rounded to the second; a person's start without any: random."""
    if request_id is not None:
        return f"request:{request_id}"
    if cause.get("seq") is not None:
        return f"{cause.get('trigger')}:{cause['seq']}"
    if cause.get("trigger") == "schedule" and isinstance(cause.get("due"), (int, float)):
        return f"schedule:due:{round(float(cause['due']))}"
    return f"{cause.get('trigger', 'manual')}:{uuid.uuid4().hex[:12]}"


def start_retrain(registry: Registry, storage: Storage, name: str, *, cause: Mapping[str, Any],
                  request_id: int | None = None, build_features: BuildFeatures | None = None,
                  wake: Callable[[], Any] | None = None, priority: int = 0) -> Run:
    """Queue a retrain of ``name`` caused by ``cause`` (``{"trigger", "seq", "kind", ...}``);
    returns the QUEUED run. Rebuilds the feature set first when needed (``build_features``,
    default :func:`rebuild_features`: Ray Data). Writes ``retrain_started``. Raises
    NotFound/ConfigError when there is nothing to retrain from; the caller records that
    (:func:`handle_trigger` does)."""
    from mlplat.training.config import config_hash, parse_training_config
    from mlplat.training.inputs import resolve_training_data
    from mlplat.training.runner import new_run_id

    base = base_run(registry, name)
    cfg = parse_training_config(base.request["config"], source=f"the request of run {base.run_id}")
    if cfg.model != name:
        raise ConfigError(f"run {base.run_id} trains model {cfg.model!r}, not {name!r}")
    status = data_status(registry, name, cfg.feature_set.name)
    fsv, rebuilt = status.latest, False
    if not status.latest_covers:
        fsv, rebuilt = (build_features or rebuild_features)(registry, storage, status), True
    cfg = cfg.model_copy(update={"feature_set": cfg.feature_set.model_copy(update={"version": fsv.version})})
    data = resolve_training_data(registry, storage, fsv.name, fsv.version, cfg.label)  # label, columns: fail early
    retrain = {"cause": dict(cause), "request_id": request_id, "base_run": base.run_id,
               "feature_set": data.feature_set.model_dump(), "rebuilt_features": rebuilt, "new_rows": status.new_rows}
    key = _cause_key(cause, request_id)
    mv = registry.register_version(
        name, config_hash=config_hash(cfg), code_version=cfg.code_version,
        datasets=[d.model_dump() for d in data.datasets], feature_set=data.feature_set.model_dump(),
        run_id=new_run_id(name), extra={"config": cfg.model_dump(mode="json"), "retrain": retrain},
        idempotency_key=f"retrain-register:{name}:{key}")
    run_id = mv.run_id or new_run_id(name)
    config = mv.extra.get("config") or cfg.model_dump(mode="json")  # a replay trains what was registered
    request = {"config": config, "version": mv.version, "cause": dict(cause),
               "retrain": {"request_id": request_id, "base_run": base.run_id}}
    try:
        run = registry.enqueue_run(run_id, kind=base.kind, model=name, request=request, version=mv.version,
                                   priority=priority, idempotency_key=f"enqueue:{run_id}")
    except AlreadyExists:
        run = registry.get_run(run_id)
    except Exception as exc:
        _fail_registered(registry, name, mv.version, f"retrain not queued: {type(exc).__name__}: {exc}")
        raise
    record_started(registry, name, run, cause=cause, request_id=request_id,
                   extra={"base_run": base.run_id, "feature_set": retrain["feature_set"], "rebuilt_features": rebuilt,
                          "new_rows": status.new_rows})
    log.info("retrain of %s queued: run %s, version %d (%s)", name, run.run_id, mv.version, cause.get("trigger"))
    if wake is not None:
        try:
            wake()
        except Exception as exc:  # the run is queued; any scheduler that starts later picks it up
            log.warning("retrain of %s: waking the scheduler failed (%s); run %s stays queued", name, exc, run.run_id)
    return run


def _fail_registered(registry: Registry, name: str, version: int, error: str) -> None:
    try:
        registry.transition(name, version, ModelState.TRAINING, expected_state=ModelState.REGISTERED)
        registry.transition(name, version, ModelState.FAILED, expected_state=ModelState.TRAINING, error=error[:2000])
    except MlplatError:
        log.warning("retrain: could not mark %s v%d FAILED after: %s", name, version, error)


def approve_and_start(registry: Registry, storage: Storage, name: str, *, request_id: int | None = None, by: str,
                      note: str = "", build_features: BuildFeatures | None = None,
                      wake: Callable[[], Any] | None = None) -> tuple[RetrainRequest, Run]:
    """Approve a pending request (``retrain_approved``) and start its retrain. A start that
    fails records ``retrain_failed`` on the request and raises."""
    req = approve(registry, name, request_id=request_id, by=by, note=note)
    cause = {"trigger": req.trigger, **req.cause, "request_id": req.id, "approved_by": by}
    try:
        run = start_retrain(registry, storage, name, cause=cause, request_id=req.id, build_features=build_features,
                            wake=wake)
    except Exception as exc:
        record_failed(registry, name, stage="prepare", error=f"{type(exc).__name__}: {exc}", cause=cause,
                      request_id=req.id, idempotency_key=f"retrain-failed:request:{name}:{req.id}")
        raise
    return req.model_copy(update={"status": "started", "run_id": run.run_id, "version": run.version}), run


# -- decide and apply -------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainOutcome:
    """What :func:`handle_trigger` did: the decision, and the run or request it made."""

    name: str
    trigger: str
    decision: RetrainDecision
    run: Run | None = None
    request: RetrainRequest | None = None
    error: str | None = None

    def __str__(self) -> str:
        what: str = self.decision.action
        if self.run is not None:
            what += f" run {self.run.run_id} (v{self.run.version})"
        if self.request is not None:
            what += f" request {self.request.id}"
        if self.error:
            what += f" failed: {self.error}"
        return f"{self.name} [{self.trigger}]: {what} -- {self.decision.reason}"


def handle_trigger(registry: Registry, storage: Storage, name: str, trigger: str, cause: Mapping[str, Any], *,
                   now: float | None = None, by: str = "retrain-controller", build_features: BuildFeatures | None = None,
                   wake: Callable[[], Any] | None = None, record_skips: bool | None = None) -> RetrainOutcome:
    """Decide (:func:`decide_retrain`) and apply: start a retrain, record a request, or skip.

    Reads the model's ``serving_policy.retrain`` (a bad policy is a skip whose reason is the
    ConfigError; ``manual`` works without a policy), its runs and requests, and -- only when
    nothing else already decided -- the new rows. A start that fails is recorded as
    ``retrain_failed`` (stage ``prepare``) and returned with ``error``, never raised.
    ``record_skips`` (default: for ``drift`` and ``partition_completed``) writes a
    ``retrain_skipped`` event when a trigger the policy lists is declined.
    """
    now = time.time() if now is None else now
    skips = trigger in ("drift", "partition_completed") if record_skips is None else record_skips
    key = _cause_key(cause, None)
    try:
        policy = RetrainPolicy.from_serving_policy(registry.get_model(name).serving_policy)
    except ConfigError as exc:
        decision = RetrainDecision("skip", f"bad retrain policy: {exc}")
        if skips:
            _record_skip(registry, name, trigger, decision, cause, key)
        return RetrainOutcome(name, trigger, decision)
    if trigger == "manual" and policy is None:
        policy = MANUAL_ONLY
    status = retrain_status(registry, name, now=now)
    if (trigger == "schedule" and cause.get("seq") is None and policy is not None and policy.schedule_s
            and status.last_retrain_at is not None):
        # keyed by the due time: the next tick after a crash mid-start finds the same version
        cause = {**cause, "due": round(status.last_retrain_at + float(policy.schedule_s))}
        key = _cause_key(cause, None)

    def decide(rows: int | None) -> RetrainDecision:
        return decide_retrain(trigger, policy, now=now, last_retrain_at=status.last_retrain_at, new_rows=rows,
                              pending_request=status.pending, in_flight=status.in_flight)

    decision = decide(sys.maxsize)  # every check but the row count, which is the last one
    if decision.action != "skip" and trigger != "manual":
        try:
            rows: int | None = data_status(registry, name).new_rows
        except NotFound:
            rows = None
        decision = decide(rows)
    listed = policy is not None and trigger in policy.triggers
    if decision.action == "skip":
        if skips and listed:
            _record_skip(registry, name, trigger, decision, cause, key)
        return RetrainOutcome(name, trigger, decision)
    if decision.action == "request":
        req = request_retrain(registry, name, trigger=trigger, cause=cause, by=by, reason=decision.reason,
                              idempotency_key=f"retrain-request:{name}:{key}")
        return RetrainOutcome(name, trigger, decision, request=req)
    try:
        run = start_retrain(registry, storage, name, cause=cause, build_features=build_features, wake=wake)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("retrain of %s (%s) not started: %s", name, trigger, error)
        record_failed(registry, name, stage="prepare", error=error, cause=cause,
                      idempotency_key=f"retrain-failed:{name}:{key}")
        return RetrainOutcome(name, trigger, decision, error=error)
    return RetrainOutcome(name, trigger, decision, run=run)


def _record_skip(registry: Registry, name: str, trigger: str, decision: RetrainDecision, cause: Mapping[str, Any],
                 key: str) -> None:
    registry.append_event(EVENT_SKIPPED, f"model:{name}", {"trigger": trigger, "reason": decision.reason,
                                                          "cause": dict(cause)},
                          idempotency_key=f"retrain-skipped:{name}:{key}")


# -- for drivers ------------------------------------------------------------------------------


def driver_hooks(ensure_ray: Callable[[], Any], config: PlatformConfig) -> tuple[BuildFeatures, Callable[[], Any]]:
    """``(build_features, wake)`` for a driver (CLI, job) that connects to Ray only when a step
    needs it: the feature rebuild (Ray Data) and waking the training scheduler actor."""

    def build(registry: Registry, storage: Storage, status: DataStatus) -> FeatureSetVersion:
        ensure_ray()
        return rebuild_features(registry, storage, status)

    def wake() -> Any:
        from mlplat.training.queue import ensure_scheduler

        ensure_ray()
        return ensure_scheduler(config)

    return build, wake


# -- the follower -----------------------------------------------------------------------------


class RetrainController:
    """Follows the registry's event log (its own cursor, :data:`CURSOR`) and runs the schedule.

    - ``drift_checked`` with drift of the model's production or canary version over a recent
      window (:func:`~mlplat.monitoring.retrain.drift_scope_problem`): the ``drift`` alarm, then
      the ``drift`` trigger; any other drift check raises nothing (a ``retrain_skipped`` with the
      reason when the retrain policy lists ``drift``);
    - ``partition_completed`` of a ``facts`` dataset: the ``partition_completed`` trigger for
      every model whose retrain policy lists it and whose newest version was trained from it;
    - ``run_succeeded`` / ``run_failed`` / ``run_cancelled`` of a retrain run: :func:`finish_retrain`;
    - ``retrain_requested`` / ``retrain_started`` / ``retrain_failed`` and a ``retrain_validated``
      that did not pass: the alarms of those kinds;
    - each :meth:`tick`, at most every ``schedule_every_s``: the ``schedule`` trigger of each
      model whose policy lists it, and :func:`fail_stale_validation` of every retrained version
      VALIDATING for too long.

    Starting (a feature rebuild) and validating are Ray Data jobs of seconds to minutes: call
    :meth:`tick` from a thread of its own (never the one that judges canaries). A first start
    begins at the end of the log. An event whose handling raises is retried on the next tick, up
    to ``max_attempts`` times, then skipped (logged).
    """

    def __init__(self, registry: Registry, storage: Storage, *, sender: WebhookSender | None = None,
                 wake: Callable[[], Any] | None = None, build_features: BuildFeatures | None = None,
                 validate_fn: Validate | None = None, clock: Callable[[], float] = time.time,
                 schedule_every_s: float = 60.0, cursor: str = CURSOR, max_attempts: int = 3):
        self.registry, self.storage, self.sender = registry, storage, sender
        self._wake, self._build, self._validate, self._clock = wake, build_features, validate_fn, clock
        self._schedule_every_s, self._cursor, self._max_attempts = schedule_every_s, cursor, max_attempts
        self._next_schedule = 0.0
        self._attempts: dict[int, int] = {}
        self.last: list[str] = []
        #: The log's last seq as the latest :meth:`tick` read it before its last read of the
        #: events (None before the first): a caller may wait for events past it.
        self.seen_seq: int | None = None

    def idle_s(self, cap_s: float) -> float:
        """How long the caller may wait for the next event before the next :meth:`tick`: 0 while
        a failed event awaits its retry, else until the schedule is next due, at most ``cap_s``."""
        if self._attempts:
            return 0.0
        return max(0.0, min(cap_s, self._next_schedule - self._clock()))

    def tick(self) -> list[str]:
        """Handle new events, then the schedule when due; returns what was done, in words."""
        done: list[str] = []
        registry = self.registry
        self.seen_seq = None
        cursor = registry.get_cursor(self._cursor)
        if cursor is None:
            cursor = registry.set_cursor(self._cursor, registry.last_seq())
        while True:
            head = registry.last_seq()  # read first: every event up to it is visible to the query below
            self.seen_seq = head
            events = registry.events_since(cursor, kinds=list(FOLLOWED_KINDS), limit=200)
            if not events:
                if head - cursor >= SKIP_AHEAD:  # only other kinds since: move on, so the scan stays short
                    cursor = registry.set_cursor(self._cursor, head)
                break
            for event in events:
                try:
                    what = self.on_event(event)
                except Exception as exc:
                    n = self._attempts[event.seq] = self._attempts.get(event.seq, 0) + 1
                    if n < self._max_attempts:
                        log.warning("retrain controller: event %d (%s) failed (attempt %d), retried next tick: %s",
                                    event.seq, event.kind, n, exc)
                        self.last = done
                        return done
                    log.error("retrain controller: event %d (%s) skipped after %d attempts: %s",
                              event.seq, event.kind, n, exc)
                    what = f"event {event.seq} skipped: {type(exc).__name__}: {exc}"
                self._attempts.pop(event.seq, None)
                if what:
                    done.append(what)
                cursor = registry.set_cursor(self._cursor, event.seq)
        now = self._clock()
        if now >= self._next_schedule:
            self._next_schedule = now + self._schedule_every_s
            done += self.on_schedule(now)
        self.last = done
        return done

    # -- events ------------------------------------------------------------------------------
    def on_event(self, event: Event) -> str | None:
        """Act on one event (any kind; others are ignored). Returns what was done, or None."""
        handler = {
            "drift_checked": self._on_drift,
            EVENT_PARTITION_COMPLETED: self._on_partition,
            "run_succeeded": self._on_run, "run_failed": self._on_run, "run_cancelled": self._on_run,
            EVENT_REQUESTED: self._on_retrain_event, EVENT_STARTED: self._on_retrain_event,
            EVENT_FAILED: self._on_retrain_event, EVENT_VALIDATED: self._on_retrain_event,
        }.get(event.kind)
        return handler(event) if handler is not None else None

    def _alarm(self, name: str, kind: str, details: Mapping[str, Any], event: Event) -> str | None:
        """Raise the alarm when the model's ``serving_policy.alarms.on`` lists ``kind`` (a bad
        alarm policy still raises it: the event then says what is wrong)."""
        policy: AlarmPolicy | None
        try:
            policy = AlarmPolicy.from_serving_policy(self.registry.get_model(name).serving_policy)
        except ConfigError:
            policy = None
        except NotFound:
            return None
        if policy is not None and not policy.notifies(kind):
            return None
        alarm = raise_alarm(self.registry, self.sender, name, kind, details, policy=policy, version=event.version,
                            idempotency_key=f"alarm:{event.seq}")
        return f"{name}: alarm {kind} (event {alarm.seq})"

    def _handle(self, name: str, trigger: str, cause: Mapping[str, Any]) -> str:
        out = handle_trigger(self.registry, self.storage, name, trigger, cause, now=self._clock(),
                             build_features=self._build, wake=self._wake)
        return str(out)

    def _on_drift(self, event: Event) -> str | None:
        if not event.subject.startswith("model:"):
            return None
        drifted, features = drift_verdict(event.payload)
        if not drifted:
            return None
        name = event.subject.removeprefix("model:")
        try:
            problem = drift_scope_problem(event, serving_versions(self.registry, name))
        except NotFound:  # the model is gone
            return None
        if problem is not None:
            return self._drift_out_of_scope(name, event, features, problem)
        details = {"drifted_features": features, "cause": {"seq": event.seq, "kind": event.kind}}
        for key in ("window", "rows", "status", "prediction_drifted", "report", "report_path", "reasons"):
            if key in event.payload:
                details[key] = event.payload[key]
        done = [self._alarm(name, "drift", details, event),
                self._handle(name, "drift", cause_of(event, "drift", drifted_features=features))]
        return "; ".join(d for d in done if d)

    def _drift_out_of_scope(self, name: str, event: Event, features: list[str], problem: str) -> str:
        """No alarm, no retrain; a ``retrain_skipped`` saying why when the policy lists drift."""
        try:
            policy = RetrainPolicy.from_serving_policy(self.registry.get_model(name).serving_policy)
        except (ConfigError, NotFound):
            policy = None
        decision = RetrainDecision("skip", f"drift: not acted on: {problem}")
        if policy is not None and "drift" in policy.triggers:
            cause = cause_of(event, "drift", drifted_features=features)
            _record_skip(self.registry, name, "drift", decision, cause, _cause_key(cause, None))
        return f"{name} [drift]: skip -- {decision.reason}"

    def _on_partition(self, event: Event) -> str | None:
        if event.payload.get("kind", "facts") != "facts" or not event.subject.startswith("dataset:"):
            return None
        dataset = event.subject.removeprefix("dataset:")
        done = []
        for info in self.registry.list_models():
            try:
                policy = RetrainPolicy.from_serving_policy(info.serving_policy)
            except ConfigError:
                continue
            if policy is None or "partition_completed" not in policy.triggers:
                continue
            if dataset not in source_datasets(self.registry, info.name):
                continue
            done.append(self._handle(info.name, "partition_completed", cause_of(
                event, "partition_completed", dataset=dataset, partition=event.payload.get("partition"))))
        return "; ".join(done) or None

    def _on_run(self, event: Event) -> str | None:
        run_id = event.payload.get("run_id")
        if not isinstance(run_id, str):
            return None
        try:
            run = self.registry.get_run(run_id)
        except NotFound:
            return None
        if not is_retrain_run(run):
            return None
        return finish_retrain(self.registry, self.storage, run_id, validate_fn=self._validate, now=self._clock())

    def _on_retrain_event(self, event: Event) -> str | None:
        name = event.subject.removeprefix("model:")
        p = event.payload
        cause = {"seq": event.seq, "kind": event.kind}
        if event.kind == EVENT_REQUESTED:
            details = {"request_id": event.seq, "trigger": p.get("trigger"), "reason": p.get("reason"), "cause": cause,
                       "approve": f"mlplat retrain approve {name} --request {event.seq}",
                       "dismiss": f"mlplat retrain dismiss {name} --request {event.seq}"}
            return self._alarm(name, "retrain_requested", details, event)
        if event.kind == EVENT_STARTED:
            return self._alarm(name, "retrain_started", {"run_id": p.get("run_id"), "version": p.get("version"),
                                                         "trigger": p.get("trigger"), "cause": cause}, event)
        if event.kind == EVENT_FAILED:
            return self._alarm(name, "retrain_failed", {"stage": p.get("stage"), "error": p.get("error"),
                                                        "run_id": p.get("run_id"), "cause": cause}, event)
        if event.kind == EVENT_VALIDATED and not p.get("passed"):
            return self._alarm(name, "retrain_rejected", {"version": p.get("version"), "run_id": p.get("run_id"),
                                                          "reasons": p.get("reasons"), "report": p.get("report"),
                                                          "cause": cause}, event)
        return None

    # -- the schedule ------------------------------------------------------------------------
    def on_schedule(self, now: float | None = None) -> list[str]:
        """The ``schedule`` trigger of every model whose policy lists it (decided per model:
        not due, cooldown, rows...), after giving up retrained versions VALIDATING for too
        long (:func:`fail_stale_validation`). Returns what started, was requested or given up."""
        now = self._clock() if now is None else now
        done = []
        for mv in self.registry.find_versions(state=ModelState.VALIDATING):
            try:
                what = fail_stale_validation(self.registry, mv, now=now)
            except MlplatError as exc:  # the next sweep tries again
                log.warning("retrain controller: %s v%d: stale validation not recorded: %s", mv.name, mv.version, exc)
                continue
            if what:
                done.append(what)
        for info in self.registry.list_models():
            try:
                policy = RetrainPolicy.from_serving_policy(info.serving_policy)
            except ConfigError:
                continue
            if policy is None or "schedule" not in policy.triggers:
                continue
            out = handle_trigger(self.registry, self.storage, info.name, "schedule", {"trigger": "schedule", "at": now},
                                 now=now, build_features=self._build, wake=self._wake)
            if out.decision.action != "skip":
                done.append(str(out))
        return done
