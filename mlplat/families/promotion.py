"""Bulk promote and roll back the members of a family version, one registry transaction each.

Each pass reads every member's state, approval and aliases in one snapshot, plans each
member's step with a pure decision (:func:`mlplat.families.policy.decide_promotion` /
:func:`~mlplat.families.policy.decide_rollback`), then applies every planned step in one
batch, each guarded by the production version it was planned against. If anything moved in
between (ConflictError), the pass re-reads and re-plans. Re-running a finished pass plans only
DONE steps and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplat.errors import ConflictError, NotFound
from mlplat.families.policy import MemberStep, StepAction, decide_promotion, decide_rollback
from mlplat.families.record import FAMILY_PROMOTED, FAMILY_ROLLED_BACK, FamilyVersion, family_event_call, get_family
from mlplat.records import ModelVersion
from mlplat.registry import Registry
from mlplat.registry.protocol import BatchCall

__all__ = ["BulkResult", "promote_family", "rollback_family"]

_ATTEMPTS = 3


@dataclass
class BulkResult:
    family: str
    version: int
    action: str  # "promote" | "rollback"
    steps: list[MemberStep] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {a.value: sum(1 for s in self.steps if s.action == a) for a in StepAction if
                any(s.action == a for s in self.steps)}

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "version": self.version, "action": self.action, "counts": self.counts,
                "members": [{"member": s.member, "version": s.version, "action": s.action.value, "reason": s.reason}
                            for s in self.steps]}


def _members(fv: FamilyVersion, only: Iterable[str] | None) -> list[str]:
    if only is None:
        return sorted(fv.members)
    wanted = list(dict.fromkeys(only))
    unknown = [m for m in wanted if m not in fv.members]
    if unknown:
        raise NotFound(f"family {fv.name} v{fv.version} has no member(s) {unknown}; `mlplat family show {fv.name}` lists them")
    return wanted


def _plan(registry: Registry, fv: FamilyVersion, names: Sequence[str],
          decide: Callable[[str, ModelVersion, dict[str, int]], MemberStep]) -> list[MemberStep]:
    calls: list[BatchCall] = [("get_version", {"name": n, "version": fv.members[n].version}) for n in names]
    calls += [("aliases", {"name": n}) for n in names]
    out = registry.read_batch(calls)
    return [decide(n, mv, aliases) for n, mv, aliases in zip(names, out[:len(names)], out[len(names):], strict=True)]


def _apply(registry: Registry, fv: FamilyVersion, action: str, names: Sequence[str], by: str,
           decide: Callable[[str, ModelVersion, dict[str, int]], MemberStep],
           call: Callable[[MemberStep], BatchCall], event: str) -> BulkResult:
    for attempt in range(_ATTEMPTS):
        steps = _plan(registry, fv, names, decide)
        todo = [s for s in steps if s.action in (StepAction.PROMOTE, StepAction.ROLLBACK)]
        if not todo:
            return BulkResult(fv.name, fv.version, action, steps)
        summary = {"by": by, "members": {s.member: s.action.value for s in steps}}
        key = hashlib.sha256(json.dumps([(s.member, s.version, s.action.value, s.expected_production) for s in todo])
                             .encode()).hexdigest()[:24]
        try:
            registry.batch([family_event_call(event, fv, summary), *(call(s) for s in todo)],
                           idempotency_key=f"family-{action}:{fv.name}:v{fv.version}:{key}")
            return BulkResult(fv.name, fv.version, action, steps)
        except ConflictError:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def promote_family(registry: Registry, family: str, version: int | None = None, *, members: Iterable[str] | None = None,
                   by: str = "") -> BulkResult:
    """Promote every VALIDATED member of ``family`` v``version`` (latest when None), or only
    ``members``, in one transaction; members that cannot be promoted are reported with the reason."""
    fv = get_family(registry, family, version)

    def decide(name: str, mv: ModelVersion, aliases: dict[str, int]) -> MemberStep:
        return decide_promotion(name, mv.version, mv.state, mv.approval.state, aliases)

    def call(step: MemberStep) -> BatchCall:
        return ("promote", {"name": step.member, "version": step.version, "by": by,
                            "expected_production": step.expected_production})

    return _apply(registry, fv, "promote", _members(fv, members), by, decide, call, FAMILY_PROMOTED)


def rollback_family(registry: Registry, family: str, version: int | None = None, *, members: Iterable[str] | None = None,
                    by: str = "") -> BulkResult:
    """Roll back every member that ``family`` v``version`` (latest when None) serves to its
    ``previous`` version, in one transaction."""
    fv = get_family(registry, family, version)

    def decide(name: str, mv: ModelVersion, aliases: dict[str, int]) -> MemberStep:
        return decide_rollback(name, mv.version, mv.state, aliases)

    def call(step: MemberStep) -> BatchCall:
        return ("rollback", {"name": step.member, "by": by, "expected_production": step.expected_production})

    return _apply(registry, fv, "rollback", _members(fv, members), by, decide, call, FAMILY_ROLLED_BACK)
