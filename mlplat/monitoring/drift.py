"""Drift statistics and the drift verdict, pure (numpy + scipy.stats; no Ray, no I/O).

Every statistic compares live *counts* with reference *fractions*, because the reference is a
histogram (``features/<fs>/v<n>/stats.json``) and the live side is merged from per-block counts;
docs/monitoring.md has the definitions with their reasons:

- numeric bins: the reference's K bins (``[e0, e1]``, then ``(e_i, e_i+1]``) plus one bin below
  ``e0`` and one above ``eK``, whose reference fraction is 0 (:func:`bin_counts`);
- :func:`psi`: ``sum((a_i - e_i) * ln(a_i / e_i))`` over the bins, both fractions floored at
  :data:`EPSILON`;
- :func:`ks_vs_reference`: ``D = max |F_live(x) - F_ref(x)|`` over ``x`` just below ``e0`` and at
  ``e1..eK``, where the reference CDF is exact; p-value from the one-sample Kolmogorov
  distribution of ``D`` for n live values (scipy ``kstwo``, ``kstwobign`` past
  :data:`KS_EXACT_MAX_N`); conservative, because this D is at most the full-sample KS statistic;
- :func:`chi2_vs_reference`: Pearson's chi-squared goodness of fit (``scipy.stats.chisquare``)
  after pooling bins expected below :data:`MIN_EXPECTED_COUNT`; effect size ``w = sqrt(chi2/n)``.

Performance drift compares a metric of the window's outcomes (delayed labels joined to the
predictions) with the version's validation value of that metric (:class:`PerformanceStats`,
:func:`judge_performance`): drifted when it is worse by more than ``max_performance_drop``, in
the metric's direction (a fall for auc, a rise for rmse).

:func:`judge_drift` turns the statistics and a :class:`~mlplat.monitoring.policy.MonitoringPolicy`
into a :class:`DriftVerdict`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict

from mlplat.monitoring.policy import MonitoringPolicy

__all__ = [
    "EPSILON",
    "KS_EXACT_MAX_N",
    "MIN_EXPECTED_COUNT",
    "bin_counts",
    "psi",
    "KsResult",
    "ks_vs_reference",
    "Chi2Result",
    "chi2_vs_reference",
    "FeatureStats",
    "PerformanceStats",
    "DriftStats",
    "DriftStatus",
    "FeatureVerdict",
    "PerformanceVerdict",
    "DriftVerdict",
    "judge_feature",
    "judge_performance",
    "judge_drift",
]

#: Floor of a bin fraction in PSI and of an expected fraction in chi-squared: a bin empty on one
#: side contributes a large but finite term.
EPSILON = 1e-4
#: Above this many live values the KS p-value uses the asymptotic Kolmogorov distribution
#: (scipy's exact ``kstwo`` takes up to a second per call at a million values).
KS_EXACT_MAX_N = 10_000
#: Chi-squared bins expected below this count are pooled (Cochran's rule of thumb).
MIN_EXPECTED_COUNT = 5.0


def bin_counts(values: ArrayLike, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` (NaN dropped) in K+2 bins: below ``edges[0]``, the K reference bins
    ``[e0, e1], (e1, e2], ..., (e_K-1, e_K]`` (the convention of ``features.stats.reference_stats``),
    above ``edges[-1]``.

    >>> bin_counts(np.array([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]), [0.0, 1.0, 2.0]).tolist()
    [1, 3, 2, 1]
    """
    e = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    idx = np.searchsorted(e, v, side="left")  # number of edges < v: 0 below e0, j for (e_j-1, e_j], K+1 above
    idx[v == e[0]] = 1  # the first bin holds its left edge
    return np.bincount(idx, minlength=e.size + 1)


def psi(reference_fractions: ArrayLike, live_fractions: ArrayLike, *, epsilon: float = EPSILON) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` with ``a`` (live) and ``e``
    (reference) fractions per bin, each floored at ``epsilon`` (no renormalisation).

    >>> psi([0.5, 0.5], [0.5, 0.5])
    0.0
    >>> round(psi([0.5, 0.5], [0.9, 0.1]), 4)
    0.8789
    """
    e = np.maximum(np.asarray(reference_fractions, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(live_fractions, dtype=np.float64), epsilon)
    if e.shape != a.shape:
        raise ValueError(f"psi: {e.size} reference bins but {a.size} live bins")
    return float(np.sum((a - e) * np.log(a / e)))


class KsResult(NamedTuple):
    statistic: float
    pvalue: float
    n: int


def ks_vs_reference(live_counts: ArrayLike, reference_fractions: ArrayLike) -> KsResult:
    """One-sample KS of the live values against the reference histogram, at the points where
    the reference CDF is known exactly: just below ``e0`` (reference 0) and at each upper edge.

    ``live_counts`` are the K+2 counts of :func:`bin_counts`, ``reference_fractions`` the K
    reference fractions.

    >>> r = ks_vs_reference([0, 50, 50, 0], [0.5, 0.5])
    >>> r.statistic, r.pvalue
    (0.0, 1.0)
    >>> round(ks_vs_reference([0, 80, 20, 0], [0.5, 0.5]).statistic, 6)
    0.3
    """
    counts = np.asarray(live_counts, dtype=np.float64)
    ref = np.asarray(reference_fractions, dtype=np.float64)
    if counts.size != ref.size + 2:
        raise ValueError(f"ks_vs_reference: {ref.size} reference bins need {ref.size + 2} live counts, got {counts.size}")
    n = int(counts.sum())
    if n == 0:
        return KsResult(0.0, 1.0, 0)
    live_cdf = np.cumsum(counts)[:-1] / n  # at e0- and at e1..eK
    ref_total = ref.sum()
    ref_cdf = np.concatenate([[0.0], np.cumsum(ref) / (ref_total if ref_total > 0 else 1.0)])
    statistic = float(np.max(np.abs(live_cdf - ref_cdf)))
    return KsResult(statistic, ks_pvalue(statistic, n), n)


def ks_pvalue(statistic: float, n: int) -> float:
    """P(D_n >= statistic) under the null: scipy's exact ``kstwo`` up to :data:`KS_EXACT_MAX_N`
    values, the asymptotic ``kstwobign`` of ``sqrt(n) * D`` beyond."""
    from scipy import stats

    if n <= 0 or statistic <= 0:
        return 1.0
    p = stats.kstwo.sf(statistic, n) if n <= KS_EXACT_MAX_N else stats.kstwobign.sf(statistic * math.sqrt(n))
    return float(min(1.0, max(0.0, p)))


class Chi2Result(NamedTuple):
    statistic: float
    pvalue: float
    dof: int
    effect: float  # Cohen's w = sqrt(statistic / n)
    n: int


def chi2_vs_reference(live_counts: ArrayLike, reference_fractions: ArrayLike, *, epsilon: float = EPSILON,
                      min_expected: float = MIN_EXPECTED_COUNT) -> Chi2Result:
    """Pearson chi-squared goodness of fit of live counts to reference fractions.

    Bins empty on both sides are dropped; the reference fractions are floored at ``epsilon``
    and renormalised, so expected ``E_i = n * max(e_i, eps) / sum_j max(e_j, eps)``; bins with
    ``E_i < min_expected`` are pooled into one bin, which joins the smallest other bin if it is
    still below ``min_expected``. Then ``scipy.stats.chisquare`` with ``bins - 1`` degrees of
    freedom.

    >>> r = chi2_vs_reference([10, 20, 30], [1 / 3, 1 / 3, 1 / 3])
    >>> round(r.statistic, 6), r.dof, round(r.pvalue, 6)
    (10.0, 2, 0.006738)
    """
    from scipy import stats

    obs = np.asarray(live_counts, dtype=np.float64)
    ref = np.asarray(reference_fractions, dtype=np.float64)
    if obs.shape != ref.shape:
        raise ValueError(f"chi2_vs_reference: {ref.size} reference bins but {obs.size} live bins")
    n = int(obs.sum())
    keep = (obs > 0) | (ref > 0)
    obs, ref = obs[keep], np.maximum(ref[keep], epsilon)
    if n == 0 or obs.size < 2:
        return Chi2Result(0.0, 1.0, 0, 0.0, n)
    exp = n * ref / ref.sum()
    small = exp < min_expected
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        exp = np.append(exp[~small], exp[small].sum())
        if exp[-1] < min_expected and exp.size > 1:
            j = int(np.argmin(exp[:-1]))
            obs[j] += obs[-1]
            exp[j] += exp[-1]
            obs, exp = obs[:-1], exp[:-1]
    if obs.size < 2:
        return Chi2Result(0.0, 1.0, 0, 0.0, n)
    result = stats.chisquare(obs, exp)
    statistic = float(result.statistic)
    return Chi2Result(statistic, float(result.pvalue), int(obs.size - 1), math.sqrt(statistic / n), n)


# -- statistics of a window ------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureStats(_Frozen):
    """Live-vs-reference statistics of one feature (or of the predictions) over a window.

    ``note`` says why a statistic is missing (no reference, absent from telemetry, ...).
    ``bins``/``reference_fractions``/``live_fractions`` are what the report draws."""

    name: str
    kind: Literal["numeric", "categorical"] | None = None
    rows: int = 0  # rows of the window
    values: int = 0  # non-null live values binned
    null_rate: float | None = None
    reference_null_rate: float | None = None
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    chi2_dof: int | None = None
    chi2_effect: float | None = None
    live_mean: float | None = None
    reference_mean: float | None = None
    bins: tuple[str, ...] = ()
    reference_fractions: tuple[float, ...] = ()
    live_fractions: tuple[float, ...] = ()
    note: str | None = None


class PerformanceStats(_Frozen):
    """A metric of the window's outcome rows (of the version, prediction ``ts`` in the window)
    against the version's validation value of it.

    ``metric``: the one judged; ``live_metrics``: every metric of the task on the outcomes;
    ``rows``: outcome rows scored; ``skipped``: the window's outcome rows without a numeric label
    or prediction; ``note`` says why nothing could be scored (task unknown or multiclass, no
    validation value, vector or text predictions, ...)."""

    metric: str | None = None
    task: str | None = None
    higher_is_better: bool | None = None
    rows: int = 0
    skipped: int = 0
    files: int = 0
    live: float | None = None
    reference: float | None = None
    live_metrics: dict[str, float | None] = {}
    note: str | None = None


class DriftStats(_Frozen):
    """Everything :func:`judge_drift` looks at: the window's row count, per-feature stats and,
    where outcomes exist, the performance on them."""

    rows: int
    features: tuple[FeatureStats, ...] = ()
    prediction: FeatureStats | None = None
    performance: PerformanceStats | None = None


class DriftStatus(str, enum.Enum):
    DRIFT = "drift"
    NO_DRIFT = "no_drift"
    NOT_JUDGED = "not_judged"

    def __str__(self) -> str:
        return self.value


class FeatureVerdict(_Frozen):
    """``drifted`` is None when the feature was not judged (``reasons`` says why)."""

    name: str
    kind: str | None = None
    drifted: bool | None = None
    scores: dict[str, float | None] = {}
    thresholds: dict[str, float] = {}
    reasons: tuple[str, ...] = ()


class PerformanceVerdict(_Frozen):
    """``drifted`` is None when performance was not judged (``reasons`` says why). ``drop``:
    how much worse the live value is than the validation value (``reference - live`` for a
    metric where higher is better, ``live - reference`` otherwise; negative: better)."""

    metric: str | None = None
    drifted: bool | None = None
    live: float | None = None
    reference: float | None = None
    drop: float | None = None
    threshold: float
    rows: int = 0
    reasons: tuple[str, ...] = ()


class DriftVerdict(_Frozen):
    status: DriftStatus
    drifted: bool
    features: tuple[FeatureVerdict, ...] = ()
    prediction: FeatureVerdict | None = None
    performance: PerformanceVerdict | None = None
    drifted_features: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def judge_feature(s: FeatureStats, policy: MonitoringPolicy) -> FeatureVerdict:
    """The verdict on one feature. Not judged (``drifted=None``) when it has a note or fewer
    than ``min_rows`` rows. Else drifted when any check fires:

    - the null rate rose by more than ``null_rate_increase_max`` over the reference's;
    - with at least ``min_rows`` non-null values: PSI above ``psi_max``; numeric: KS p-value
      below ``ks_pvalue_min`` *and* D at least ``ks_statistic_min``; categorical: chi-squared
      p-value below ``chi2_pvalue_min`` *and* effect ``w`` at least ``chi2_effect_min``.

    >>> from mlplat.monitoring.policy import MonitoringPolicy
    >>> s = FeatureStats(name="age", kind="numeric", rows=5000, values=5000, psi=0.31, ks_statistic=0.2,
    ...                  ks_pvalue=1e-9, null_rate=0.0, reference_null_rate=0.0)
    >>> judge_feature(s, MonitoringPolicy()).reasons
    ('PSI 0.31 > 0.2', 'KS D 0.2 >= 0.1 with p 1e-09 < 0.01')
    """
    scores: dict[str, float | None] = {"psi": s.psi, "null_rate": s.null_rate}
    thresholds: dict[str, float] = {"psi_max": policy.psi_max, "null_rate_increase_max": policy.null_rate_increase_max}
    if s.kind == "numeric":
        scores.update(ks_statistic=s.ks_statistic, ks_pvalue=s.ks_pvalue)
        thresholds.update(ks_pvalue_min=policy.ks_pvalue_min, ks_statistic_min=policy.ks_statistic_min)
    elif s.kind == "categorical":
        scores.update(chi2_statistic=s.chi2_statistic, chi2_pvalue=s.chi2_pvalue, chi2_effect=s.chi2_effect)
        thresholds.update(chi2_pvalue_min=policy.chi2_pvalue_min, chi2_effect_min=policy.chi2_effect_min)

    def verdict(drifted: bool | None, reasons: list[str]) -> FeatureVerdict:
        return FeatureVerdict(name=s.name, kind=s.kind, drifted=drifted, scores=scores, thresholds=thresholds,
                              reasons=tuple(reasons))

    if s.note is not None:
        return verdict(None, [s.note])
    if s.rows < policy.min_rows:
        return verdict(None, [f"{s.rows} rows < min_rows {policy.min_rows}"])
    fired: list[str] = []
    if s.null_rate is not None and s.reference_null_rate is not None:
        rise = s.null_rate - s.reference_null_rate
        if rise > policy.null_rate_increase_max:
            fired.append(f"null rate {s.null_rate:.1%} vs reference {s.reference_null_rate:.1%} "
                         f"(+{rise:.1%} > {policy.null_rate_increase_max:.1%})")
    if s.values < policy.min_rows:
        if fired:
            return verdict(True, fired)
        return verdict(None, [f"{s.values} non-null values < min_rows {policy.min_rows}"])
    if s.psi is not None and s.psi > policy.psi_max:
        fired.append(f"PSI {_g(s.psi)} > {_g(policy.psi_max)}")
    if (s.kind == "numeric" and s.ks_pvalue is not None and s.ks_statistic is not None
            and s.ks_pvalue < policy.ks_pvalue_min and s.ks_statistic >= policy.ks_statistic_min):
        fired.append(f"KS D {_g(s.ks_statistic)} >= {_g(policy.ks_statistic_min)} with p {_g(s.ks_pvalue)} "
                     f"< {_g(policy.ks_pvalue_min)}")
    if (s.kind == "categorical" and s.chi2_pvalue is not None and s.chi2_effect is not None
            and s.chi2_pvalue < policy.chi2_pvalue_min and s.chi2_effect >= policy.chi2_effect_min):
        fired.append(f"chi2 w {_g(s.chi2_effect)} >= {_g(policy.chi2_effect_min)} with p {_g(s.chi2_pvalue)} "
                     f"< {_g(policy.chi2_pvalue_min)}")
    return verdict(bool(fired), fired)


def judge_performance(s: PerformanceStats, policy: MonitoringPolicy) -> PerformanceVerdict:
    """The verdict on performance. Not judged (``drifted=None``) when the stats have a note,
    fewer than ``min_outcomes`` rows were scored, or the metric is undefined on them (AUC of
    outcomes of one class). Else drifted when the live metric is worse than the validation value
    by more than ``max_performance_drop`` (absolute, in the metric's direction).

    >>> from mlplat.monitoring.policy import MonitoringPolicy
    >>> s = PerformanceStats(metric="auc", task="binary", higher_is_better=True, rows=500, live=0.71, reference=0.83)
    >>> v = judge_performance(s, MonitoringPolicy())
    >>> v.drifted, round(v.drop, 2), v.reasons
    (True, 0.12, ('auc 0.71 on 500 outcomes vs 0.83 at validation: worse by 0.12 > max_performance_drop 0.05',))
    >>> judge_performance(s.model_copy(update={"rows": 40}), MonitoringPolicy()).reasons
    ('40 outcomes < min_outcomes 100',)
    """
    threshold = policy.max_performance_drop

    def verdict(drifted: bool | None, reasons: list[str], drop: float | None = None) -> PerformanceVerdict:
        return PerformanceVerdict(metric=s.metric, drifted=drifted, live=s.live, reference=s.reference, drop=drop,
                                  threshold=threshold, rows=s.rows, reasons=tuple(reasons))

    if s.note is not None:
        return verdict(None, [s.note])
    if s.rows < policy.min_outcomes:
        return verdict(None, [f"{s.rows} outcomes < min_outcomes {policy.min_outcomes}"])
    if s.metric is None or s.reference is None or s.higher_is_better is None:
        return verdict(None, ["no metric or validation value to compare with"])
    if s.live is None:
        return verdict(None, [f"{s.metric} is undefined on the window's {s.rows:,} outcomes (one class only?)"])
    drop = s.reference - s.live if s.higher_is_better else s.live - s.reference
    drifted = drop > threshold
    change = f"worse by {_g4(drop)}" if drop > 0 else f"better by {_g4(-drop)}" if drop < 0 else "unchanged"
    return verdict(drifted, [f"{s.metric} {_g4(s.live)} on {s.rows:,} outcomes vs {_g4(s.reference)} at validation: "
                             f"{change} {'>' if drifted else '<='} max_performance_drop {_g4(threshold)}"], drop)


def _g4(x: float) -> str:
    return f"{x:.4g}"


def judge_drift(stats: DriftStats, policy: MonitoringPolicy) -> DriftVerdict:
    """The verdict on a window, a pure function of the statistics and the policy:

    - NOT_JUDGED when nothing could be judged: neither the features and the predictions (the
      window has fewer than ``min_rows`` rows, or no feature and no prediction could be judged)
      nor performance (no outcomes, fewer than ``min_outcomes``, ...);
    - else DRIFT when at least ``min_drifted_features`` features drifted, or the predictions
      drifted (judged like a feature, when ``prediction_drift`` is on), or performance drifted
      (when ``performance_drift`` is on); NO_DRIFT otherwise. With fewer than ``min_rows``
      window rows only performance is judged.

    >>> from mlplat.monitoring.policy import MonitoringPolicy
    >>> ok = FeatureStats(name="a", kind="numeric", rows=2000, values=2000, psi=0.01, ks_statistic=0.02,
    ...                   ks_pvalue=0.5, null_rate=0.0, reference_null_rate=0.0)
    >>> bad = ok.model_copy(update={"name": "b", "psi": 0.5})
    >>> v = judge_drift(DriftStats(rows=2000, features=(ok, bad)), MonitoringPolicy())
    >>> v.status.value, v.drifted_features
    ('drift', ('b',))
    >>> judge_drift(DriftStats(rows=10, features=(ok, bad)), MonitoringPolicy()).status.value
    'not_judged'
    >>> worse = PerformanceStats(metric="rmse", task="regression", higher_is_better=False, rows=300, live=2.5,
    ...                          reference=2.0)
    >>> judge_drift(DriftStats(rows=2000, features=(ok,), performance=worse), MonitoringPolicy()).reasons
    ('performance drifted: rmse 2.5 on 300 outcomes vs 2 at validation: worse by 0.5 > max_performance_drop 0.05',)
    """
    features = tuple(judge_feature(s, policy) for s in stats.features)
    prediction = (judge_feature(stats.prediction, policy)
                  if stats.prediction is not None and policy.prediction_drift else None)
    performance = (judge_performance(stats.performance, policy)
                   if stats.performance is not None and policy.performance_drift else None)
    perf_judged = performance is not None and performance.drifted is not None

    def verdict(status: DriftStatus, reasons: list[str], drifted_features: tuple[str, ...] = ()) -> DriftVerdict:
        return DriftVerdict(status=status, drifted=status == DriftStatus.DRIFT, features=features,
                            prediction=prediction, performance=performance, drifted_features=drifted_features,
                            reasons=tuple(reasons))

    def performance_line() -> list[str]:
        if performance is None or performance.drifted is None:
            return []
        return [("performance drifted: " if performance.drifted else "performance stable: ") + performance.reasons[0]]

    if stats.rows < policy.min_rows:
        few = f"the window has {stats.rows} rows < min_rows {policy.min_rows}"
        if not perf_judged:
            return verdict(DriftStatus.NOT_JUDGED, [few])
        assert performance is not None
        status = DriftStatus.DRIFT if performance.drifted else DriftStatus.NO_DRIFT
        return verdict(status, [*performance_line(), f"{few}: feature and prediction drift not judged"])
    drifted_names = tuple(f.name for f in features if f.drifted)
    judged = [f for f in features if f.drifted is not None]
    pred_judged = prediction is not None and prediction.drifted is not None
    if not judged and not pred_judged and not perf_judged:
        return verdict(DriftStatus.NOT_JUDGED, ["no feature could be judged (see each feature's reason)"])
    reasons = []
    if len(drifted_names) >= policy.min_drifted_features:
        reasons.append(f"{len(drifted_names)} of {len(judged)} judged features drifted "
                       f"(>= min_drifted_features {policy.min_drifted_features}): {', '.join(drifted_names)}")
    if prediction is not None and prediction.drifted:
        reasons.append("predictions drifted: " + "; ".join(prediction.reasons))
    if performance is not None and performance.drifted:
        reasons += performance_line()
    if reasons:
        return verdict(DriftStatus.DRIFT, reasons, drifted_names)
    if judged or pred_judged:
        reasons.append(f"{len(drifted_names)} of {len(judged)} judged features drifted "
                       f"(< min_drifted_features {policy.min_drifted_features})"
                       + ("" if not pred_judged else "; predictions stable"))
    else:
        reasons.append("no feature or prediction could be judged (see each one's reason)")
    return verdict(DriftStatus.NO_DRIFT, [*reasons, *performance_line()], drifted_names)
