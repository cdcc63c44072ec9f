"""Encoders against hand-computed values; batch path == single-row path; JSON round trip.
Pure: no Ray."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from mlplat.errors import ConfigError, ValidationError
from mlplat.features import Encoder, FeatureEncoder, build_encoder, stable_hash
from mlplat.features import stats as st


def fit(table: pa.Table, *specs: dict, keep=()) -> FeatureEncoder:
    return FeatureEncoder([build_encoder(s) for s in specs], keep=keep).fit_table(table)


def col(fe: FeatureEncoder, table: pa.Table, name: str) -> list:
    return fe.transform_table(table).column(name).to_pylist()


NUM = pa.table({"x": [1.0, 2.0, 3.0, 4.0, None]})


def test_standardize_hand_computed():
    fe = fit(NUM, {"type": "standardize", "column": "x"})
    mean, sd = 2.5, math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 4)  # population std of 1..4
    assert fe.encoders[0].fitted == {"fill": 2.5, "mean": mean, "std": pytest.approx(sd)}
    got = col(fe, NUM, "x")
    assert got[:4] == pytest.approx([(v - mean) / sd for v in (1, 2, 3, 4)])
    assert got[4] == 0.0  # null -> mean -> 0


def test_minmax_log1p_clip_impute():
    fe = fit(
        NUM,
        {"type": "minmax", "column": "x"},
        {"type": "log1p", "column": "x", "output": "lx", "params": {"fill": 0}},
        {"type": "clip", "column": "x", "output": "cx", "params": {"lower": 1.5, "upper_quantile": 0.75}},
        {"type": "impute", "column": "x", "output": "mx", "params": {"strategy": "median"}},
        {"type": "impute", "column": "x", "output": "kx", "params": {"strategy": "constant", "value": -1}},
    )
    assert col(fe, NUM, "x") == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 0.5])
    assert col(fe, NUM, "lx") == pytest.approx([math.log(2), math.log(3), math.log(4), math.log(5), 0.0])
    # lower quantile: smallest value with cumulative count >= 0.75*4 = 3 -> 3.0
    assert col(fe, NUM, "cx") == [1.5, 2.0, 3.0, 3.0, 2.5]
    assert col(fe, NUM, "mx") == [1.0, 2.0, 3.0, 4.0, 2.0]
    assert col(fe, NUM, "kx") == [1.0, 2.0, 3.0, 4.0, -1.0]


def test_bucketize_quantiles():
    t = pa.table({"x": list(range(1, 11))})
    fe = fit(t, {"type": "bucketize", "column": "x", "params": {"num_buckets": 4}})
    assert fe.encoders[0].fitted["boundaries"] == [3.0, 5.0, 8.0]
    assert col(fe, t, "x") == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]


def test_onehot_other_bucket_and_unseen_counted():
    train = pa.table({"c": ["a", "b", "a", "c", "a", "b"]})
    fe = fit(train, {"type": "onehot", "column": "c", "params": {"max_categories": 2}})
    assert fe.feature_columns == ["c=a", "c=b", "c=__other__"]
    test = pa.table({"c": ["a", "zzz", None, "c"]})
    out = fe.transform_table(test).to_pylist()
    assert out == [
        {"c=a": 1.0, "c=b": 0.0, "c=__other__": 0.0},
        {"c=a": 0.0, "c=b": 0.0, "c=__other__": 1.0},
        {"c=a": 0.0, "c=b": 0.0, "c=__other__": 1.0},
        {"c=a": 0.0, "c=b": 0.0, "c=__other__": 1.0},
    ]
    assert fe.unseen_counts() == {"c": 2}  # "zzz" and "c" (rare), not the null
    fe.transform({"c": "never-seen"})
    assert fe.unseen_counts() == {"c": 3}


def test_ordinal_and_hash():
    train = pa.table({"c": ["b", "a", "b"], "n": [10, 20, 10]})
    fe = fit(train, {"type": "ordinal", "column": "c"}, {"type": "ordinal", "column": "n"},
             {"type": "hash", "column": "c", "output": "h", "params": {"num_buckets": 7}})
    test = pa.table({"c": ["a", "b", "q", None], "n": [20, 10, 30, None]})
    assert col(fe, test, "c") == [0, 1, 2, 2]
    assert col(fe, test, "n") == [1, 0, 2, 2]  # categories sort as strings: "10" < "20"
    assert col(fe, test, "h") == [stable_hash("a") % 7, stable_hash("b") % 7, stable_hash("q") % 7, 0]


def test_stable_hash_is_fixed():
    # Fixed forever: splits and hashed buckets depend on it across processes and releases.
    assert stable_hash("user-1") == stable_hash("user-1")
    assert stable_hash("user-1") != stable_hash("user-1", salt="s")
    assert stable_hash("abc") == int.from_bytes(__import__("hashlib").blake2b(b"abc", digest_size=8).digest(), "little")


def _random_table(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    return pa.table({
        "num": [None if rng.random() < 0.1 else rng.gauss(50, 20) for _ in range(n)],
        "pos": [rng.expovariate(0.01) for _ in range(n)],
        "int": [rng.randint(-5, 100) for _ in range(n)],
        "cat": [rng.choice(["a", "b", "c", "d", None]) for _ in range(n)],
        "flag": [rng.random() < 0.3 for _ in range(n)],
        "uid": [f"u{rng.randint(0, 50)}" for _ in range(n)],
        "label": [rng.random() for _ in range(n)],
    })


ALL_SPECS = [
    {"type": "standardize", "column": "num"},
    {"type": "minmax", "column": "pos", "params": {"clip": True}},
    {"type": "log1p", "column": "pos", "output": "pos_log"},
    {"type": "clip", "column": "int", "params": {"lower_quantile": 0.05, "upper_quantile": 0.95}},
    {"type": "impute", "column": "num", "output": "num_med", "params": {"strategy": "median"}},
    {"type": "onehot", "column": "cat"},
    {"type": "onehot", "column": "flag"},
    {"type": "hash", "column": "uid", "output": "uid_h", "params": {"num_buckets": 16}},
    {"type": "ordinal", "column": "cat", "output": "cat_idx"},
    {"type": "bucketize", "column": "int", "output": "int_q", "params": {"num_buckets": 5}},
    {"type": "passthrough", "column": "label", "output": "label_copy"},
]


def test_batch_and_single_row_paths_are_identical():
    train = _random_table(500, seed=1)
    fe = fit(train, *ALL_SPECS, keep=["uid"])
    test = _random_table(200, seed=2)
    batch = fe.transform(test).to_pylist()
    rows = test.to_pylist()
    singles = [fe.transform(r) for r in rows]
    listed = fe.transform(rows)
    assert batch == singles == listed  # exact equality, not approx
    # JSON-style inputs for serving: floats for ints, bools for flags still encode the same
    assert fe.transform({**rows[0], "int": float(rows[0]["int"])}) == singles[0]


def test_large_tables_encode_in_slices_with_the_same_result(monkeypatch):
    import mlplat.features.feature_encoder as fe_module

    fe = fit(_random_table(500, seed=1), *ALL_SPECS, keep=["uid"])
    table = _random_table(1000, seed=4)
    whole = fe.transform_table(table)
    monkeypatch.setattr(fe_module, "SLICE_ROWS", 64)  # 16 slices, the last one short
    sliced = fe.transform_table(table)
    assert sliced.num_rows == 1000 and sliced.schema == whole.schema
    assert sliced.to_pylist() == whole.to_pylist()


def test_json_round_trip():
    train = _random_table(300, seed=3)
    fe = fit(train, *ALL_SPECS, keep=["uid"])
    text = json.dumps(fe.to_json())
    back = FeatureEncoder.from_json(json.loads(text))
    test = _random_table(100, seed=4)
    assert back.transform(test).equals(fe.transform(test))
    assert back.to_json() == fe.to_json()
    assert "pickle" not in text


def test_partials_merge_equals_whole():
    t = _random_table(1000, seed=5)
    kinds = {"moments", "sketch"}
    whole = st.column_partial(t.column("num"), kinds)
    parts = [st.column_partial(t.slice(i, 137).column("num"), kinds) for i in range(0, 1000, 137)]
    merged = st.merge_all(parts)
    assert merged["sketch"] == whole["sketch"]
    assert merged["moments"]["n"] == whole["moments"]["n"]
    assert merged["moments"]["mean"] == pytest.approx(whole["moments"]["mean"], rel=1e-12)
    assert merged["moments"]["m2"] == pytest.approx(whole["moments"]["m2"], rel=1e-9)
    c_whole = st.column_partial(t.column("cat"), {"counts"})
    c_merged = st.merge_all(st.column_partial(t.slice(i, 100).column("cat"), {"counts"}) for i in range(0, 1000, 100))
    assert c_merged == c_whole


def test_sketch_compresses_and_stays_close():
    rng = np.random.default_rng(0)
    values = rng.normal(size=50_000)
    parts = [st.column_partial(pa.array(values[i:i + 5000]), {"sketch"}) for i in range(0, 50_000, 5000)]
    merged = st.merge_all(parts)
    assert len(merged["sketch"]["v"]) <= st.SKETCH_CAP
    for q in (0.01, 0.25, 0.5, 0.9):
        assert st.quantile(merged, q) == pytest.approx(np.quantile(values, q), abs=0.02)


def _sketch_by_unique_and_search(values: np.ndarray) -> dict:
    """The sketch as first written: np.unique counts, then a cumulative-count search."""
    uniq, counts = np.unique(values, return_counts=True)
    w = counts.astype(np.float64)
    if uniq.size > st.SKETCH_CAP:
        cum = np.cumsum(w)
        targets = (np.arange(st.SKETCH_CAP) + 0.5) * (cum[-1] / st.SKETCH_CAP)
        idx = np.minimum(np.searchsorted(cum, targets, side="left"), uniq.size - 1)
        idx, inverse = np.unique(idx, return_inverse=True)
        uniq, w = uniq[idx], np.bincount(inverse, minlength=idx.size) * (cum[-1] / st.SKETCH_CAP)
    return {"v": uniq.tolist(), "w": w.tolist()}


def test_sorted_array_sketch_equals_the_unique_and_search_sketch():
    """The one-sort sketch (picks capped ranks off the sorted array) gives exactly the values and
    weights of the np.unique + searchsorted version, below, at and past SKETCH_CAP."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 12_000))
        distinct = int(rng.choice([1, 2, 50, st.SKETCH_CAP, st.SKETCH_CAP + 1, 5_000, 10**9]))
        values = rng.integers(0, distinct, n).astype(np.float64) * rng.choice([1.0, 0.25, -1.0])
        if trial % 3 == 0:
            values = rng.normal(size=n)
        if trial % 5 == 0:
            values[: min(n, 4)] = -0.0
        assert st._sketch_from(values) == _sketch_by_unique_and_search(values), trial


def test_reference_stats_shapes():
    t = _random_table(400, seed=6)
    num = st.reference_stats(st.column_partial(t.column("num"), {"moments", "sketch"}))
    assert num["type"] == "numeric" and sum(num["histogram"]["fractions"]) == pytest.approx(1.0)
    assert len(num["histogram"]["edges"]) == len(num["histogram"]["fractions"]) + 1
    assert 0.0 < num["null_rate"] < 0.3
    cat = st.reference_stats(st.column_partial(t.column("cat"), {"counts"}))
    assert cat["type"] == "categorical" and set(cat["frequencies"]) == {"a", "b", "c", "d"}


def test_bad_specs_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown encoder 'nope'"):
        build_encoder({"type": "nope", "column": "x"})
    with pytest.raises(ConfigError, match="unknown params"):
        build_encoder({"type": "standardize", "column": "x", "params": {"bogus": 1}})
    with pytest.raises(ConfigError, match="cannot import"):
        build_encoder({"type": "no_such_pkg.mod:Thing", "column": "x"})
    with pytest.raises(ConfigError, match="produced twice"):
        FeatureEncoder([build_encoder({"type": "log1p", "column": "x"}), build_encoder({"type": "standardize", "column": "x"})])
    fe = fit(NUM, {"type": "standardize", "column": "x"})
    with pytest.raises(ValidationError, match="missing input columns"):
        fe.transform({"y": 1})
    with pytest.raises(ValidationError, match="numeric"):
        fe.transform({"x": "abc"})
    with pytest.raises(ValidationError, match="no non-null"):
        fit(pa.table({"x": pa.array([None, None], pa.float64())}), {"type": "standardize", "column": "x"})


class Squared(Encoder):
    """A user encoder: (x - mean)^2, fitted from the column moments."""

    requires = frozenset({"moments"})

    def fit(self, stats):
        self.fitted = {"mean": st.mean(stats)}

    def transform_array(self, array):
        import pyarrow.compute as pc

        d = pc.subtract(pc.cast(array, pa.float64()), self.fitted["mean"])
        return {self.output: pc.multiply(d, d)}

    def transform_value(self, value):
        d = float(value) - self.fitted["mean"]
        return {self.output: d * d}


def test_user_encoder_by_import_path():
    spec = {"type": f"{__name__}:Squared", "column": "x", "output": "sq"}
    t = pa.table({"x": [1.0, 3.0]})
    fe = fit(t, spec)
    assert col(fe, t, "sq") == [1.0, 1.0]
    back = FeatureEncoder.from_json(json.loads(json.dumps(fe.to_json())))
    assert back.transform({"x": 4.0}) == {"sq": 4.0}
    assert back.to_json()["encoders"][0]["type"] == f"{__name__}:Squared"
