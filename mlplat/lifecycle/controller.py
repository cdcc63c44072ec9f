"""The rollout controller: a detached actor that follows the registry's event log and moves
versions toward serving by each model's rollout policy.

- A version reaching VALIDATED whose model says ``rollout: auto`` is deployed: pre-warm, then a
  canary of ``canary_percent`` (or straight to production when it is 0). ``manual`` models wait
  for ``mlplat deploy``.
- Every running canary of an ``auto`` model is judged each tick by :func:`decide_canary` from
  the ingress replicas' live stats: promote, hold, or roll back (the version is REJECTED).

What it applied is stored in the registry (the ``rollout-controller`` cursor), so a restarted
controller resumes after the last event it handled; a first start begins at the end of the log
(history is not replayed). Each step is a registry event: ``deployment_started``,
``canary_started``, ``promoted``, ``canary_rolled_back``, ``deployment_failed``.

While nothing is in flight (no active deployment, no event awaiting a retry, no schedule due)
each of its two loops waits in the registry actor's event log for an event it acts on
(:func:`wait_for_log`, a long poll that such an event written through the registry ends at once)
instead of ticking every ``poll_s``: an idle platform's controller then makes about one registry
call every three seconds instead of six a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlplat.config import PlatformConfig
from mlplat.lifecycle.deploy import CanaryStatsFollower, NoServingApp, deploy, reconcile_prewarm
from mlplat.lifecycle.policy import RolloutPolicy, decide_canary
from mlplat.records import DeploymentState, Event, ModelState
from mlplat.registry import Registry

__all__ = ["RolloutController", "auto_deploys", "ensure_controller", "wait_for_log", "CONTROLLER_NAME", "CURSOR",
           "IDLE_WAIT_S", "WAKING_KINDS"]

log = logging.getLogger("mlplat.lifecycle")
CONTROLLER_NAME = "mlplat-rollout-controller"
CURSOR = "rollout-controller"
#: The longest an idle controller loop waits in the registry's event log before it ticks anyway.
IDLE_WAIT_S = 30.0
#: The events that give an idle rollout loop work: a version reaching VALIDATED (an auto deploy)
#: and a deployment started (a pre-warm to finish, a canary to judge).
WAKING_KINDS = ("state_changed", "deployment_started")


@dataclass(frozen=True)
class AutoDeploy:
    name: str
    version: int
    canary_percent: float
    seq: int


def auto_deploys(events: Iterable[Event], policies: Mapping[str, RolloutPolicy]) -> list[AutoDeploy]:
    """The deployments the controller starts for these events: each move to VALIDATED of a model
    whose policy is ``auto`` (and that needs no human approval first).

    >>> e = Event(seq=5, ts=0, kind="state_changed", subject="model:churn", version=3, payload={"to": "VALIDATED"})
    >>> auto_deploys([e], {"churn": RolloutPolicy(mode="auto", canary_percent=20)})
    [AutoDeploy(name='churn', version=3, canary_percent=20.0, seq=5)]
    >>> auto_deploys([e], {"churn": RolloutPolicy(mode="manual")})
    []
    """
    out = []
    for event in events:
        if event.kind != "state_changed" or event.payload.get("to") != ModelState.VALIDATED.value or event.version is None:
            continue
        if event.payload.get("approval") == "PENDING":
            continue
        name = event.subject.removeprefix("model:")
        policy = policies.get(name)
        if policy is not None and policy.mode == "auto":
            out.append(AutoDeploy(name, event.version, policy.canary_percent, event.seq))
    return out


def wait_for_log(registry: Any, seen_seq: int | None, timeout_s: float, *, poll_s: float, kinds: list[str],
                 tick_started: float | None = None, sleep: Callable[[float], Any] = time.sleep) -> str:
    """Return when the registry's event log has an event of ``kinds`` past ``seen_seq``, or
    after ``timeout_s``: a long poll in the registry actor (``wait_events``; a write through the
    actor ends it at once, one by another process to the database shows within ``poll_s``), and
    then no sooner than ``poll_s`` after ``tick_started`` (``time.monotonic()``): a stream of
    events costs a tick per ``poll_s``, as before, not one per event. ``sleep(poll_s)`` instead
    -- the plain tick -- with no ``seen_seq`` (after an error, or while work is in flight), a
    ``timeout_s`` no longer than ``poll_s``, a registry that cannot wait (in-process), or a wait
    that failed. Returns which it did.

    >>> class Reader:
    ...     def wait_events(self, seq, **kw): calls.append((seq, kw["kinds"], kw["timeout_s"])); return []
    >>> calls, slept = [], []
    >>> wait_for_log(Reader(), 7, 10.0, poll_s=1.0, kinds=["state_changed"], sleep=slept.append), calls, slept
    ('waited', [(7, ['state_changed'], 10.0)], [])
    >>> wait_for_log(Reader(), 7, 10.0, poll_s=1.0, kinds=[], tick_started=time.monotonic() + 0.5, sleep=slept.append)
    'waited'
    >>> 1.0 < slept.pop() <= 1.5  # an event right after the tick: the rest of poll_s first
    True
    >>> wait_for_log(Reader(), None, 10.0, poll_s=1.0, kinds=[], sleep=slept.append), wait_for_log(object(), 7, 10.0,
    ...     poll_s=1.0, kinds=[], sleep=slept.append), wait_for_log(Reader(), 7, 0.5, poll_s=1.0, kinds=[],
    ...     sleep=slept.append), slept
    ('slept', 'slept', 'slept', [1.0, 1.0, 1.0])
    """
    wait = getattr(registry, "wait_events", None)
    if seen_seq is None or wait is None or timeout_s <= poll_s:
        sleep(poll_s)
        return "slept"
    try:
        wait(seen_seq, limit=1, kinds=kinds, timeout_s=timeout_s, poll_s=poll_s)
    except Exception as exc:  # the registry is restarting: tick again after the usual pause
        log.debug("waiting in the registry's event log failed: %s", exc)
        sleep(poll_s)
        return "slept"
    if tick_started is not None and (rest := tick_started + poll_s - time.monotonic()) > 0:
        sleep(rest)
    return "waited"


class RolloutController:
    """``background=False``: no thread; call :meth:`tick` yourself (tests)."""

    def __init__(self, config: PlatformConfig, *, poll_s: float = 1.0, registry_actor: str | None = None,
                 registry_factory: Callable[[], Registry] | None = None,
                 replica_counts: Callable[[], Mapping[str, Mapping[str, int]]] | None = None,
                 background: bool = True):
        from mlplat.registry import connect_actor

        self._config, self._poll_s = config, poll_s
        self._registry_factory = registry_factory or (lambda: connect_actor(config, actor_name=registry_actor))
        self._replica_counts = replica_counts
        self._registry: Registry | None = None
        self._ticks = 0
        self._in_flight = True  # until a tick has seen no active deployment
        self._last_error: str | None = None
        self._decisions: dict[str, dict[str, Any]] = {}
        self._stats = CanaryStatsFollower()
        self._wake = threading.Event()
        #: The closed loop (drift alarms, retrain triggers, validating retrained versions) runs on a
        #: thread of its own: a feature rebuild or a validation takes seconds to minutes.
        self._retrain: Any = None
        self._sender: Any = None
        self._retrain_error: str | None = None
        if background:
            threading.Thread(target=self._loop, daemon=True, name="rollout-controller").start()
            threading.Thread(target=self._retrain_loop, daemon=True, name="retrain-controller").start()

    def status(self) -> dict[str, Any]:
        cursor = self._registry.get_cursor(CURSOR) if self._registry is not None else None
        retrain = None if self._retrain is None else {"last": list(self._retrain.last)[-20:], "error": self._retrain_error,
                                                       "webhooks": self._sender.stats() if self._sender else None}
        return {"ticks": self._ticks, "cursor": cursor, "last_error": self._last_error, "in_flight": self._in_flight,
                "canaries": dict(self._decisions), "retrain": retrain}

    def _retrain_loop(self) -> None:
        from mlplat.lifecycle.retrain import FOLLOWED_KINDS, RetrainController
        from mlplat.monitoring.alarms import WebhookSender
        from mlplat.storage import open_root
        from mlplat.training.queue import ensure_scheduler

        config = self._config
        self._sender = WebhookSender()  # once: a retry below must not leave worker threads behind
        while self._retrain is None:
            try:
                self._retrain = RetrainController(self._registry_factory(), open_root(config.root, config.s3),
                                                  sender=self._sender, wake=lambda: ensure_scheduler(config))
            except Exception as exc:  # the registry is not up yet: try again
                self._retrain_error = f"{type(exc).__name__}: {exc}"
                time.sleep(max(1.0, self._poll_s))
        retrain = self._retrain
        while True:
            seen: int | None = None  # after a tick that raised: the plain poll_s pause
            started = time.monotonic()
            try:
                retrain.tick()
                seen = retrain.seen_seq  # the log's end as the tick read it: a later event ends the wait
                self._retrain_error = None
            except Exception as exc:  # keep following; visible in status()
                self._retrain_error = f"{type(exc).__name__}: {exc}"
                log.warning("retrain controller tick failed: %s", self._retrain_error)
            wait_for_log(retrain.registry, seen, retrain.idle_s(IDLE_WAIT_S), poll_s=self._poll_s,
                         kinds=list(FOLLOWED_KINDS), tick_started=started)

    def wake(self) -> bool:
        """Ends the pause between ticks; a loop waiting in the registry's log wakes at its next write."""
        self._wake.set()
        return True

    def _connected(self) -> Registry:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _loop(self) -> None:
        while True:
            seen: int | None = None
            started = time.monotonic()
            try:
                if not self._in_flight:  # only an idle loop waits for events past it (read first)
                    seen = self._connected().last_seq()
                self.tick()
                self._last_error = None
            except Exception as exc:  # keep following; the error is visible in status()
                seen = None
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("rollout controller tick failed: %s", self._last_error)
            self._ticks += 1
            wait_for_log(self._registry, None if self._in_flight else seen, IDLE_WAIT_S, poll_s=self._poll_s,
                         kinds=list(WAKING_KINDS), tick_started=started, sleep=self._pause)

    def tick(self) -> dict[str, Any]:
        """Apply new events (auto deploys), finish pre-warms whose deployer died, then judge
        running canaries; returns what it did."""
        registry = self._connected()
        done: dict[str, Any] = {"deployed": [], "judged": {}, "reconciled": []}
        self._follow_events(registry, done)
        active = registry.list_deployments(active=True, limit=500)
        self._in_flight = bool(active)  # pre-warms to finish, canaries to judge: tick every poll_s
        for stale in set(self._decisions) - {d.id for d in active}:
            self._decisions.pop(stale)
        self._stats.keep_only({d.id for d in active})
        for deployment in active:
            if deployment.state == DeploymentState.PREWARMING:
                finished = reconcile_prewarm(registry, deployment)
                if finished is not None:
                    done["reconciled"].append(f"{deployment.id}: {finished.state.value}")
                continue
            policy = self._policies(registry, {deployment.name}).get(deployment.name)
            if policy is None or policy.mode != "auto":
                continue
            canary, production = self._stats.read(registry, deployment)
            decision = decide_canary(canary, production, policy.canary)
            self._decisions[deployment.id] = {"name": deployment.name, "version": deployment.version,
                                              "action": decision.action, "reasons": list(decision.reasons),
                                              "canary_requests": canary.requests, "at": time.time()}
            done["judged"][deployment.id] = decision.action
            if decision.action != "hold":
                registry.finish_canary(deployment.id, promote=decision.action == "promote",
                                       reason="; ".join(decision.reasons), by="rollout-controller",
                                       idempotency_key=f"{CURSOR}:{deployment.id}:{decision.action}")
        return done

    def _follow_events(self, registry: Registry, done: dict[str, Any]) -> None:
        """Deploy what new VALIDATED events ask for, moving the stored cursor past each event
        only once it is handled; with no serving app to pre-warm on, stop and retry next tick."""
        cursor = registry.get_cursor(CURSOR)
        if cursor is None:  # first start: begin at the end of the log, replay nothing
            cursor = registry.set_cursor(CURSOR, registry.last_seq())
        while True:
            events = registry.events_since(cursor, kinds=["state_changed"], limit=200)
            if not events:
                return
            steps = {s.seq: s for s in auto_deploys(events, self._policies(registry, {e.subject.removeprefix("model:")
                                                                                      for e in events}))}
            for event in events:
                step = steps.get(event.seq)
                if step is not None:
                    if cursor < event.seq - 1:
                        cursor = registry.set_cursor(CURSOR, event.seq - 1)
                    done["deployed"].append(self._deploy(registry, step))  # NoServingApp: retried next tick
            cursor = registry.set_cursor(CURSOR, events[-1].seq)

    def _deploy(self, registry: Registry, step: AutoDeploy) -> str:
        try:
            counts = self._replica_counts() if self._replica_counts is not None else None
            # The key makes a replay after a restart return the deployment already started.
            d = deploy(registry, self._config, step.name, step.version, canary_percent=step.canary_percent,
                       by="rollout-controller", replica_counts=counts, idempotency_key=f"{CURSOR}:deploy:{step.seq}")
            return f"{step.name} v{step.version}: {d.state.value}"
        except NoServingApp:
            raise
        except Exception as exc:  # a refusal (state, approval, policy): one model's problem must not stop the others
            registry.append_event("rollout_skipped", f"model:{step.name}", {"reason": f"{type(exc).__name__}: {exc}"},
                                  version=step.version, idempotency_key=f"{CURSOR}:skip:{step.seq}")
            return f"{step.name} v{step.version}: skipped ({exc})"

    @staticmethod
    def _policies(registry: Registry, names: Iterable[str]) -> dict[str, RolloutPolicy]:
        out = {}
        for name in names:
            try:
                out[name] = RolloutPolicy.from_serving_policy(registry.get_model(name).serving_policy)
            except Exception:  # unknown model or a bad policy: the controller leaves it alone
                continue
        return out


def ensure_controller(config: PlatformConfig, *, poll_s: float = 1.0, registry_actor: str | None = None,
                      name: str = CONTROLLER_NAME) -> Any:
    """Get or start the controller actor of ``config.namespace``; returns its handle.
    (``registry_actor``/``name``: isolated tests; a restart reruns the constructor, which
    resumes from the cursor in the registry.)"""
    import ray

    controller_cls: Any = ray.remote(RolloutController)
    actor = controller_cls.options(
        name=name, namespace=config.namespace, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=4,
    ).remote(config, poll_s=poll_s, registry_actor=registry_actor)
    ray.get(actor.wake.remote())
    return actor
