"""Deploy, canary and rollback of one model: pre-warm on every replica that will serve it, then
move traffic through the registry, which stays the source of truth.

``deploy`` names the Serve deployments that must pre-warm (:func:`serve_targets`, pure, from
Serve's replica counts), starts a deployment in the registry, waits for one report per replica
(:func:`prewarm_verdict`, pure), and finishes it: LIVE / CANARY, or FAILED with the reason (the
version is then REJECTED and nothing moved). Canary stats come back as ``canary_stats`` events
from each ingress replica; :func:`canary_stats` merges the latest per replica.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlplat.config import PlatformConfig
from mlplat.errors import ConfigError, NotFound
from mlplat.records import Deployment, DeploymentState, Event, ModelState, ModelVersion
from mlplat.registry import Registry
from mlplat.serving.routes import placement_of
from mlplat.serving.traffic import VersionStats

__all__ = ["serve_targets", "serve_replica_counts", "prewarm_verdict", "PrewarmVerdict", "deploy", "rollback",
           "canary_stats", "CanaryStatsFollower", "reconcile_prewarm", "NoServingApp", "deployments_view", "loaded_on", "REPLICA_REPORT"]

REPLICA_REPORT = "deployment_replica"
CANARY_STATS = "canary_stats"


def _app_region(deployments: Mapping[str, int]) -> tuple[bool, str | None]:
    """(is an mlplat app, its region) from the names of an app's deployments."""
    for name in deployments:
        if name == "ingress":
            return True, None
        if name.startswith("ingress-"):
            return True, name.removeprefix("ingress-")
    return False, None


def serve_targets(apps: Mapping[str, Mapping[str, int]], *, name: str, placement: str,
                  region: str | None) -> dict[str, int]:
    """The Serve deployments (``app/deployment``) that must pre-warm ``name``, with their
    running replica counts. A global rollout reaches every mlplat app; a regional one the apps
    of that region. ``apps``: app -> deployment -> running replicas.

    >>> apps = {"mlplat": {"ingress": 2, "model-pool": 1}, "mlplat-eu": {"ingress-eu": 1, "model-pool": 1, "model-hot": 2}}
    >>> serve_targets(apps, name="churn", placement="pool", region=None)
    {'mlplat/model-pool': 1, 'mlplat-eu/model-pool': 1}
    >>> serve_targets(apps, name="hot", placement="dedicated", region="eu")
    {'mlplat-eu/model-hot': 2}
    >>> serve_targets(apps, name="inline", placement="ingress", region=None)
    {'mlplat/ingress': 2, 'mlplat-eu/ingress-eu': 1}
    """
    targets: dict[str, int] = {}
    for app, deployments in sorted(apps.items()):
        is_mlplat, app_region = _app_region(deployments)
        if not is_mlplat or (region is not None and app_region != region):
            continue
        if placement == "ingress":
            ingress = "ingress" if app_region is None else f"ingress-{app_region}"
            targets[f"{app}/{ingress}"] = int(deployments[ingress])
        elif placement == "dedicated" and f"model-{name}" in deployments:
            targets[f"{app}/model-{name}"] = int(deployments[f"model-{name}"])
        elif "model-pool" in deployments:
            targets[f"{app}/model-pool"] = int(deployments["model-pool"])
    return {k: v for k, v in targets.items() if v > 0}


def serve_replica_counts() -> dict[str, dict[str, int]]:
    """Running replicas of every deployment of every Serve app (needs a Ray connection)."""
    from ray import serve

    out: dict[str, dict[str, int]] = {}
    for app, status in serve.status().applications.items():
        out[app] = {}
        for dep, dstatus in status.deployments.items():
            states = {str(getattr(k, "value", k)): v for k, v in (dstatus.replica_states or {}).items()}
            out[app][dep] = int(states.get("RUNNING", 0))
    return out


@dataclass(frozen=True)
class PrewarmVerdict:
    """``reject``: the failure is the version's own (a replica failed to load or probe it)."""

    done: bool
    ok: bool
    reason: str = ""
    reject: bool = True


def prewarm_verdict(targets: Mapping[str, int], reports: list[Event]) -> PrewarmVerdict:
    """Pre-warm is done when any replica failed (with its reason) or when every target has as
    many distinct replicas reporting success as it had replicas.

    >>> ok = Event(seq=1, ts=0, kind="deployment_replica", subject="deployment:d", payload={"target": "a/p", "replica": "r1", "ok": True})
    >>> prewarm_verdict({"a/p": 1}, [ok])
    PrewarmVerdict(done=True, ok=True, reason='', reject=True)
    >>> prewarm_verdict({"a/p": 2}, [ok]).done
    False
    """
    warmed: dict[str, set[str]] = {}
    for event in reports:
        p = event.payload
        target, replica = str(p.get("target")), str(p.get("replica"))
        if target not in targets:
            continue
        if not p.get("ok"):
            return PrewarmVerdict(True, False, f"replica {replica} of {target}: {p.get('reason') or 'failed'}")
        warmed.setdefault(target, set()).add(replica)
    missing = {t: n - len(warmed.get(t, ())) for t, n in targets.items() if len(warmed.get(t, ())) < n}
    if missing:
        return PrewarmVerdict(False, False, "waiting for " + ", ".join(f"{n} replica(s) of {t}" for t, n in sorted(missing.items())))
    return PrewarmVerdict(True, True)


def _wait_prewarm(registry: Registry, deployment: Deployment, *, poll_s: float = 0.05) -> PrewarmVerdict:
    reports: list[Event] = []
    seq = 0
    subject = f"deployment:{deployment.id}"
    while True:
        batch = registry.events_since(seq, subject=subject, kinds=[REPLICA_REPORT], limit=1000)
        if batch:
            seq = batch[-1].seq
            reports += batch
        verdict = prewarm_verdict(deployment.targets, reports)
        if verdict.done:
            return verdict
        if time.time() > deployment.deadline_at:
            return PrewarmVerdict(True, False, f"pre-warm timed out: {verdict.reason}", reject=False)
        time.sleep(poll_s)


class NoServingApp(ConfigError):
    """No running mlplat serving app serves the scope: nothing can pre-warm (try again later)."""


def _latest_validated(registry: Registry, name: str) -> int:
    versions = registry.list_versions(name, state=ModelState.VALIDATED)
    if not versions:
        raise NotFound(f"{name} has no VALIDATED version to deploy; name one: `mlplat deploy {name} VERSION`")
    return versions[-1].version


def deploy(registry: Registry, config: PlatformConfig, name: str, version: int | None = None, *,
           canary_percent: float | None = None, region: str | None = None, force: bool = False, by: str = "",
           replica_counts: Mapping[str, Mapping[str, int]] | None = None,
           idempotency_key: str | None = None) -> Deployment:
    """Roll ``version`` (default: the latest VALIDATED) of ``name`` out: pre-warm on every
    replica that will serve it, then all traffic (``canary_percent`` 0/None) or a canary share.
    With an active canary of the same version, ``canary_percent=100`` promotes it.

    A failed replica (load, probe, checksum) REJECTs the version; a pre-warm that timed out only
    fails the deployment. Interrupted (Ctrl-C), the deployment is failed and nothing moves."""
    from mlplat.lifecycle.policy import RolloutPolicy

    region = config.check_region(region)
    model = registry.get_model(name)
    policy = RolloutPolicy.from_serving_policy(model.serving_policy)
    version = _latest_validated(registry, name) if version is None else int(version)
    active = [d for d in registry.list_deployments(name=name, active=True) if d.region == region]
    if active and active[0].state == DeploymentState.CANARY and active[0].version == version and canary_percent == 100:
        return registry.finish_canary(active[0].id, promote=True, reason="canary raised to 100% by command", by=by)
    counts = replica_counts if replica_counts is not None else serve_replica_counts()
    targets = serve_targets(counts, name=name, placement=placement_of(model.serving_policy), region=region)
    if not targets:
        where = f"region {region!r}" if region else "any region"
        raise NoServingApp(f"no running mlplat serving app serves {where}; start one with `mlplat serve start` "
                           "(nothing was changed)")
    deployment = registry.start_deployment(name, version, region=region, canary_percent=float(canary_percent or 0.0),
                                           by=by, force=force, targets=targets,
                                           prewarm_timeout_s=policy.prewarm_timeout_s, idempotency_key=idempotency_key)
    if deployment.state != DeploymentState.PREWARMING:  # a retried call: that deployment already ended
        return registry.get_deployment(deployment.id)
    try:
        verdict = _wait_prewarm(registry, deployment)
    except BaseException:
        _finish(registry, deployment.id, ok=False, reason="the deployer was interrupted during pre-warm", reject=False)
        raise
    return _finish(registry, deployment.id, ok=verdict.ok, reason=verdict.reason, reject=verdict.reject)


def _finish(registry: Registry, deployment_id: str, *, ok: bool, reason: str, reject: bool) -> Deployment:
    """finish_prewarm, tolerating another finisher (the controller reconciles stale pre-warms)."""
    from mlplat.errors import ConflictError

    try:
        return registry.finish_prewarm(deployment_id, ok=ok, reason=reason, reject=reject)
    except ConflictError:
        return registry.get_deployment(deployment_id)


def reconcile_prewarm(registry: Registry, deployment: Deployment, *, now: float | None = None) -> Deployment | None:
    """Finish a PREWARMING deployment whose deadline has passed (its deployer died): LIVE/CANARY
    if every replica reported success, else FAILED (the version REJECTED only when a replica
    reported a failure). None while the deadline has not passed."""
    if deployment.state != DeploymentState.PREWARMING or (now or time.time()) <= deployment.deadline_at:
        return None
    reports = registry.events_since(0, subject=f"deployment:{deployment.id}", kinds=[REPLICA_REPORT], limit=10_000)
    verdict = prewarm_verdict(deployment.targets, reports)
    if not verdict.done:
        verdict = PrewarmVerdict(True, False, f"pre-warm timed out: {verdict.reason}", reject=False)
    return _finish(registry, deployment.id, ok=verdict.ok, reason=verdict.reason, reject=verdict.reject)


def rollback(registry: Registry, config: PlatformConfig, name: str, *, region: str | None = None,
             by: str = "") -> ModelVersion:
    """End an active canary, else swap production with ``previous`` (in ``region``)."""
    return registry.rollback(name, region=config.check_region(region), by=by)


class CanaryStatsFollower:
    """The live stats of running canaries, read incrementally: each call reads only the
    ``canary_stats`` events since the last one, keeps the latest cumulative report per ingress
    replica, and merges them into (canary, production)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}

    def read(self, registry: Registry, deployment: Deployment) -> tuple[VersionStats, VersionStats]:
        seq, latest = self._seen.get(deployment.id, (0, {}))
        while True:
            batch = registry.events_since(seq, subject=f"deployment:{deployment.id}", kinds=[CANARY_STATS], limit=1000)
            for event in batch:
                latest[f"{event.payload.get('target')}#{event.payload.get('replica')}"] = event.payload.get("versions") or {}
            if batch:
                seq = batch[-1].seq
            if len(batch) < 1000:
                break
        self._seen[deployment.id] = (seq, latest)
        canary, production = VersionStats(), VersionStats()
        for versions in latest.values():
            for version, data in versions.items():
                try:
                    stats = VersionStats.from_json(data)
                except ValueError:
                    continue
                if int(version) == deployment.version:
                    canary = canary.merged(stats)
                else:
                    production = production.merged(stats)
        return canary, production

    def keep_only(self, deployment_ids: set[str]) -> None:
        for stale in set(self._seen) - deployment_ids:
            self._seen.pop(stale)


def canary_stats(registry: Registry, deployment: Deployment) -> tuple[VersionStats, VersionStats]:
    """(canary, production) stats of a running canary: the latest cumulative report of each
    ingress replica, merged."""
    return CanaryStatsFollower().read(registry, deployment)


def loaded_on(registry: Registry, deployments: list[Deployment], version: int | None) -> dict[str, int]:
    """Where ``version`` was pre-warmed: target -> replicas that reported it loaded, from its
    latest LIVE or CANARY deployment (a version promoted by hand was never pre-warmed: {})."""
    for d in deployments:
        if d.version == version and d.state in (DeploymentState.LIVE, DeploymentState.CANARY):
            warmed: dict[str, set[str]] = {}
            for event in registry.events_since(0, subject=f"deployment:{d.id}", kinds=[REPLICA_REPORT], limit=1000):
                if event.payload.get("ok"):
                    warmed.setdefault(str(event.payload.get("target")), set()).add(str(event.payload.get("replica")))
            return {t: len(r) for t, r in sorted(warmed.items())}
    return {}


def deployments_view(registry: Registry, name: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Per model: production per region, the canary split, where those versions were loaded,
    and recent deployments."""
    names = [name] if name else sorted({d.name for d in registry.list_deployments(limit=500)})
    out = []
    for model in names:
        aliases = registry.aliases(model)
        traffic = registry.traffic(model)
        recent = registry.list_deployments(name=model, limit=limit)
        out.append({
            "name": model, "production": traffic.production,
            "loaded": {f"v{v}": loaded_on(registry, recent, v) for v in (traffic.production, traffic.canary) if v},
            "regions": {a.removeprefix("production."): v for a, v in aliases.items() if a.startswith("production.")},
            "previous": aliases.get("previous"), "canary": traffic.canary, "canary_percent": traffic.canary_percent,
            "deployments": [{"id": d.id, "version": d.version, "region": d.region, "state": d.state.value,
                             "canary_percent": d.canary_percent, "by": d.by, "reason": d.reason, "targets": d.targets,
                             "created_at": d.created_at} for d in recent],
        })
    return out
