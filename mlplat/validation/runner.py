"""``validate``: TRAINED -> VALIDATING -> VALIDATED | REJECTED, and the human approval step.

With ``require_approval`` a passing version reaches VALIDATED with its approval PENDING (one
registry transition); a reviewer then approves it (promotable) or rejects it, which moves it
VALIDATED -> REJECTED and records who and why (:func:`approve` / :func:`reject`).

Order of work, chosen so a version never stays stuck in VALIDATING and never moves for a
reason that is not its own fault:

1. checks that leave the version TRAINED when they fail (wrong state, no feature set, empty
   split, missing columns, a guardrail naming a metric the task lacks);
2. TRAINED -> VALIDATING;
3. a bundle whose checksum fails, NaN predictions or guardrail failures -> REJECTED with the
   reasons; an unexpected error during inference -> REJECTED with the error (and re-raised);
4. the report is written before the final transition, so every VALIDATED or REJECTED version
   has one.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlplat.config import parse_config
from mlplat.errors import ConflictError, IntegrityError, InvalidTransition, MlplatError, NotFound, ValidationError
from mlplat.models import load_bundle
from mlplat.records import ALIAS_PRODUCTION, ApprovalState, FeatureSetRef, ModelState, ModelVersion
from mlplat.registry import Registry
from mlplat.storage import Storage
from mlplat.validation.gate import Decision, ValidationPolicy, gate
from mlplat.validation.inference import (
    PLAN_REPORT_KEYS,
    BundleRef,
    SplitSource,
    inference_plan,
    predict_dataset,
    resolve_validation_split,
)
from mlplat.validation.metrics import make_accumulator
from mlplat.validation.report import REPORT_FORMAT, load_report, report_dir, write_report

__all__ = ["ValidationOutcome", "validate", "approve", "reject", "policy_for", "report_of"]

_MAX_SLICE_VALUES = 50
CANDIDATE, CHAMPION = "pred", "champion_pred"


@dataclass(frozen=True)
class ValidationOutcome:
    name: str
    version: int
    state: ModelState
    decision: Decision
    metrics: dict[str, Any]
    report_path: str
    approval: ApprovalState = ApprovalState.NOT_REQUIRED  # the version's approval after validation

    @property
    def passed(self) -> bool:
        return self.decision.passed

    def _repr_html_(self) -> str:  # a table in Jupyter
        from mlplat.records._html import record_html

        return record_html(self)


def policy_for(registry: Registry, name: str, override: ValidationPolicy | Mapping[str, Any] | None = None) -> ValidationPolicy:
    """The explicit policy, else the model's ``serving_policy["validation"]``, else defaults."""
    if isinstance(override, ValidationPolicy):
        return override
    if override is not None:
        return parse_config(override, ValidationPolicy, source="validation policy")
    info = registry.get_model(name)
    data = (info.serving_policy or {}).get("validation")
    return parse_config(data or {}, ValidationPolicy, source=f"model {name!r} serving_policy.validation")


def _bundle_sha(mv: ModelVersion) -> str:
    ref = mv.artifacts.get("bundle")
    if ref is None:
        raise NotFound(f"model {mv.name} v{mv.version} has no 'bundle' artifact; was it trained by mlplat?")
    return ref.sha256


def _feature_set_ref(mv: ModelVersion, meta: Mapping[str, Any], override: Any) -> FeatureSetRef:
    if override is not None:
        if isinstance(override, FeatureSetRef):
            return override
        if isinstance(override, str):
            name, _, version = override.partition("@")
            if not version:
                raise ValidationError(f"feature set {override!r}: give NAME@vN (e.g. churn-features@v3)")
            return FeatureSetRef(name=name, version=int(version.removeprefix("v")))
        return FeatureSetRef.model_validate(override)
    if mv.feature_set is not None:
        return mv.feature_set
    fs = meta.get("feature_set")
    if isinstance(fs, Mapping) and fs.get("name") and fs.get("version"):
        return FeatureSetRef(name=fs["name"], version=int(fs["version"]))
    raise ValidationError(f"model {mv.name} v{mv.version} names no feature set; pass feature_set='NAME@vN'")


class _Scorer:
    """Accumulates metrics (overall and per slice) for one prediction column."""

    def __init__(self, task: str, num_classes: int | None, slices: list[str]):
        self.task, self.k = task, num_classes
        self.overall = make_accumulator(task, num_classes=num_classes, sample=True)
        self.slices: dict[str, dict[str, Any]] = {c: {} for c in slices}
        self.capped: set[str] = set()
        self.non_finite = 0

    def update(self, y: np.ndarray, pred: np.ndarray, slice_values: Mapping[str, np.ndarray]) -> None:
        finite = np.isfinite(pred) if pred.ndim == 1 else np.isfinite(pred).all(axis=1)
        self.non_finite += int((~finite).sum())
        y, pred = y[finite], pred[finite]
        self.overall.update(y, pred)
        for column, values in slice_values.items():
            values = values[finite]
            keys = np.array([str(v) for v in values]) if values.dtype == object else values.astype(str)
            uniq, inverse = np.unique(keys, return_inverse=True)
            for i, key in enumerate(uniq):
                accs = self.slices[column]
                if key not in accs:
                    if len(accs) >= _MAX_SLICE_VALUES:
                        self.capped.add(column)
                        continue
                    accs[key] = make_accumulator(self.task, num_classes=self.k)
                mask = inverse == i
                accs[key].update(y[mask], pred[mask])

    def slice_results(self) -> dict[str, dict[str, Any]]:
        return {c: {k: {"rows": a.rows, **a.result()} for k, a in sorted(accs.items())} for c, accs in self.slices.items()}


def _transition(registry: Registry, name: str, version: int, state: ModelState, expected: ModelState, **kw: Any) -> ModelVersion:
    return registry.transition(name, version, state, expected_state=expected,
                               idempotency_key=f"validate:{name}:v{version}:{state.value}", **kw)


def _reject_early(registry: Registry, storage: Storage, mv: ModelVersion, fs: FeatureSetRef | None, task: str, error: str) -> None:
    """Bundle failed its checksum: the version can never serve; record why and keep it for introspection."""
    report = {"format": REPORT_FORMAT, "model": mv.name, "version": mv.version, "task": task,
              "feature_set": fs.model_dump() if fs else {"name": None, "version": None}, "split": {}, "rows": 0,
              "rows_scored": 0, "non_finite_predictions": 0, "metrics": {}, "slices": {}, "champion": None,
              "guardrails": [], "decision": {"passed": False, "reasons": [error], "notes": [], "checks": []},
              "outcome": ModelState.REJECTED.value, "approval": ApprovalState.NOT_REQUIRED.value, "error": error, "created_at": time.time()}
    _transition(registry, mv.name, mv.version, ModelState.VALIDATING, ModelState.TRAINED)
    ref = write_report(storage, report, {})
    registry.update_version(mv.name, mv.version, artifacts={"validation_report": ref.model_dump()},
                            extra={"validation": {"passed": False, "reasons": [error], "report": ref.path}})
    _transition(registry, mv.name, mv.version, ModelState.REJECTED, ModelState.VALIDATING, error=error)


def _champion(registry: Registry, storage: Storage, name: str, version: int, split: SplitSource,
              policy: ValidationPolicy) -> tuple[BundleRef | None, int | None, str | None]:
    """The production version to compare with on the same rows, or a note saying why not."""
    if not policy.compare_to_production:
        return None, None, None
    champ = registry.get_alias(name, ALIAS_PRODUCTION)
    if champ is None or int(champ) == int(version):
        return None, None, None
    try:
        cmv = registry.get_version(name, champ)
        sha = _bundle_sha(cmv)
        loaded = load_bundle(storage, name, champ, expected_sha256=sha)
    except MlplatError as exc:
        return None, int(champ), f"production v{champ} could not be loaded ({exc}); champion guardrails skipped"
    missing = [c for c in loaded.input_columns if c not in split.columns]
    if missing:
        return None, int(champ), (f"production v{champ} reads columns {missing} absent from this split; "
                                  "champion guardrails skipped")
    return BundleRef(name, int(champ), sha, CHAMPION, tuple(loaded.input_columns)), int(champ), None


def validate(registry: Registry, storage: Storage, name: str, version: int, *, feature_set: Any = None,
             policy: ValidationPolicy | Mapping[str, Any] | None = None) -> ValidationOutcome:
    """Validate ``name`` v``version`` on its feature set's validation split; see the module doc."""
    started = time.time()
    version = int(version)
    mv = registry.get_version(name, version)
    if mv.state != ModelState.TRAINED:
        raise InvalidTransition(f"{name} v{version} is {mv.state.value}; only TRAINED versions can be validated")
    pol = policy_for(registry, name, policy)
    sha = _bundle_sha(mv)
    try:
        loaded = load_bundle(storage, name, version, expected_sha256=sha)
    except IntegrityError as exc:
        fs_guess = mv.feature_set
        _reject_early(registry, storage, mv, fs_guess, "unknown", f"bundle integrity check failed: {exc}")
        raise
    spec, meta = loaded.spec, loaded.meta
    pol.check_task(spec.task)
    fs_ref = _feature_set_ref(mv, meta, feature_set)
    split = resolve_validation_split(registry, storage, fs_ref)
    if split.rows == 0:
        raise ValidationError(f"the validation split of feature set {fs_ref.name} v{fs_ref.version} has zero rows; "
                              f"{name} v{version} stays TRAINED (re-materialize with a validation_fraction > 0)")
    labels = list(meta.get("label_columns") or split.label_columns)
    if not labels:
        raise ValidationError(f"neither {name} v{version} nor feature set {fs_ref.name} names a label column")
    label = labels[0]
    needed = {label, *loaded.input_columns, *pol.slices}
    missing = sorted(c for c in needed if c not in split.columns)
    if missing:
        raise ValidationError(f"feature set {fs_ref.name} v{fs_ref.version} lacks columns {missing} that "
                              f"{name} v{version} needs (label, inputs or slice columns)")
    champ_ref, champ_version, champ_note = _champion(registry, storage, name, version, split, pol)

    _transition(registry, name, version, ModelState.VALIDATING, ModelState.TRAINED)
    try:
        cand_ref = BundleRef(name, version, sha, CANDIDATE, tuple(loaded.input_columns))
        report, curves, champ_curves = _run(storage, name, version, cand_ref, spec, split, label, pol, champ_ref,
                                            champ_version, champ_note)
        report["duration_s"] = round(time.time() - started, 3)
        decision = gate(report, report.get("champion"), pol.guardrails)
        state = ModelState.VALIDATED if decision.passed else ModelState.REJECTED
        needs_review = decision.passed and pol.require_approval
        approval = ApprovalState.PENDING if needs_review else ApprovalState.NOT_REQUIRED
        report.update(decision=decision.to_json(), outcome=state.value, approval=approval.value)
        ref = write_report(storage, report, curves, champ_curves)
    except IntegrityError as exc:
        _fail(registry, name, version, f"bundle integrity check failed in an inference actor: {exc}")
        raise
    except BaseException as exc:
        _fail(registry, name, version, f"validation failed: {type(exc).__name__}: {exc}")
        raise
    extra: dict[str, Any] = {"validation": {"passed": decision.passed, "reasons": list(decision.reasons),
                                            "report": ref.path, "feature_set": fs_ref.model_dump()}}
    registry.update_version(name, version, artifacts={"validation_report": ref.model_dump()}, extra=extra,
                            idempotency_key=f"validate:{name}:v{version}:record")
    kw: dict[str, Any] = {"metrics": {"validation": report["metrics"]}}
    if not decision.passed:
        kw["error"] = "; ".join(decision.reasons)
    if needs_review:  # VALIDATED and PENDING in one transaction: never promotable before a reviewer says so
        kw["require_approval"] = True
    final = _transition(registry, name, version, state, ModelState.VALIDATING, **kw)
    return ValidationOutcome(name=name, version=version, state=final.state, decision=decision, metrics=report["metrics"],
                             report_path=storage.uri_of(*report_dir(name, version)), approval=final.approval.state)


def _fail(registry: Registry, name: str, version: int, error: str) -> None:
    try:
        _transition(registry, name, version, ModelState.REJECTED, ModelState.VALIDATING, error=error[:2000])
    except (ConflictError, InvalidTransition, NotFound):
        pass


def _run(storage: Storage, name: str, version: int, cand_ref: BundleRef, spec: Any, split: SplitSource, label: str,
         pol: ValidationPolicy, champ_ref: BundleRef | None, champ_version: int | None, champ_note: str | None):
    bundles = [cand_ref] + ([champ_ref] if champ_ref else [])
    keep = list(dict.fromkeys([label, *pol.slices]))
    ds = split.read(storage, columns=[*keep, *(c for b in bundles for c in b.input_columns)])
    where = inference_plan(pol.executor, pol.max_actors)  # decided once: run with it, record it
    preds = predict_dataset(ds, storage, bundles, keep, batch_size=pol.batch_size, plan=where)
    cand = _Scorer(spec.task, spec.num_classes, pol.slices)
    champ = _Scorer(spec.task, spec.num_classes, []) if champ_ref else None
    rows = no_label = 0
    for batch in preds.iter_batches(batch_size=None, batch_format="numpy"):
        y = np.asarray(batch[label], dtype=np.float64)
        has_label = np.isfinite(y)
        rows += y.size
        no_label += int((~has_label).sum())
        y = y[has_label]
        slice_values = {c: np.asarray(batch[c])[has_label] for c in pol.slices}
        cand.update(y, np.asarray(batch[CANDIDATE])[has_label], slice_values)
        if champ is not None:
            champ.update(y, np.asarray(batch[CHAMPION])[has_label], {})
    if rows == 0:
        raise ValidationError(f"the validation split of {split.feature_set.name} v{split.feature_set.version} produced no rows")
    notes = [champ_note] if champ_note else []
    if cand.capped:
        notes.append(f"slices of {sorted(cand.capped)} capped at the first {_MAX_SLICE_VALUES} values")
    if no_label:
        notes.append(f"{no_label} rows without a label were left out")
    champion = None
    if champ is not None:
        champion = {"version": champ_version, "metrics": champ.overall.result(), "non_finite_predictions": champ.non_finite}
    elif champ_version is not None:
        champion = None
    report = {
        "format": REPORT_FORMAT, "model": name, "version": version, "task": spec.task, "num_classes": spec.num_classes,
        "feature_set": split.feature_set.model_dump(), "split": {"column": split.split_column, "value": split.split_value},
        "label": label, "rows": rows, "rows_scored": cand.overall.rows, "rows_without_label": no_label,
        "non_finite_predictions": cand.non_finite, "metrics": cand.overall.result(), "slices": cand.slice_results(),
        "champion": champion, "guardrails": list(pol.guardrails), "notes": notes, "created_at": time.time(),
        "inference": {k: where[k] for k in PLAN_REPORT_KEYS},
    }
    return report, cand.overall.curves(), (champ.overall.curves() if champ else None)


def _reviewer(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:  # no login name (e.g. a container without a passwd entry)
        return "unknown"


def approve(registry: Registry, name: str, version: int, *, by: str | None = None, note: str | None = None) -> ModelVersion:
    """Approve a VALIDATED version awaiting a reviewer; it may then be promoted.

    ``by`` defaults to the login name. InvalidTransition unless the approval is PENDING
    (deciding twice, or on a version that needs no approval, is refused)."""
    return registry.review(name, int(version), ApprovalState.APPROVED, by=_reviewer(by), note=note or "")


def reject(registry: Registry, name: str, version: int, *, by: str | None = None, note: str | None = None) -> ModelVersion:
    """Reject a VALIDATED version awaiting a reviewer: it moves VALIDATED -> REJECTED (final),
    with who and why recorded in its approval. InvalidTransition unless the approval is PENDING."""
    return registry.review(name, int(version), ApprovalState.REJECTED, by=_reviewer(by), note=note or "")


def report_of(storage: Storage, name: str, version: int) -> tuple[dict[str, Any], str]:
    """The stored report and where it lives (directory URI)."""
    return load_report(storage, name, version), storage.uri_of(*report_dir(name, version))
