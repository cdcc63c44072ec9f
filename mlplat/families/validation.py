"""``validate_family``: every TRAINED member of a family version validated in one pass.

1. one registry snapshot: each member's version and aliases (and its champion's bundle);
2. one Ray pass over the validation split grouped by entity
   (:func:`mlplat.families.partition.run_by_entity`): each member and its production version
   (the champion) scored on the same rows; a member whose weights fail to load (checksum,
   missing from its pack) is measured as a load error, the others are unaffected;
3. pure verdicts (:func:`mlplat.families.policy.decide_validation`: the single-model gate);
4. the per-member report is written before any state moves;
5. one registry batch: each decided member TRAINED -> VALIDATING -> VALIDATED | REJECTED with
   its metrics, reasons and report, plus a ``family_validated`` event. Nothing is VALIDATING
   outside that transaction, so no member can be left stuck in it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplat.config import parse_config
from mlplat.families.fit import evaluate_groups
from mlplat.families.partition import data_files, default_partitions, run_by_entity
from mlplat.families.policy import MemberEvaluation, MemberVerdict, Verdict, decide_validation
from mlplat.families.record import FAMILY_VALIDATED, FamilyVersion, family_event_call, get_family
from mlplat.families.report import FAMILY_REPORT_FORMAT, family_report_dir, member_rows, summary_counts, write_family_report
from mlplat.models import ModelSpec
from mlplat.records import ALIAS_PRODUCTION, ModelState, ModelVersion
from mlplat.registry import Registry
from mlplat.registry.protocol import BatchCall
from mlplat.storage import Storage
from mlplat.validation.gate import ValidationPolicy
from mlplat.validation.inference import resolve_validation_split

__all__ = ["FamilyValidation", "validate_family"]


@dataclass
class FamilyValidation:
    family: str
    version: int
    verdicts: list[MemberVerdict] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the report's table
    report_path: str | None = None  # None when no member moved (nothing to report)
    duration_s: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return summary_counts(self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "version": self.version, "counts": self.counts, "report": self.report_path,
                "duration_s": round(self.duration_s, 3), "members": self.rows}


def _policy(fv: FamilyVersion, override: ValidationPolicy | Mapping[str, Any] | None) -> ValidationPolicy:
    if isinstance(override, ValidationPolicy):
        return override
    if override is not None:
        return parse_config(override, ValidationPolicy, source="validation policy")
    return parse_config(fv.validation, ValidationPolicy, source=f"family {fv.name} v{fv.version} validation")


def _snapshot(registry: Registry, fv: FamilyVersion) -> tuple[dict[str, ModelVersion], dict[str, dict[str, int]]]:
    names = sorted(fv.members)
    calls: list[BatchCall] = [("get_version", {"name": n, "version": fv.members[n].version}) for n in names]
    calls += [("aliases", {"name": n}) for n in names]
    out = registry.read_batch(calls)
    return dict(zip(names, out[:len(names)], strict=True)), dict(zip(names, out[len(names):], strict=True))


def _champions(registry: Registry, fv: FamilyVersion, eligible: Sequence[str], aliases: Mapping[str, Mapping[str, int]],
               policy: ValidationPolicy) -> dict[str, dict[str, Any]]:
    """Each eligible member's production version and its bundle sha256 (one read)."""
    if not policy.compare_to_production:
        return {}
    wanted = [(n, aliases[n][ALIAS_PRODUCTION]) for n in eligible
              if ALIAS_PRODUCTION in aliases[n] and aliases[n][ALIAS_PRODUCTION] != fv.members[n].version]
    if not wanted:
        return {}
    versions = registry.read_batch([("get_version", {"name": n, "version": v}) for n, v in wanted])
    out = {}
    for (name, v), mv in zip(wanted, versions, strict=True):
        ref = mv.artifacts.get("bundle")
        out[name] = {"version": v, "sha256": ref.sha256 if ref else None}
    return out


def validate_family(registry: Registry, storage: Storage, family: str, version: int | None = None, *,
                    policy: ValidationPolicy | Mapping[str, Any] | None = None, partitions: int | None = None
                    ) -> FamilyValidation:
    """Validate every TRAINED member of ``family`` v``version`` (latest when None) in bulk; see the
    module doc. Re-running it moves nothing (no member is TRAINED any more) and writes no report."""
    started = time.time()
    fv = get_family(registry, family, version)
    pol = _policy(fv, policy)
    spec = ModelSpec.model_validate(fv.spec)
    pol.check_task(spec.task)
    states, aliases = _snapshot(registry, fv)
    eligible = [n for n in sorted(fv.members) if states[n].state == ModelState.TRAINED]
    evaluations: dict[str, MemberEvaluation] = {}
    if eligible:
        champions = _champions(registry, fv, eligible, aliases, pol)
        plan = {}
        for n in eligible:
            ref = states[n].artifacts.get("bundle")
            plan[fv.members[n].entity] = {"member": n, "version": fv.members[n].version,
                                          "sha256": ref.sha256 if ref else None, "input_columns": list(fv.input_columns),
                                          "champion": champions.get(n)}
        split = resolve_validation_split(registry, storage, fv.feature_set)
        results = run_by_entity(storage, data_files(storage, split.data_dir, split.files),
                                columns=[*fv.input_columns, fv.label], entity_column=fv.entity_column,
                                split_column=split.split_column, split_value=split.split_value,
                                partitions=partitions or default_partitions(len(eligible)), fn=evaluate_groups,
                                fn_kwargs={"storage": storage, "entity_column": fv.entity_column, "label": fv.label,
                                           "plan": plan})
        evaluations = dict(results)
    verdicts = [decide_validation(n, fv.members[n].version, states[n].state, evaluations.get(n), pol.guardrails)
                for n in sorted(fv.members)]
    rows = member_rows(verdicts, evaluations, {n: m.entity for n, m in fv.members.items()})
    result = FamilyValidation(family=fv.name, version=fv.version, verdicts=verdicts, rows=rows)
    moving = [v for v in verdicts if v.verdict != Verdict.UNCHANGED]
    if not moving:
        result.duration_s = time.time() - started
        return result
    validation_id = f"validate-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    report = {"format": FAMILY_REPORT_FORMAT, "family": fv.name, "family_version": fv.version,
              "validation_id": validation_id, "feature_set": fv.feature_set.model_dump(), "task": spec.task,
              "guardrails": list(pol.guardrails), "require_approval": pol.require_approval,
              "counts": summary_counts(verdicts), "members": rows, "created_at": time.time(),
              "duration_s": round(time.time() - started, 3)}
    ref = write_family_report(storage, report)
    calls: list[BatchCall] = [family_event_call(FAMILY_VALIDATED, fv, {"report": ref.path, "counts": report["counts"],
                                                                       "validation_id": validation_id})]
    for v in moving:
        calls += _member_calls(v, evaluations.get(v.member), ref, pol)
    registry.batch(calls, idempotency_key=f"family-validate:{validation_id}")
    result.report_path = storage.uri_of(*family_report_dir(fv.name, fv.version, validation_id))
    result.duration_s = time.time() - started
    return result




def _member_calls(v: MemberVerdict, ev: MemberEvaluation | None, report: Any, pol: ValidationPolicy) -> list[BatchCall]:
    passed = v.verdict == Verdict.VALIDATED
    final: dict[str, Any] = {"name": v.member, "version": v.version, "state": v.verdict.value,
                             "expected_state": ModelState.VALIDATING.value,
                             "metrics": {"validation": dict(ev.metrics) if ev else {}}}
    if not passed:
        final["error"] = "; ".join(v.reasons)[:4000]
    if passed and pol.require_approval:
        final["require_approval"] = True
    return [
        ("transition", {"name": v.member, "version": v.version, "state": ModelState.VALIDATING.value,
                        "expected_state": ModelState.TRAINED.value}),
        ("update_version", {"name": v.member, "version": v.version, "artifacts": {"validation_report": report.model_dump()},
                            "extra": {"validation": {"passed": passed, "reasons": list(v.reasons), "report": report.path}}}),
        ("transition", final),
    ]
