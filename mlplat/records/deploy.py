"""Records of rollouts: a deployment of one version (blue-green or canary) and the traffic split
that the ingress reads for a model in a region."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field

from mlplat.errors import InvalidTransition
from mlplat.records.model import Record

__all__ = ["DeploymentState", "DEPLOYMENT_TRANSITIONS", "check_deployment_transition", "Deployment", "Traffic",
           "production_alias", "previous_alias", "canary_alias"]


class DeploymentState(str, enum.Enum):
    """Where a deployment is.

    ``PREWARMING``: replicas load the version and answer a probe; no traffic yet.
    ``CANARY``: the version takes ``canary_percent`` of the model's traffic.
    ``LIVE``: the version is production (globally or in its region).
    ``FAILED``: pre-warm failed (the reason says which replica and why); nothing moved.
    ``ROLLED_BACK``: the canary was ended without promotion.
    """

    PREWARMING = "PREWARMING"
    CANARY = "CANARY"
    LIVE = "LIVE"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def is_active(self) -> bool:
        return self in (DeploymentState.PREWARMING, DeploymentState.CANARY)

    def __str__(self) -> str:
        return self.value


_D = DeploymentState
DEPLOYMENT_TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    _D.PREWARMING: frozenset({_D.CANARY, _D.LIVE, _D.FAILED}),
    _D.CANARY: frozenset({_D.LIVE, _D.ROLLED_BACK}),
    _D.LIVE: frozenset(),
    _D.FAILED: frozenset(),
    _D.ROLLED_BACK: frozenset(),
}


def check_deployment_transition(deployment_id: str, current: DeploymentState | str,
                                target: DeploymentState | str) -> DeploymentState:
    """Return ``target`` if the deployment may move there, else raise InvalidTransition.

    >>> check_deployment_transition("d-1", "PREWARMING", "CANARY")
    <DeploymentState.CANARY: 'CANARY'>
    """
    cur, new = DeploymentState(current), DeploymentState(target)
    if new not in DEPLOYMENT_TRANSITIONS[cur]:
        allowed = ", ".join(sorted(s.value for s in DEPLOYMENT_TRANSITIONS[cur])) or "none (finished)"
        raise InvalidTransition(f"deployment {deployment_id} is {cur.value}; it cannot move to {new.value} "
                                f"(allowed: {allowed})")
    return new


def production_alias(region: str | None) -> str:
    """``production`` or ``production.<region>``.

    >>> production_alias("eu"), production_alias(None)
    ('production.eu', 'production')
    """
    return f"production.{region}" if region else "production"


def previous_alias(region: str | None) -> str:
    return f"previous.{region}" if region else "previous"


def canary_alias(region: str | None) -> str:
    return f"canary.{region}" if region else "canary"


class Deployment(Record):
    """One rollout of ``version`` of ``name``, globally (``region`` None) or in one region.

    ``canary_percent`` 0 is blue-green: pre-warm, then all traffic at once. ``targets`` names the
    Serve deployments that pre-warm it and how many replicas each had (``app/deployment -> n``).
    """

    id: str
    name: str
    version: int = Field(ge=1)
    region: str | None = None
    canary_percent: float = Field(0.0, ge=0, le=100)
    state: DeploymentState
    previous_version: int | None = None
    reason: str | None = None
    by: str = ""
    forced: bool = False
    targets: dict[str, int] = Field(default_factory=dict)
    deadline_at: float
    created_at: float
    updated_at: float

    @property
    def scope(self) -> str:
        return f"region {self.region}" if self.region else "all regions"


class Traffic(Record):
    """Which versions answer ``name`` in ``region``: ``production`` (the regional alias, else the
    global one), and a ``canary`` taking ``canary_percent`` of requests while a canary runs."""

    name: str
    region: str | None = None
    production: int | None = None
    canary: int | None = None
    canary_percent: float = 0.0
    canary_deployment: str | None = None
    serving_policy: dict[str, Any] = Field(default_factory=dict)
