"""Drift statistics, verdict, policy and the drift job without Ray (``use_ray=False``): every
statistic against a reference computed another way on the same small arrays, then whole checks
on telemetry Parquet written with chosen timestamps into a real storage root and registry."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import special, stats

from mlplat.errors import ConfigError, NotFound, ValidationError
from mlplat.monitoring import DriftStatus, MonitoringPolicy, check_drift, compute_drift, parse_window
from mlplat.monitoring.drift import (
    KS_EXACT_MAX_N,
    DriftStats,
    FeatureStats,
    PerformanceStats,
    bin_counts,
    chi2_vs_reference,
    judge_drift,
    judge_feature,
    judge_performance,
    ks_vs_reference,
    psi,
)
from mlplat.monitoring.partials import (
    ColumnPlan,
    WindowPlan,
    feature_stats,
    merge_partials,
    reference_of_table,
    table_partial,
)
from mlplat.monitoring.policy import format_window
from mlplat.records import CATALOG_FEATURE_SET
from mlplat.registry import RegistryStore
from mlplat.storage import open_root

# -- statistics against independent references ------------------------------------------------


def _bins_by_loop(values, edges):
    out = [0] * (len(edges) + 1)
    for v in values:
        if math.isnan(v):
            continue
        if v < edges[0]:
            out[0] += 1
        elif v > edges[-1]:
            out[-1] += 1
        else:  # the first bin whose upper edge holds v; [e0, e1] holds e0 too
            out[1 + next(i for i in range(len(edges) - 1) if v <= edges[i + 1])] += 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bin_counts_matches_a_loop(seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 12, 300).astype(float)  # ties and repeated edges
    edges = sorted({*np.quantile(ref, np.linspace(0, 1, 11), method="lower").tolist()})
    edges = [edges[0], *edges]  # a zero-width first bin, as reference_stats makes for a heavy minimum
    live = np.concatenate([rng.integers(-2, 15, 200).astype(float), [np.nan, edges[0], edges[-1]]])
    assert bin_counts(live, edges).tolist() == _bins_by_loop(live, edges)


def test_psi_matches_a_hand_loop():
    rng = np.random.default_rng(3)
    for _ in range(20):
        e = rng.dirichlet(np.ones(8))
        a = rng.dirichlet(np.ones(8))
        e[rng.integers(0, 8)] = 0.0  # a bin empty on one side hits the epsilon floor
        want = 0.0
        for ei, ai in zip(e, a, strict=True):
            ei, ai = max(ei, 1e-4), max(ai, 1e-4)
            want += (ai - ei) * math.log(ai / ei)
        assert psi(e, a) == pytest.approx(want, rel=1e-12)
    assert psi([0.25] * 4, [0.25] * 4) == 0.0


def _ks_by_loop(live, edges, fractions):
    """max |F_live - F_ref| just below e0 and at every upper edge, one point at a time."""
    live = [v for v in live if not math.isnan(v)]
    n = len(live)
    worst = sum(v < edges[0] for v in live) / n
    cum = 0.0
    for k in range(1, len(edges)):
        cum += fractions[k - 1]
        worst = max(worst, abs(sum(v <= edges[k] for v in live) / n - cum))
    return worst


def _reference(sample):
    ref = reference_of_table(pa.table({"x": sample}))["x"]["histogram"]
    return ref["edges"], ref["fractions"]


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_ks_statistic_matches_a_loop(shift):
    rng = np.random.default_rng(4)
    edges, fractions = _reference(rng.normal(0, 1, 2000))
    live = rng.normal(shift, 1.2, 700)
    ks = ks_vs_reference(bin_counts(live, edges), fractions)
    assert ks.statistic == pytest.approx(_ks_by_loop(live, edges, fractions), abs=1e-12)
    assert ks.n == 700


def test_ks_statistic_matches_a_loop_on_integers_with_ties():
    rng = np.random.default_rng(5)
    edges, fractions = _reference(rng.integers(18, 80, 3000).astype(float))
    live = rng.integers(25, 90, 500).astype(float)
    assert ks_vs_reference(bin_counts(live, edges), fractions).statistic == pytest.approx(
        _ks_by_loop(live, edges, fractions), abs=1e-12)


def test_ks_is_a_lower_bound_of_scipys_full_sample_ks():
    """Against the exact uniform CDF at its deciles, the edge KS never exceeds scipy's."""
    rng = np.random.default_rng(6)
    edges, fractions = np.linspace(0, 1, 11).tolist(), [0.1] * 10
    for shift in (0.0, 0.05, 0.2):
        live = np.clip(rng.uniform(0, 1, 400) + shift, 0, 1)
        ours = ks_vs_reference(bin_counts(live, edges), fractions)
        full = stats.ks_1samp(live, stats.uniform.cdf)
        assert ours.statistic <= full.statistic + 1e-12
        assert ours.pvalue >= full.pvalue - 1e-12


def test_ks_pvalue_matches_scipy_where_the_statistics_coincide():
    # Every live value on the edge 0.3: the full-sample sup is at that edge, so both D agree.
    edges, fractions = np.linspace(0, 1, 11).tolist(), [0.1] * 10
    for n in (20, 300, 5000):
        live = np.full(n, 0.3)
        ours = ks_vs_reference(bin_counts(live, edges), fractions)
        full = stats.ks_1samp(live, stats.uniform.cdf, method="exact")
        assert ours.statistic == pytest.approx(full.statistic)
        assert ours.pvalue == pytest.approx(full.pvalue, rel=1e-9)


def test_ks_pvalue_past_the_exact_limit_is_kolmogorovs_series():
    n = 4 * KS_EXACT_MAX_N
    edges, fractions = [0.0, 1.0, 2.0], [0.5, 0.5]
    counts = [0, n // 2 + 150, n // 2 - 150, 0]
    ours = ks_vs_reference(counts, fractions)
    lam = math.sqrt(n) * 150 / n
    series = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    assert ours.statistic == pytest.approx(150 / n)
    assert ours.pvalue == pytest.approx(series, rel=1e-6)
    assert edges  # the edges play no part once the counts are binned


def _chi2_by_hand(obs, fractions):
    n = sum(obs)
    stat = sum((o - n * f) ** 2 / (n * f) for o, f in zip(obs, fractions, strict=True))
    dof = len(obs) - 1
    return stat, special.gammaincc(dof / 2, stat / 2), dof  # chi2 survival function, another route


def test_chi2_matches_a_hand_computation():
    obs, fractions = [48, 35, 17, 100], [0.2, 0.2, 0.1, 0.5]
    stat, p, dof = _chi2_by_hand(obs, fractions)
    r = chi2_vs_reference(obs, fractions)
    assert (r.statistic, r.dof, r.n) == (pytest.approx(stat), dof, 200)
    assert r.pvalue == pytest.approx(p, rel=1e-9)
    assert r.effect == pytest.approx(math.sqrt(stat / 200))


def test_chi2_pools_bins_expected_below_five():
    # n=100: the 0.02 and 0.01 bins expect 2 and 1 -> pooled into one bin expecting 3, still
    # below 5 -> joined to the smallest other bin (0.07, expecting 7): three bins remain.
    obs, fractions = [50, 38, 6, 4, 2], [0.5, 0.4, 0.07, 0.02, 0.01]
    stat, p, dof = _chi2_by_hand([50, 38, 12], [0.5, 0.4, 0.1])
    r = chi2_vs_reference(obs, fractions)
    assert (r.statistic, r.dof) == (pytest.approx(stat), dof)
    assert r.pvalue == pytest.approx(p, rel=1e-9)


def test_chi2_sees_an_unseen_category():
    # "other" never seen in the reference: expected 1000 * 1e-4 / (1 + 1e-4), pooled into the first bin.
    r = chi2_vs_reference([400, 400, 200], [0.5, 0.5, 0.0])
    e = 1000 * np.array([0.5, 0.5, 1e-4]) / (1 + 1e-4)
    stat, p, dof = _chi2_by_hand([600, 400], [(e[0] + e[2]) / 1000, e[1] / 1000])
    assert (r.statistic, r.dof) == (pytest.approx(stat), dof) and r.pvalue == pytest.approx(p, rel=1e-9)
    assert r.pvalue < 1e-9 and r.effect > 0.1
    assert psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]) > 1  # PSI sees it far more strongly


# -- the verdict (pure) ----------------------------------------------------------------------

POLICY = MonitoringPolicy(min_rows=100)
NUM = FeatureStats(name="x", kind="numeric", rows=1000, values=1000, psi=0.02, ks_statistic=0.03, ks_pvalue=0.4,
                   null_rate=0.0, reference_null_rate=0.0)
CAT = FeatureStats(name="c", kind="categorical", rows=1000, values=1000, psi=0.02, chi2_statistic=3.0, chi2_pvalue=0.5,
                   chi2_effect=0.05, chi2_dof=3, null_rate=0.01, reference_null_rate=0.0)


@pytest.mark.parametrize(("stats_", "drifted", "reason"), [
    (NUM, False, None),
    (NUM.model_copy(update={"psi": 0.25}), True, "PSI 0.25 > 0.2"),
    (NUM.model_copy(update={"ks_statistic": 0.15, "ks_pvalue": 1e-5}), True, "KS D 0.15 >= 0.1"),
    (NUM.model_copy(update={"ks_statistic": 0.05, "ks_pvalue": 1e-5}), False, None),  # significant, too small
    (NUM.model_copy(update={"ks_statistic": 0.3, "ks_pvalue": 0.02}), False, None),  # large, not significant
    (NUM.model_copy(update={"null_rate": 0.2}), True, "null rate 20.0% vs reference 0.0%"),
    (NUM.model_copy(update={"values": 50, "null_rate": 0.95}), True, "null rate 95.0%"),
    (NUM.model_copy(update={"values": 50}), None, "50 non-null values < min_rows 100"),
    (NUM.model_copy(update={"rows": 50}), None, "50 rows < min_rows 100"),
    (FeatureStats(name="x", note="absent from telemetry in this window"), None, "absent from telemetry"),
    (CAT, False, None),
    (CAT.model_copy(update={"chi2_pvalue": 1e-6, "chi2_effect": 0.2}), True, "chi2 w 0.2 >= 0.1"),
    (CAT.model_copy(update={"chi2_pvalue": 1e-6, "chi2_effect": 0.05}), False, None),
    (CAT.model_copy(update={"psi": 0.5}), True, "PSI 0.5 > 0.2"),
])
def test_judge_feature(stats_, drifted, reason):
    verdict = judge_feature(stats_, POLICY)
    assert verdict.drifted is drifted
    if reason is None:
        assert verdict.reasons == ()
    else:
        assert any(reason in r for r in verdict.reasons), verdict.reasons
    assert verdict.thresholds["psi_max"] == 0.2


BAD = NUM.model_copy(update={"name": "y", "psi": 0.4})
PRED_BAD = NUM.model_copy(update={"name": "prediction", "psi": 0.4})


@pytest.mark.parametrize(("stats_", "policy", "status", "drifted_features"), [
    (DriftStats(rows=1000, features=(NUM, CAT)), POLICY, DriftStatus.NO_DRIFT, ()),
    (DriftStats(rows=1000, features=(NUM, BAD)), POLICY, DriftStatus.DRIFT, ("y",)),
    (DriftStats(rows=1000, features=(NUM, BAD)), POLICY.model_copy(update={"min_drifted_features": 2}),
     DriftStatus.NO_DRIFT, ("y",)),
    (DriftStats(rows=1000, features=(NUM,), prediction=PRED_BAD), POLICY, DriftStatus.DRIFT, ()),
    (DriftStats(rows=1000, features=(NUM,), prediction=PRED_BAD), POLICY.model_copy(update={"prediction_drift": False}),
     DriftStatus.NO_DRIFT, ()),
    (DriftStats(rows=50, features=(BAD,)), POLICY, DriftStatus.NOT_JUDGED, ()),
    (DriftStats(rows=1000, features=(FeatureStats(name="x", note="absent"),)), POLICY, DriftStatus.NOT_JUDGED, ()),
])
def test_judge_drift(stats_, policy, status, drifted_features):
    verdict = judge_drift(stats_, policy)
    assert verdict.status == status
    assert verdict.drifted == (status == DriftStatus.DRIFT)
    assert verdict.drifted_features == drifted_features
    assert verdict.reasons


# -- policy and windows ----------------------------------------------------------------------


def test_policy_defaults_and_fields():
    assert MonitoringPolicy.from_serving_policy(None) == MonitoringPolicy()
    p = MonitoringPolicy.from_serving_policy({"placement": "pool", "monitoring": {"window": "24h", "features": ["a"],
                                                                                  "min_rows": 10}})
    assert (p.window_s, p.features, p.min_rows, p.psi_max) == (86400, ("a",), 10, 0.2)


@pytest.mark.parametrize(("monitoring", "message"), [
    ({"psi_mx": 0.1}, "serving_policy.monitoring.psi_mx: unknown key"),
    ({"psi_max": "high"}, "serving_policy.monitoring.psi_max: Input should be a valid number"),
    ({"ks_pvalue_min": 2}, "serving_policy.monitoring.ks_pvalue_min: Input should be less than or equal to 1"),
    ({"window": "1 week"}, "serving_policy.monitoring.window: window '1 week': expected a positive integer"),
    ({"min_rows": 0}, "serving_policy.monitoring.min_rows"),
    ("strict", "serving_policy.monitoring: got str 'strict'"),
])
def test_policy_errors_name_the_field_in_one_line(monitoring, message):
    with pytest.raises(ConfigError) as err:
        MonitoringPolicy.from_serving_policy({"monitoring": monitoring})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800),
                                               ("90s", 90), (" 2h ", 7200)])
def test_parse_window(text, seconds):
    assert parse_window(text) == seconds
    assert parse_window(format_window(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "-1h", "1.5h", "1w", "400d", None])
def test_parse_window_refuses(text):
    with pytest.raises(ValidationError, match="window"):
        parse_window(text)


# -- partials --------------------------------------------------------------------------------

PLAN = WindowPlan(100.0, 200.0, 1, (ColumnPlan("x", "feature.x", "numeric", edges=(0.0, 1.0, 2.0)),
                                    ColumnPlan("c", "feature.c", "categorical", categories=("3", "true", "fr")),
                                    ColumnPlan("prediction", "prediction", "sketch")))


def test_partials_merge_like_one_table():
    rng = np.random.default_rng(7)
    n = 1000
    table = pa.table({"ts": rng.uniform(50, 250, n), "version": rng.integers(1, 3, n), "feature.x": rng.normal(1, 1, n),
                      "feature.c": rng.choice(["3", "true", "fr", "zz"], n), "prediction": rng.uniform(0, 1, n),
                      "extra": np.zeros(n)})
    whole = table_partial(table, PLAN)
    parts = [table_partial(table.slice(i, 100), PLAN) for i in range(0, n, 100)]
    merged = parts[0]
    for p in reversed(parts[1:]):
        merged = merge_partials(merged, p)
    assert merged["rows"] == whole["rows"] == int(np.sum((table["ts"].to_numpy() >= 100) & (table["ts"].to_numpy() < 200)
                                                          & (table["version"].to_numpy() == 1)))
    assert merged["columns"]["x"]["bins"] == whole["columns"]["x"]["bins"]
    assert merged["columns"]["c"]["stats"]["counts"] == whole["columns"]["c"]["stats"]["counts"]
    assert merged["columns"]["x"]["stats"]["moments"]["mean"] == pytest.approx(whole["columns"]["x"]["stats"]["moments"]["mean"])
    assert merged["columns"]["prediction"]["kind"] == "numeric"


def test_partials_read_loosely_typed_telemetry():
    """Numbers sent as text, integral floats as categories, Python's True, null-typed and
    missing columns: read the way the feature set keyed them."""
    a = pa.table({"ts": [150.0] * 4, "version": [1] * 4, "feature.x": ["0.5", "1.5", "oops", None],
                  "feature.c": [3.0, 3.0, None, float("nan")], "prediction": pa.nulls(4)})
    b = pa.table({"ts": [150.0] * 3, "version": [1] * 3, "feature.c": ["True", "fr", "x"],
                  "prediction": ["[0.1, 0.9]", "[0.2, 0.8]", None]})
    p = merge_partials(table_partial(a, PLAN), table_partial(b, PLAN))
    x, c, pred = p["columns"]["x"], p["columns"]["c"], p["columns"]["prediction"]
    assert p["rows"] == 7
    assert (x["present"], x["invalid"], x["bins"], x["stats"]["nulls"]) == (4, 1, [0, 1, 1, 0], 5)
    assert c["stats"]["counts"] == {"3": 2, "true": 1, "fr": 1, "x": 1} and c["stats"]["nulls"] == 2
    assert pred["kind"] == "vector"
    fs = feature_stats("c", {"type": "categorical", "frequencies": {"3": 0.5, "true": 0.25, "fr": 0.25},
                             "other_fraction": 0.0, "null_rate": 0.0}, c, 7)
    assert fs.bins == ("3", "true", "fr", "__other__") and fs.live_fractions == (0.4, 0.2, 0.2, 0.2)
    assert fs.null_rate == pytest.approx(2 / 7)


# -- the drift job without Ray -----------------------------------------------------------------

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
HOUR = 3600.0


def _rows(rng, n, ts0, *, version=1, age_shift=0.0, countries=(0.5, 0.3, 0.2), pred_shift=0.0, with_age=True):
    age = rng.normal(40 + age_shift, 10, n)
    cols = {"ts": np.sort(rng.uniform(ts0, ts0 + HOUR, n)), "model": ["churn"] * n, "version": np.full(n, version),
            "request_id": [f"r{i}" for i in range(n)], "latency_ms": np.ones(n)}
    if with_age:
        cols["feature.age"] = age
    cols["feature.country"] = rng.choice(["de", "fr", "us"], n, p=list(countries))
    cols["prediction"] = 1 / (1 + np.exp(-(age - 40) / 10)) + pred_shift
    return pa.table(cols)


def write_telemetry(storage, model, table, writer="w0"):
    """Telemetry Parquet as the serving writer lays it out (UTC date partitions, flush-ms names)."""
    days = [dt.datetime.fromtimestamp(t, dt.timezone.utc).date().isoformat() for t in table["ts"].to_pylist()]
    for i, day in enumerate(sorted(set(days))):
        part = table.filter(pa.array([d == day for d in days]))
        sink = io.BytesIO()
        pq.write_table(part, sink)
        flushed_ms = int(max(part["ts"].to_pylist()) * 1000) + 1
        storage.write_bytes(sink.getvalue(), "telemetry", model, f"date={day}", f"{writer}-{flushed_ms}-{i}.parquet")


def register_model(storage, registry, name, reference, *, monitoring=None, labels=("clicked",), fs="churn-fs"):
    """A model version whose feature set's stats.json holds ``reference``'s raw statistics."""
    try:
        entry = registry.catalog_get(CATALOG_FEATURE_SET, fs)
    except NotFound:
        entry = registry.catalog_register(CATALOG_FEATURE_SET, fs, {
            "status": "ready", "spec": {}, "source": {"name": "src", "version": 1}, "path": f"features/{fs}/v1",
            "data_path": f"features/{fs}/v1/data", "label_columns": list(labels)})
        storage.write_json({"feature_set": fs, "version": 1, "raw": reference_of_table(reference)},
                           "features", fs, "v1", "stats.json")
    registry.create_model(name, serving_policy={"monitoring": monitoring or {"min_rows": 200, "prediction_reference": "1h"}})
    return registry.register_version(name, feature_set={"name": fs, "version": entry.version}).version


@pytest.fixture
def env(tmp_path):
    storage = open_root(str(tmp_path / "root"))
    registry = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    rng = np.random.default_rng(11)
    reference = pa.table({"age": rng.normal(40, 10, 5000), "country": rng.choice(["de", "fr", "us"], 5000, p=[0.5, 0.3, 0.2]),
                          "clicked": rng.integers(0, 2, 5000)})
    register_model(storage, registry, "churn", reference)
    write_telemetry(storage, "churn", _rows(rng, 2000, T0))  # the first hour: the prediction reference
    return storage, registry, rng


def _features(result):
    return {f.name: f for f in result.verdict.features}


def test_same_distribution_is_not_drift(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR))
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    assert result.verdict.status == DriftStatus.NO_DRIFT, result.verdict
    assert [f.name for f in result.stats.features] == ["age", "country"]  # the label is not watched
    assert result.rows == 3000 and result.version == 1 and result.window == "1h"
    assert all(f.drifted is False for f in result.verdict.features)
    assert result.verdict.prediction is not None and result.verdict.prediction.drifted is False
    age = result.stats.features[0]
    assert age.psi < 0.05 and age.ks_pvalue > 0.01 and len(age.bins) == 12


def test_shifted_numeric_feature_is_drift(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR, age_shift=8.0))
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    assert result.verdict.status == DriftStatus.DRIFT
    assert result.verdict.drifted_features == ("age",)
    reasons = " ".join(_features(result)["age"].reasons)
    assert "PSI" in reasons and "KS D" in reasons
    assert result.verdict.prediction.drifted is True  # the predictions follow age


def test_shifted_categorical_feature_is_drift(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR, countries=(0.2, 0.3, 0.5)))
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    assert result.verdict.drifted_features == ("country",)
    country = _features(result)["country"]
    assert country.kind == "categorical" and any("chi2 w" in r for r in country.reasons)


def test_window_selects_by_ts_and_version(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 500, T0 + 2 * HOUR, version=2, age_shift=30), writer="w1")
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR))
    result = compute_drift(storage, registry, "churn", window="30m", end=T0 + 3 * HOUR, version=1, use_ray=False)
    assert 1300 < result.rows < 1700 and result.verdict.status == DriftStatus.NO_DRIFT


def test_feature_missing_from_telemetry_is_a_note(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR, with_age=False))
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    age = _features(result)["age"]
    assert age.drifted is None and age.reasons == ("absent from telemetry in this window",)
    assert result.verdict.status == DriftStatus.NO_DRIFT  # country and the predictions were judged


def test_prediction_reference_overlap_is_a_note(env):
    storage, registry, _ = env
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + HOUR, use_ray=False)
    assert result.verdict.prediction.drifted is None
    assert "prediction reference period" in result.verdict.prediction.reasons[0]


def test_bad_inputs_are_clear_errors(env, tmp_path):
    storage, registry, rng = env
    with pytest.raises(NotFound, match=r"no telemetry of churn v1 between 2027-01-16T07:00:00Z and 2027-01-16T08:00:00Z"):
        compute_drift(storage, registry, "churn", window="1h", end=T0 + 24 * HOUR, use_ray=False)
    with pytest.raises(NotFound):
        compute_drift(storage, registry, "nope", use_ray=False)
    with pytest.raises(ValidationError, match="window '1y'"):
        compute_drift(storage, registry, "churn", window="1y", use_ray=False)
    registry.create_model("bare")
    registry.register_version("bare")
    with pytest.raises(NotFound, match="bare v1 has no reference statistics: it records no feature set"):
        compute_drift(storage, registry, "bare", use_ray=False)
    storage.delete("features", "churn-fs", "v1", "stats.json")
    with pytest.raises(NotFound, match=r"churn v1 has no reference statistics: file://.*stats.json is missing"):
        compute_drift(storage, registry, "churn", use_ray=False)
    registry.update_model("churn", serving_policy={"monitoring": {"psi_max": 0}})
    with pytest.raises(ConfigError, match="serving_policy.monitoring.psi_max"):
        compute_drift(storage, registry, "churn", use_ray=False)


def test_check_writes_report_history_and_event(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 2000, T0 + 2 * HOUR))
    write_telemetry(storage, "churn", _rows(rng, 2000, T0 + 3 * HOUR, age_shift=8.0), writer="w1")
    first = check_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    second = check_drift(storage, registry, "churn", window="1h", end=T0 + 4 * HOUR, use_ray=False)
    assert (first.verdict.drifted, second.verdict.drifted) == (False, True)
    stamp = "20270115T120000Z-1h"
    assert second.report == storage.uri_of("reports", "churn", "drift", stamp)
    names = storage.list_dir("reports", "churn", "drift", stamp)
    assert {"index.html", "drift.json", "scores-over-time.png", "prediction.png"} <= set(names)
    assert sum(n.startswith("feature-") and n.endswith(".png") for n in names) == 2
    saved = storage.read_json("reports", "churn", "drift", stamp, "drift.json")
    assert saved["verdict"]["status"] == "drift" and saved["report"] == second.report
    html = storage.read_bytes("reports", "churn", "drift", stamp, "index.html").decode()
    assert "DRIFT" in html and "age" in html and "the 1 before it" in html
    assert storage.exists("reports", "churn", "drift-reference", "v1.json")  # the prediction reference, kept
    events = registry.events_since(0, subject="model:churn", kinds="drift_checked")
    assert [e.payload["drifted"] for e in events] == [False, True]
    assert events[-1].payload["drifted_features"] == ["age"] and events[-1].version == 1
    assert events[-1].payload["report"] == second.report and len(json.dumps(events[-1].payload)) < 1000


def test_prediction_reference_starts_at_the_promotion_not_the_canary_slice(tmp_path):
    storage = open_root(str(tmp_path / "root"))
    registry = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    rng = np.random.default_rng(5)
    reference = pa.table({"age": rng.normal(40, 10, 5000), "country": rng.choice(["de", "fr", "us"], 5000, p=[0.5, 0.3, 0.2]),
                          "clicked": rng.integers(0, 2, 5000)})
    version = register_model(storage, registry, "churn", reference)
    now = time.time()
    # as a canary, v1 answered a slice of the traffic whose predictions differ from its full traffic's
    write_telemetry(storage, "churn", _rows(rng, 1500, now - 6 * HOUR, pred_shift=0.3), writer="canary0")
    write_telemetry(storage, "churn", _rows(rng, 1500, now - 4 * HOUR, pred_shift=0.3), writer="canary1")
    before = compute_drift(storage, registry, "churn", window="1h", end=now - 3 * HOUR, version=version, use_ray=False)
    assert before.prediction_reference["from"] == "first_telemetry"  # never promoted yet: the fallback
    assert before.prediction_reference["start_s"] == pytest.approx(now - 6 * HOUR, abs=10)
    kept = storage.read_json("reports", "churn", "drift-reference", f"v{version}.json")
    assert kept["reference"] and kept["start_s"] == before.prediction_reference["start_s"]
    # promoted: from now on v1 takes all the traffic
    promoted = registry.append_event("promoted", "model:churn", {"previous": None, "region": None}, version=version)
    registry.append_event("promoted", "model:churn", {"previous": version, "region": None}, version=version + 1)
    p = promoted.ts
    write_telemetry(storage, "churn", _rows(rng, 2000, p), writer="full0")  # the reference period
    write_telemetry(storage, "churn", _rows(rng, 2000, p + 2 * HOUR), writer="full1")
    during = compute_drift(storage, registry, "churn", window="1h", end=p + HOUR, version=version, use_ray=False)
    assert during.verdict.prediction.drifted is None  # the canary-period reference is not reused meanwhile
    assert "since its promotion" in during.verdict.prediction.reasons[0]
    after = compute_drift(storage, registry, "churn", window="1h", end=p + 3 * HOUR, version=version, use_ray=False)
    assert after.prediction_reference["start_s"] == p and after.prediction_reference["from"] == "promoted"
    assert after.verdict.prediction.drifted is False, after.verdict.prediction  # full traffic against full traffic
    kept = storage.read_json("reports", "churn", "drift-reference", f"v{version}.json")
    assert kept["start_s"] == p and kept["start_from"] == "promoted"


def test_the_reference_start_is_searched_for_once(env, monkeypatch):
    import mlplat.monitoring.job as job
    from mlplat.monitoring import window

    storage, registry, _ = env
    first = compute_drift(storage, registry, "churn", window="1h", end=T0 + HOUR, use_ray=False)
    assert first.verdict.prediction.drifted is None and first.prediction_reference["start_s"] == pytest.approx(T0, abs=5)

    def searched(*args, **kwargs):
        raise AssertionError("the telemetry was searched for the first row again")

    monkeypatch.setattr(job, "first_telemetry_s", searched)  # another process: the drift-reference file remembers
    second = compute_drift(storage, registry, "churn", window="1h", end=T0 + HOUR + 60, use_ray=False)
    assert second.prediction_reference["start_s"] == first.prediction_reference["start_s"]
    monkeypatch.undo()
    # and in memory, per (model, version)
    t0 = window.first_telemetry_s(storage, "churn", 1)
    scans: list[str] = []
    monkeypatch.setattr(window, "_scan", lambda storage_, path, *a, **k: scans.append(path) or iter(()))
    assert window.first_telemetry_s(storage, "churn", 1) == t0 and scans == []
    assert window.first_telemetry_s(storage, "churn", 1, cached=False) is None and scans  # read again: nothing found


@pytest.mark.parametrize(("text", "message"), [
    ("1800000000000", "'1800000000000': 1800000000000 is after the year 3000; it looks like milliseconds: divide by 1000"),
    ("1.8e18", "is after the year 3000; it looks like micro- or nanoseconds"),
    ("nan", "'nan': not a finite number"),
    ("inf", "'inf': not a finite number"),
    ("-5", "'-5': -5 is before 1970-01-01"),
    ("9999-01-01T00:00:00Z", "'9999-01-01T00:00:00Z'"),
    ("next tuesday", "expected unix seconds or an ISO 8601 time"),
])
def test_parse_end_refuses_what_is_not_a_plausible_time(text, message):
    from mlplat.cli.monitor import parse_end

    with pytest.raises(ValidationError) as info:
        parse_end(text)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert parse_end("1800000000") == 1_800_000_000.0 and parse_end("2027-01-15T08:00:00") == T0


def _drift_job():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "jobs" / "drift.py"
    spec = importlib.util.spec_from_file_location("jobs_drift", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drift_job_turns_errors_into_one_line_and_exit_2(monkeypatch, capsys):
    job = _drift_job()
    calls = []

    class Platform:
        def drift(self, name, **kwargs):
            calls.append(kwargs)
            raise ValueError("year 59000 is out of range\n(from somewhere deep)")

    monkeypatch.setattr(job, "connect", lambda **kwargs: Platform())
    assert job.main(["--model", "churn", "--end", "1800000000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "looks like milliseconds: divide by 1000" in err and calls == []
    assert job.main(["--model", "churn", "--end", "nan"]) == 2 and "not a finite number" in capsys.readouterr().err
    assert job.main(["--model", "churn"]) == 2  # any ValueError from the check: one line, no traceback
    err = capsys.readouterr().err
    assert err == "error: year 59000 is out of range (from somewhere deep)\n"


# -- performance drift (outcomes) ----------------------------------------------------------------


def _auc_by_pairs(y, p):
    """P(score of a positive > score of a negative), ties half: one pair at a time."""
    pos = [s for s, t in zip(p, y, strict=True) if t == 1]
    neg = [s for s, t in zip(p, y, strict=True) if t == 0]
    wins = 0.0
    for a in pos:
        for b in neg:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (len(pos) * len(neg))


def _rmse_by_loop(y, p):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(y, p, strict=True)) / len(y))


def write_outcomes(storage, model, *, labels, predictions, ts, version=1, batch="b1"):
    """An outcome batch as ``ingest_outcomes`` writes it (the columns of OUTCOME_COLUMNS)."""
    n = len(labels)
    table = pa.table({"request_id": [f"{batch}-{i}" for i in range(n)], "request_row": pa.nulls(n, pa.int64()),
                      "label": pa.array(labels, pa.float64()), "prediction": predictions,
                      "version": pa.array(np.broadcast_to(version, n), pa.int64()), "ts": pa.array(ts, pa.float64()),
                      "entity": pa.nulls(n, pa.string()), "outcome_ts": pa.nulls(n, pa.float64())})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(sink.getvalue(), "outcomes", model, f"{batch}.parquet")


def _binary_outcomes(rng, n, *, flip=0.0):
    """Probabilities and labels drawn from them (a calibrated model), a share ``flip`` of the
    labels then flipped (the world changed)."""
    p = rng.uniform(0, 1, n)
    y = (rng.uniform(0, 1, n) < p).astype(float)
    flipped = rng.uniform(0, 1, n) < flip
    return np.where(flipped, 1 - y, y), p


@pytest.fixture
def binary_env(env):
    """The churn fixture with a binary bundle spec, a validation AUC measured on a sample like
    the live one, and the window's telemetry (T0 + 2h .. T0 + 3h)."""
    storage, registry, rng = env
    storage.write_json({"format": 1, "spec": {"task": "binary"}}, "models", "churn", "v1", "bundle.json")
    y, p = _binary_outcomes(np.random.default_rng(100), 800)
    reference = _auc_by_pairs(y, p)
    registry.update_version("churn", 1, metrics={"validation": {"auc": reference, "log_loss": 0.5}})
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR))
    return storage, registry, rng, reference


def _window_ts(rng, n):
    return rng.uniform(T0 + 2 * HOUR, T0 + 3 * HOUR, n)


def test_outcomes_of_the_same_quality_are_no_performance_drift(binary_env):
    storage, registry, rng, reference = binary_env
    y, p = _binary_outcomes(rng, 600)
    write_outcomes(storage, "churn", labels=y, predictions=p, ts=_window_ts(rng, 600))
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    perf, pv = result.stats.performance, result.verdict.performance
    assert (perf.task, perf.metric, perf.rows, perf.higher_is_better) == ("binary", "auc", 600, True)
    assert perf.live == pytest.approx(_auc_by_pairs(y, p), abs=1e-3) and perf.reference == reference
    assert set(perf.live_metrics) == {"auc", "log_loss", "accuracy", "f1", "ece"}
    assert pv.drifted is False and abs(pv.drop) < 0.05 and pv.threshold == 0.05
    assert result.verdict.status == DriftStatus.NO_DRIFT
    assert any(r.startswith("performance stable: auc") for r in result.verdict.reasons)
    assert result.notes == ()


def test_degraded_labels_are_performance_drift_with_the_right_numbers(binary_env):
    storage, registry, rng, reference = binary_env
    y, p = _binary_outcomes(rng, 600, flip=0.35)
    ts = _window_ts(rng, 600)
    write_outcomes(storage, "churn", labels=y, predictions=p, ts=ts)
    # Rows another version predicted, or predicted outside the window, do not count.
    write_outcomes(storage, "churn", labels=1 - y[:100], predictions=p[:100], ts=ts[:100], version=2, batch="b2")
    write_outcomes(storage, "churn", labels=1 - y[:100], predictions=p[:100], ts=ts[:100] - 2 * HOUR, batch="b3")
    result = check_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    want = _auc_by_pairs(y, p)
    perf, pv = result.stats.performance, result.verdict.performance
    assert perf.rows == 600 and perf.files == 3 and perf.skipped == 0
    assert pv.live == pytest.approx(want, abs=1e-3) and pv.reference == reference
    assert pv.drop == pytest.approx(reference - want, abs=1e-3) and pv.drop > 0.05
    assert pv.drifted is True
    assert result.verdict.status == DriftStatus.DRIFT and result.verdict.drifted_features == ()
    assert result.verdict.reasons[0].startswith("performance drifted: auc")
    assert f"on 600 outcomes vs {reference:.4g} at validation" in result.verdict.reasons[0]
    event = registry.events_since(0, subject="model:churn", kinds="drift_checked")[-1]
    assert event.payload["drifted"] is True and event.payload["performance_drifted"] is True
    assert event.payload["performance_metric"] == "auc" and event.payload["performance_outcomes"] == 600
    assert event.payload["performance_live"] == pytest.approx(want, abs=1e-3)
    assert event.payload["performance_reference"] == reference
    html = storage.read_bytes("reports", "churn", "drift", result.stamp, "index.html").decode()
    assert "<h2>Performance</h2>" in html and "performance drifted" in html
    saved = storage.read_json("reports", "churn", "drift", result.stamp, "drift.json")
    assert saved["verdict"]["performance"]["drifted"] is True

    from mlplat.cli.monitor import render

    text = render(result)
    assert "PERFORMANCE" in text and "WORSE BY" in text and f"{pv.drop:.3g}" in text


def test_regression_performance_is_judged_in_the_metrics_direction(env):
    storage, registry, rng = env
    registry.update_model("churn", task_type="regression")  # no bundle: the model's task type
    registry.update_version("churn", 1, metrics={"validation": {"rmse": 1.0, "mae": 0.8, "r2": 0.9}})
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR))
    y = rng.normal(10, 3, 400)
    p = y + rng.normal(0, 1.5, 400)  # errors 1.5 wide: rmse up from 1.0
    write_outcomes(storage, "churn", labels=y, predictions=p, ts=_window_ts(rng, 400))
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    pv = result.verdict.performance
    want = _rmse_by_loop(y, p)
    assert (pv.metric, pv.rows) == ("rmse", 400) and result.stats.performance.higher_is_better is False
    assert pv.live == pytest.approx(want, rel=1e-9) and pv.drop == pytest.approx(want - 1.0, rel=1e-9)
    assert pv.drifted is True and "worse by" in pv.reasons[0]
    lenient = MonitoringPolicy(min_rows=200, prediction_reference="1h", max_performance_drop=1.0)
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False, policy=lenient)
    assert result.verdict.performance.drifted is False and result.verdict.status == DriftStatus.NO_DRIFT
    # A metric where higher is better, named by the policy: r2 falls.
    by_r2 = MonitoringPolicy(min_rows=200, prediction_reference="1h", performance_metric="r2")
    pv = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False, policy=by_r2).verdict.performance
    r2 = 1 - sum((a - b) ** 2 for a, b in zip(y, p, strict=True)) / sum((a - y.mean()) ** 2 for a in y)
    assert pv.metric == "r2" and pv.live == pytest.approx(r2, rel=1e-9) and pv.drop == pytest.approx(0.9 - r2, rel=1e-9)


def test_too_few_outcomes_are_not_judged(binary_env):
    storage, registry, rng, _ = binary_env
    y, p = _binary_outcomes(rng, 50, flip=0.5)
    write_outcomes(storage, "churn", labels=y, predictions=p, ts=_window_ts(rng, 50))
    result = check_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    pv = result.verdict.performance
    assert pv.drifted is None and pv.reasons == ("50 outcomes < min_outcomes 100",) and pv.rows == 50
    assert result.verdict.status == DriftStatus.NO_DRIFT  # the features decide
    assert not any("performance" in r for r in result.verdict.reasons)
    event = registry.events_since(0, subject="model:churn", kinds="drift_checked")[-1]
    assert event.payload["performance_drifted"] is None and event.payload["performance_outcomes"] == 50
    from mlplat.cli.monitor import render

    assert "performance: not judged: 50 outcomes < min_outcomes 100" in render(result)


def test_without_outcomes_there_is_no_performance(env):
    storage, registry, rng = env
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR))
    result = check_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    assert result.stats.performance is None and result.verdict.performance is None
    event = registry.events_since(0, subject="model:churn", kinds="drift_checked")[-1]
    assert event.payload["performance_drifted"] is None and event.payload["performance_metric"] is None
    html = storage.read_bytes("reports", "churn", "drift", result.stamp, "index.html").decode()
    assert "<h2>Performance</h2>" not in html


@pytest.mark.parametrize(("setup", "note"), [
    ("multiclass", "multiclass predictions are vectors"),
    ("no_validation", "v1 has no validation value of auc (metrics.validation.auc)"),
    ("vectors", "none of the window's 300 outcome rows has a numeric label and prediction"),
    ("labels", "outcomes not scored: binary labels must be 0 or 1"),
    ("metric", "performance_metric 'rmse' is not computed for task 'binary'"),
    ("off", "performance drift is off in the monitoring policy"),
])
def test_what_keeps_performance_from_being_judged_is_a_note(env, setup, note):
    storage, registry, rng = env
    storage.write_json({"spec": {"task": "multiclass" if setup == "multiclass" else "binary"}},
                       "models", "churn", "v1", "bundle.json")
    if setup != "no_validation":
        registry.update_version("churn", 1, metrics={"validation": {"auc": 0.8, "accuracy": 0.7}})
    write_telemetry(storage, "churn", _rows(rng, 3000, T0 + 2 * HOUR))
    y, p = _binary_outcomes(rng, 300)
    predictions = [json.dumps([1 - v, v]) for v in p] if setup == "vectors" else p
    write_outcomes(storage, "churn", labels=y * 3 if setup == "labels" else y, predictions=predictions,
                   ts=_window_ts(rng, 300))
    policy = {"min_rows": 200, "prediction_reference": "1h"}
    policy |= {"performance_metric": "rmse"} if setup == "metric" else {}
    policy |= {"performance_drift": False} if setup == "off" else {}
    registry.update_model("churn", serving_policy={"monitoring": policy})
    result = compute_drift(storage, registry, "churn", window="1h", end=T0 + 3 * HOUR, use_ray=False)
    assert note in result.stats.performance.note
    if setup == "off":
        assert result.verdict.performance is None
    else:
        assert result.verdict.performance.drifted is None and note in result.verdict.performance.reasons[0]
    assert result.verdict.status == DriftStatus.NO_DRIFT


def test_judge_drift_with_performance():
    worse = PerformanceStats(metric="auc", task="binary", higher_is_better=True, rows=500, live=0.70, reference=0.80)
    same = worse.model_copy(update={"live": 0.79})
    better = worse.model_copy(update={"live": 0.85})
    few = worse.model_copy(update={"rows": 99})
    v = judge_drift(DriftStats(rows=1000, features=(NUM,), performance=worse), POLICY)
    assert v.status == DriftStatus.DRIFT and v.performance.drop == pytest.approx(0.10)
    assert v.reasons == ("performance drifted: auc 0.7 on 500 outcomes vs 0.8 at validation: worse by 0.1 > "
                         "max_performance_drop 0.05",)
    v = judge_drift(DriftStats(rows=1000, features=(NUM,), performance=same), POLICY)
    assert v.status == DriftStatus.NO_DRIFT and v.performance.drifted is False
    assert v.reasons[-1].startswith("performance stable: auc 0.79") and "worse by 0.01 <=" in v.reasons[-1]
    assert "better by 0.05" in judge_performance(better, POLICY).reasons[0]
    assert judge_performance(few, POLICY).drifted is None
    assert judge_performance(worse.model_copy(update={"live": None}), POLICY).reasons[0].startswith("auc is undefined")
    # Features and performance drift together: both reasons.
    v = judge_drift(DriftStats(rows=1000, features=(NUM, BAD), performance=worse), POLICY)
    assert v.drifted_features == ("y",) and len(v.reasons) == 2
    # Too few window rows for the features: performance alone decides.
    v = judge_drift(DriftStats(rows=50, features=(BAD,), performance=worse), POLICY)
    assert v.status == DriftStatus.DRIFT and v.drifted_features == () and "feature and prediction drift not judged" in v.reasons[-1]
    v = judge_drift(DriftStats(rows=50, features=(BAD,), performance=same), POLICY)
    assert v.status == DriftStatus.NO_DRIFT
    assert judge_drift(DriftStats(rows=50, features=(BAD,), performance=few), POLICY).status == DriftStatus.NOT_JUDGED
    # Nothing else judged, performance judged: a verdict.
    absent = FeatureStats(name="x", note="absent")
    assert judge_drift(DriftStats(rows=1000, features=(absent,), performance=same), POLICY).status == DriftStatus.NO_DRIFT
    # Off in the policy: not looked at.
    off = POLICY.model_copy(update={"performance_drift": False})
    v = judge_drift(DriftStats(rows=1000, features=(NUM,), performance=worse), off)
    assert v.status == DriftStatus.NO_DRIFT and v.performance is None


def test_policy_performance_fields():
    p = MonitoringPolicy()
    assert (p.performance_drift, p.performance_metric, p.max_performance_drop, p.min_outcomes) == (True, None, 0.05, 100)
    p = MonitoringPolicy.from_serving_policy({"monitoring": {"performance_metric": "log_loss", "max_performance_drop": 0.1,
                                                             "min_outcomes": 500, "performance_drift": False}})
    assert (p.performance_drift, p.performance_metric, p.max_performance_drop, p.min_outcomes) == (False, "log_loss", 0.1, 500)
    for monitoring, message in [
        ({"performance_metric": "acc"}, "serving_policy.monitoring.performance_metric: unknown metric 'acc'; expected one of"),
        ({"max_performance_drop": -0.1}, "serving_policy.monitoring.max_performance_drop: Input should be greater than or equal to 0"),
        ({"min_outcomes": 0}, "serving_policy.monitoring.min_outcomes: Input should be greater than or equal to 1"),
    ]:
        with pytest.raises(ConfigError) as err:
            MonitoringPolicy.from_serving_policy({"monitoring": monitoring})
        assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("module", ["mlplat.monitoring.drift", "mlplat.monitoring.partials", "mlplat.monitoring.policy",
                                    "mlplat.models.metrics"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
