"""The drift job: a model version's telemetry window against its feature set's reference
statistics (and its predictions against its own first traffic), judged by the model's
monitoring policy; then the report and a ``drift_checked`` registry event.

The prediction reference is the version's own full traffic: the first ``prediction_reference``
(policy) from its latest ``promoted`` event -- never its canary slice, which may differ -- or,
for a version never promoted, from its first telemetry row. It is kept in
``reports/<model>/drift-reference/v<N>.json`` with the start it was taken from, and rebuilt when
that start changes (the version was promoted after a reference of its canary days was kept).

Errors (one line, nothing written): an unknown model or version; a version without reference
statistics (no feature set, no ``stats.json``, no raw columns in it); a window without any
telemetry row of the version. Per-feature notes (that feature not judged, the rest judged): a
feature absent from the window's telemetry, a watched feature without a reference entry, a
reference entry without histogram or frequencies. See docs/monitoring.md.

Performance drift, where ``outcomes/<model>/`` holds outcome batches: the version's outcome rows
whose prediction ``ts`` is in the window are scored with the task's metrics
(:mod:`mlplat.models.metrics`, as validation scores the validation split) and the policy's
``performance_metric`` is compared with the version's validation value of it
(``ModelVersion.metrics["validation"][metric]``). What keeps it from being judged is a note on
the performance line (:class:`~mlplat.monitoring.drift.PerformanceStats`), never an error.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlplat.errors import IntegrityError, NotFound, StorageError, ValidationError
from mlplat.features.build import get_feature_set, load_stats
from mlplat.models.bundle import BUNDLE_FILE, bundle_dir
from mlplat.models.metrics import HIGHER_IS_BETTER, METRICS_BY_TASK, make_accumulator, primary_metric
from mlplat.monitoring.drift import DriftStats, DriftVerdict, FeatureStats, PerformanceStats, judge_drift
from mlplat.monitoring.partials import (
    FEATURE_PREFIX,
    PREDICTION_COLUMN,
    ROWS_WITHOUT_RAW_FEATURES,
    ColumnPlan,
    WindowPlan,
    feature_stats,
    outcome_values,
    reference_from_partial,
)
from mlplat.monitoring.policy import MonitoringPolicy, format_window, parse_window
from mlplat.monitoring.window import (
    first_telemetry_s,
    outcome_files,
    outcome_tables,
    telemetry_files,
    window_partial,
)
from mlplat.names import validate_name
from mlplat.records import ALIAS_PRODUCTION, ModelInfo, ModelVersion
from mlplat.registry import Registry
from mlplat.storage import Storage

__all__ = ["DriftResult", "compute_drift", "check_drift", "DRIFT_CHECKED", "prediction_reference_path"]

#: Registry event kind appended by :func:`check_drift` (subject ``model:<name>``).
DRIFT_CHECKED = "drift_checked"
#: The prediction's key among a plan's columns (a feature may be called "prediction").
PREDICTION_KEY = "__prediction__"
#: Tasks whose predictions are one number per row (performance drift scores only these).
SCALAR_TASKS = ("binary", "regression")


class DriftResult(BaseModel):
    """One drift check: what was read, the statistics, the verdict and where the report is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    version: int
    feature_set: dict[str, Any]
    window: str
    start_s: float
    end_s: float
    rows: int
    files: int
    stats: DriftStats
    verdict: DriftVerdict
    policy: dict[str, Any]
    prediction_reference: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    report: str | None = None

    @property
    def stamp(self) -> str:
        """The report directory name: window end (UTC) and length, ``20261130T120000Z-1h``."""
        return dt.datetime.fromtimestamp(self.end_s, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{self.window}"

    def _repr_html_(self) -> str:  # a table in Jupyter
        from mlplat.records._html import record_html

        return record_html(self, title=f"drift of {self.model} v{self.version} over {self.window}: {self.verdict.status.value}")


def _iso(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _no_telemetry(name: str, version: int, start_s: float, end_s: float, files: int) -> NotFound:
    return NotFound(f"no telemetry of {name} v{version} between {_iso(start_s)} and {_iso(end_s)} ({files} telemetry "
                    "files looked at): is it serving traffic? Widen the window or pick another --version")


def _version_of(registry: Registry, name: str, version: int | None) -> int:
    if version is not None:
        return int(version)
    production = registry.get_alias(name, ALIAS_PRODUCTION)
    if production:
        return production
    latest = registry.get_model(name).latest_version
    if not latest:
        raise NotFound(f"model {name!r} has no versions: nothing serves traffic to check for drift")
    return latest


def _reference(storage: Storage, registry: Registry, mv: ModelVersion) -> tuple[Any, dict[str, Any]]:
    name, version = mv.name, mv.version
    if mv.feature_set is None:
        raise NotFound(f"{name} v{version} has no reference statistics: it records no feature set "
                       "(drift compares telemetry with the feature set's stats.json)")
    fsv = get_feature_set(registry, mv.feature_set.name, mv.feature_set.version)
    try:
        raw = load_stats(storage, fsv).get("raw") or {}
    except NotFound:
        raise NotFound(f"{name} v{version} has no reference statistics: {storage.uri_of(fsv.path, 'stats.json')} "
                       f"is missing; rebuild feature set {fsv.name}") from None
    if not raw:
        raise NotFound(f"{name} v{version} has no reference statistics: {fsv.name} v{fsv.version}'s stats.json "
                       "lists no raw columns")
    return fsv, raw


def _column_plan(name: str, column: str, ref: dict[str, Any]) -> ColumnPlan | None:
    if ref.get("type") == "numeric" and (ref.get("histogram") or {}).get("fractions"):
        return ColumnPlan(name, column, "numeric", edges=tuple(ref["histogram"]["edges"]))
    if ref.get("type") == "categorical":
        return ColumnPlan(name, column, "categorical", categories=tuple(ref.get("frequencies") or {}))
    return None


def prediction_reference_path(name: str, version: int) -> tuple[str, ...]:
    """Where the prediction reference of a version is kept (and, until its period is over, the
    start of that period found from the first telemetry row)."""
    return ("reports", name, "drift-reference", f"v{version}.json")


def _promoted_at(registry: Registry, name: str, version: int) -> float | None:
    """The ``ts`` of the latest ``promoted`` event that made ``version`` production (globally
    or in a region): from then on it takes all traffic (of its scope), not a canary's slice."""
    latest: float | None = None
    seq = 0
    while True:
        page = registry.events_since(seq, subject=f"model:{name}", kinds=["promoted"], limit=1000)
        latest = max([e.ts for e in page if e.version == version] + ([latest] if latest is not None else []), default=None)
        if len(page) < 1000:
            return latest
        seq = page[-1].seq


def _reference_start(storage: Storage, registry: Registry, name: str, version: int,
                     kept: dict[str, Any] | None) -> tuple[float | None, str]:
    """(start of the prediction reference period, where it came from): the version's latest
    promotion, else its first telemetry row (kept in the reference file once found, so it is
    not searched for again on every check)."""
    promoted = _promoted_at(registry, name, version)
    if promoted is not None:
        return promoted, "promoted"
    if kept is not None and kept.get("start_from") == "first_telemetry":
        start = kept.get("start_s")
        if isinstance(start, (int, float)) and not isinstance(start, bool) and math.isfinite(start):
            return float(start), "first_telemetry"
    t0 = first_telemetry_s(storage, name, version)
    return t0, "first_telemetry"


def _prediction_reference(storage: Storage, registry: Registry, name: str, version: int, policy: MonitoringPolicy,
                          start_s: float, use_ray: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """(reference entry, period, note): the predictions of the first ``prediction_reference``
    of the version's full traffic -- from its latest ``promoted`` event, else from its first
    telemetry row -- built once and kept under reports/ after that. A kept reference is used
    only when its start and length are those of now (a reference taken from the first rows of a
    version that was a canary then is rebuilt once the version is promoted)."""
    length_s = policy.prediction_reference_s
    where = prediction_reference_path(name, version)
    kept: dict[str, Any] | None = None
    if storage.exists(*where):
        try:
            loaded = storage.read_json(*where)
        except (IntegrityError, StorageError, ValueError):
            loaded = None
        kept = loaded if isinstance(loaded, dict) else None
    t0, start_from = _reference_start(storage, registry, name, version, kept)
    if t0 is None:
        return None, None, f"no telemetry of v{version} to take a prediction reference from"
    if (kept is not None and kept.get("reference") and kept.get("start_s") == t0 and kept.get("length_s") == length_s
            and isinstance(kept.get("period"), dict)):
        return kept["reference"], kept["period"], None
    t1 = t0 + length_s
    period: dict[str, Any] = {"start_s": t0, "end_s": t1, "length": policy.prediction_reference, "from": start_from}
    if start_s < t1:
        if start_from == "first_telemetry" and (kept is None or kept.get("start_s") != t0):
            # remember where the period starts, so the next checks do not search the telemetry again
            storage.write_json({"start_s": t0, "start_from": start_from, "length_s": length_s, "period": period,
                                "reference": None}, *where)
        since = "its promotion" if start_from == "promoted" else "its first telemetry row"
        return None, period, (f"the window starts before the end of the prediction reference period (the first "
                              f"{policy.prediction_reference} of v{version}'s traffic since {since}, until {_iso(t1)})")
    plan = WindowPlan(t0, t1, version, (ColumnPlan(PREDICTION_KEY, PREDICTION_COLUMN, "sketch"),))
    partial = window_partial(storage, telemetry_files(storage, name, t0, t1), plan, use_ray=use_ray)
    reference, why = reference_from_partial(partial["columns"].get(PREDICTION_KEY))
    period["rows"] = partial["rows"]
    if reference is None:
        return None, period, why
    if partial["rows"] < policy.min_rows:
        return None, period, f"the prediction reference period has {partial['rows']} rows < min_rows {policy.min_rows}"
    storage.write_json({"start_s": t0, "start_from": start_from, "length_s": length_s, "period": period,
                        "reference": reference}, *where)
    return reference, period, None


def _task_of(storage: Storage, mv: ModelVersion, info: ModelInfo) -> str | None:
    """The version's task from its bundle's spec (``models/<name>/v<N>/bundle.json``), else the
    model's ``task_type``."""
    try:
        meta = storage.read_json(*bundle_dir(mv.name, mv.version), BUNDLE_FILE)
        task = ((meta.get("spec") if isinstance(meta, dict) else None) or {}).get("task")
    except (NotFound, IntegrityError, StorageError):
        task = None
    return task or info.task_type


def _validation_value(mv: ModelVersion, metric: str) -> float | None:
    recorded = mv.metrics.get("validation")
    value = recorded.get(metric) if isinstance(recorded, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _performance(storage: Storage, mv: ModelVersion, info: ModelInfo, policy: MonitoringPolicy, start_s: float,
                 end_s: float) -> PerformanceStats | None:
    """Performance of the version on the window's outcomes; None when the model has no outcome
    batches at all."""
    files = outcome_files(storage, mv.name)
    if not files:
        return None
    if not policy.performance_drift:
        return PerformanceStats(files=len(files), note="performance drift is off in the monitoring policy")
    task = _task_of(storage, mv, info)
    if task is None:
        return PerformanceStats(files=len(files), note=f"the task of v{mv.version} is unknown (no bundle spec, no "
                                                        "model task_type): performance not judged")
    if task not in METRICS_BY_TASK:
        return PerformanceStats(task=task, files=len(files), note=f"task {task!r} of v{mv.version} has no metrics "
                                f"(expected one of {', '.join(METRICS_BY_TASK)}): performance not judged")
    if task not in SCALAR_TASKS:
        return PerformanceStats(task=task, files=len(files), note=f"{task} predictions are vectors: performance drift "
                                "is judged for binary and regression models only")
    metric = policy.performance_metric or primary_metric(task)
    if metric not in METRICS_BY_TASK[task]:
        return PerformanceStats(metric=metric, task=task, files=len(files), note=(
            f"performance_metric {metric!r} is not computed for task {task!r} (available: "
            f"{', '.join(METRICS_BY_TASK[task])}): performance not judged"))
    base = {"metric": metric, "task": task, "higher_is_better": HIGHER_IS_BETTER[metric], "files": len(files)}
    reference = _validation_value(mv, metric)
    if reference is None:
        return PerformanceStats(**base, note=f"v{mv.version} has no validation value of {metric} "
                                             f"(metrics.validation.{metric}): validate it to judge performance")
    base["reference"] = reference
    acc = make_accumulator(task)
    seen = 0
    try:
        for path in files:
            for table in outcome_tables(storage, path, mv.version, start_s, end_s):
                seen += table.num_rows
                acc.update(*outcome_values(table))
    except (StorageError, ValidationError) as exc:
        return PerformanceStats(**base, note=f"outcomes not scored: {exc}")
    base.update(rows=acc.rows, skipped=seen - acc.rows)
    if seen and not acc.rows:
        return PerformanceStats(**base, note=f"none of the window's {seen:,} outcome rows has a numeric label and "
                                             "prediction: performance not judged")
    live = dict(acc.result()) if acc.rows else {}
    return PerformanceStats(**base, live=live.get(metric), live_metrics=live)


def compute_drift(storage: Storage, registry: Registry, name: str, *, window: str | None = None, end: float | None = None,
                  version: int | None = None, use_ray: bool = True, policy: MonitoringPolicy | None = None) -> DriftResult:
    """Drift of ``name`` (``version``, default: production, else the latest version) over the
    ``window`` (default: the policy's) ending at ``end`` (unix seconds, default now).

    ``use_ray``: per-file partials on Ray Data; else in this process (small windows, tests).
    ``policy``: default the model's ``serving_policy.monitoring``.
    """
    validate_name(name, "model name")
    info = registry.get_model(name)
    policy = policy or MonitoringPolicy.from_serving_policy(info.serving_policy)
    window_s = parse_window(window or policy.window)
    end_s = float(end) if end is not None else time.time()
    start_s = end_s - window_s
    version = _version_of(registry, name, version)
    mv = registry.get_version(name, version)
    fsv, raw = _reference(storage, registry, mv)

    watched = list(dict.fromkeys(policy.features if policy.features is not None
                                 else [c for c in raw if c not in fsv.label_columns]))
    plans: list[ColumnPlan] = []
    skipped: dict[str, FeatureStats] = {}
    for feature in watched:
        ref = raw.get(feature)
        column = None if ref is None else _column_plan(feature, FEATURE_PREFIX + feature, ref)
        if column is not None:
            plans.append(column)
        else:
            why = (f"no reference statistics for it in {fsv.name} v{fsv.version}" if ref is None
                   else "its reference has neither a histogram nor category frequencies")
            skipped[feature] = FeatureStats(name=feature, note=why)

    files = telemetry_files(storage, name, start_s, end_s)
    if not files:
        raise _no_telemetry(name, version, start_s, end_s, 0)
    pred_ref: dict[str, Any] | None = None
    pred_period: dict[str, Any] | None = None
    pred_note: str | None = "prediction drift is off in the monitoring policy"
    if policy.prediction_drift:
        pred_ref, pred_period, pred_note = _prediction_reference(storage, registry, name, version, policy, start_s,
                                                                 use_ray)
    if pred_ref is not None:
        pred_plan = _column_plan(PREDICTION_KEY, PREDICTION_COLUMN, pred_ref)
        if pred_plan is not None:
            plans.append(pred_plan)

    plan = WindowPlan(start_s, end_s, version, tuple(plans))
    partial = window_partial(storage, files, plan, use_ray=use_ray)
    rows = partial["rows"]
    if rows == 0:
        raise _no_telemetry(name, version, start_s, end_s, len(files))
    columns = partial["columns"]
    # Rows that came as an encoded tensor carry no raw features: they count for predictions only.
    encoded_only = int(partial.get(ROWS_WITHOUT_RAW_FEATURES, 0))
    features = tuple(skipped[f] if f in skipped else feature_stats(f, raw[f], columns.get(f), rows - encoded_only)
                     for f in watched)
    prediction: FeatureStats | None = None
    if policy.prediction_drift:
        prediction = (feature_stats(PREDICTION_COLUMN, pred_ref, columns.get(PREDICTION_KEY), rows)
                      if pred_ref is not None else FeatureStats(name=PREDICTION_COLUMN, rows=rows, note=pred_note))
    performance = _performance(storage, mv, info, policy, start_s, end_s)
    stats = DriftStats(rows=rows, features=features, prediction=prediction, performance=performance)
    notes: list[str] = []
    if encoded_only:
        notes.append(f"{encoded_only} of {rows} rows came as encoded tensors (no raw features): features are judged "
                     "on the others")
    return DriftResult(
        model=name, version=version, feature_set={"name": fsv.name, "version": fsv.version},
        window=format_window(window_s), start_s=start_s, end_s=end_s, rows=rows, files=len(files), stats=stats,
        verdict=judge_drift(stats, policy), policy=policy.model_dump(mode="json"), prediction_reference=pred_period,
        notes=tuple(notes),
    )


def check_drift(storage: Storage, registry: Registry, name: str, *, window: str | None = None, end: float | None = None,
                version: int | None = None, use_ray: bool = True) -> DriftResult:
    """:func:`compute_drift`, then the report (``reports/<name>/drift/<stamp>/``) and one
    ``drift_checked`` event on ``model:<name>``; returns the result with ``report`` set."""
    from mlplat.monitoring.report import write_report

    result = compute_drift(storage, registry, name, window=window, end=end, version=version, use_ray=use_ray)
    result = result.model_copy(update={"report": write_report(storage, result)})
    prediction = result.verdict.prediction
    performance = result.verdict.performance
    registry.append_event(DRIFT_CHECKED, f"model:{name}", {
        "window": result.window, "start_s": result.start_s, "end_s": result.end_s, "rows": result.rows,
        "status": result.verdict.status.value, "drifted": result.verdict.drifted,
        "drifted_features": list(result.verdict.drifted_features[:20]),
        "prediction_drifted": None if prediction is None else prediction.drifted,
        "performance_drifted": None if performance is None else performance.drifted,
        "performance_metric": None if performance is None else performance.metric,
        "performance_live": None if performance is None else performance.live,
        "performance_reference": None if performance is None else performance.reference,
        "performance_outcomes": None if performance is None else performance.rows,
        "report": result.report,
    }, version=result.version, idempotency_key=f"{DRIFT_CHECKED}:{name}:v{result.version}:{result.stamp}")
    _export_scores(name, result)
    return result


def _export_scores(name: str, result: DriftResult) -> None:
    """The scores as the ``mlplat_drift_score`` gauge on Ray's metrics endpoint (best effort:
    a check is complete without it)."""
    from mlplat.metrics import record_drift_scores

    verdicts = list(result.verdict.features) + ([result.verdict.prediction] if result.verdict.prediction else [])
    scores = {v.name: {k: x for k, x in v.scores.items() if x is not None} for v in verdicts}
    try:
        record_drift_scores(name, {f: s for f, s in scores.items() if s})
    except Exception:  # metrics are a view; the report and the event are the record
        import logging

        logging.getLogger("mlplat.monitoring").debug("drift scores not exported", exc_info=True)
