"""Mergeable per-block statistics of a telemetry window, pure (pyarrow + numpy).

A :class:`WindowPlan` says which rows count (``start_s <= ts < end_s``, one model version) and
what to compute per telemetry column: counts in the reference's bins (numeric), counts per
category (categorical), or a quantile sketch / category counts to *build* a reference
(``kind="sketch"``: the prediction reference). :func:`table_partial` computes a JSON-able
partial of one Arrow table, :func:`merge_partials` adds two, :func:`feature_stats` turns a
merged partial and its reference into :class:`~mlplat.monitoring.drift.FeatureStats`. The same
functions run in Ray Data blocks and, for one table, in this process: same result either way.

Telemetry columns are loosely typed (``feature.<name>`` is a float, a string or all null,
per file): a numeric reference reads strings as numbers (unparsable ones count as missing and
``invalid``), a categorical reference reads integral floats as integers (``3.0`` is category
``"3"``, as the feature set keyed it) and ``True``/``False`` as ``true``/``false``. A column
absent from a file counts as null for that file's rows, and as ``absent`` when no file had it.

Rows that came without raw features (``raw_features`` false: a v2 request that sent the encoded
``input`` tensor) have null ``feature.*`` values that are not missing values: they are left out
of every feature column's statistics (predictions still count them), and the partial counts
them in ``rows_without_raw_features``. Files written before the column existed count every row
as raw, and so does a null ``raw_features``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.features import stats as st
from mlplat.monitoring.drift import FeatureStats, bin_counts, chi2_vs_reference, ks_vs_reference, psi

__all__ = ["ColumnPlan", "WindowPlan", "FEATURE_PREFIX", "PREDICTION_COLUMN", "RAW_FEATURES_COLUMN",
           "ROWS_WITHOUT_RAW_FEATURES", "table_partial", "merge_partials",
           "outcome_values",
           "empty_partial", "feature_stats", "reference_from_partial", "reference_of_table", "OTHER_BIN"]

FEATURE_PREFIX = "feature."
PREDICTION_COLUMN = "prediction"
#: The telemetry column that says whether a row came with raw features (serving writes it).
RAW_FEATURES_COLUMN = "raw_features"
#: The partial's count of window rows left out of feature statistics (no raw features).
ROWS_WITHOUT_RAW_FEATURES = "rows_without_raw_features"
OTHER_BIN = "__other__"


@dataclass(frozen=True)
class ColumnPlan:
    """One column to summarise: ``name`` (a feature, or ``prediction``) read from ``column``."""

    name: str
    column: str
    kind: Literal["numeric", "categorical", "sketch"]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class WindowPlan:
    start_s: float
    end_s: float
    version: int | None
    columns: tuple[ColumnPlan, ...]

    @property
    def read_columns(self) -> list[str]:
        raw = [RAW_FEATURES_COLUMN] if any(c.column.startswith(FEATURE_PREFIX) for c in self.columns) else []
        return ["ts", "version", *raw, *dict.fromkeys(c.column for c in self.columns)]


# -- conversions -------------------------------------------------------------------------------


def _numbers(arr: pa.Array) -> tuple[np.ndarray, int]:
    """float64 values (NaN where missing) and how many non-null values were not numbers."""
    t = arr.type
    if pa.types.is_null(t):
        return np.full(len(arr), np.nan), 0
    if pa.types.is_dictionary(t):
        arr, t = arr.cast(t.value_type), t.value_type
    if st.is_numeric_type(t):
        return pc.fill_null(pc.cast(arr, pa.float64()), float("nan")).to_numpy(zero_copy_only=False), 0
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            return pc.fill_null(pc.cast(arr, pa.float64()), float("nan")).to_numpy(zero_copy_only=False), 0
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out = np.full(len(arr), np.nan)
            invalid = 0
            for i, v in enumerate(arr.to_pylist()):
                if v is None:
                    continue
                try:
                    out[i] = float(v)
                except ValueError:
                    invalid += 1
            return out, invalid
    return np.full(len(arr), np.nan), len(arr) - arr.null_count


def outcome_values(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The ``label`` and ``prediction`` of outcome rows as float64, only the rows where both
    are finite numbers (numbers sent as text count; null, NaN, text labels and vector
    predictions -- JSON text -- do not).

    >>> y, p = outcome_values(pa.table({"label": [1.0, 0.0, None, 1.0], "prediction": ["0.9", "[0.1, 0.9]", "0.2", "0.7"]}))
    >>> y.tolist(), p.tolist()
    ([1.0, 1.0], [0.9, 0.7])
    """
    y = _numbers(_combined(table.column("label")))[0]
    p = _numbers(_combined(table.column("prediction")))[0]
    keep = np.isfinite(y) & np.isfinite(p)
    return y[keep], p[keep]


def _combined(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _category_keys(arr: pa.Array, categories: tuple[str, ...]) -> pa.Array:
    """String keys as ``features.stats`` makes them (null stays null, NaN becomes null)."""
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_dictionary(t):
        arr, t = arr.cast(t.value_type), t.value_type
    if pa.types.is_floating(t):
        values = pc.fill_null(arr, float("nan")).to_numpy(zero_copy_only=False)
        finite = ~np.isnan(values)
        if np.all(values[finite] == np.round(values[finite])) and np.all(np.abs(values[finite]) < 2**53):
            ints = pa.array(np.where(finite, values, 0).astype(np.int64), mask=~finite)
            return pc.cast(ints, pa.string())
        return pa.array([st.category_key(v) for v in values.tolist()], pa.string())
    keys = pc.cast(arr, pa.string())
    if "true" in categories or "false" in categories:  # Python's str(True) in telemetry
        keys = pc.replace_substring_regex(keys, "^True$", "true")
        keys = pc.replace_substring_regex(keys, "^False$", "false")
    return keys


def _sketch_kind(arr: pa.Array) -> str:
    t = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
    if pa.types.is_null(t) or arr.null_count == len(arr):
        return "empty"
    if st.is_numeric_type(t) and not pa.types.is_boolean(t):
        return "numeric"
    keys = pc.cast(arr, pa.string()).drop_null()
    if len(keys) and pc.any(pc.starts_with(keys, "[")).as_py():
        return "vector"
    return "categorical"


# -- partials ------------------------------------------------------------------------------------


def empty_partial() -> dict[str, Any]:
    return {"rows": 0, ROWS_WITHOUT_RAW_FEATURES: 0, "columns": {}}


def _window_rows(table: pa.Table, plan: WindowPlan) -> pa.Table:
    mask = pc.and_(pc.greater_equal(table["ts"], plan.start_s), pc.less(table["ts"], plan.end_s))
    if plan.version is not None:
        mask = pc.and_(mask, pc.equal(table["version"], plan.version))
    return table.filter(mask)


def _column_partial(arr: pa.Array, present: bool, c: ColumnPlan) -> dict[str, Any]:
    n = len(arr)
    out: dict[str, Any] = {"present": n if present else 0}
    if c.kind == "numeric":
        values, out["invalid"] = _numbers(arr)
        out["stats"] = st.column_partial(pa.array(values, pa.float64()), ["moments"])
        out["bins"] = bin_counts(values, c.edges).tolist()
    elif c.kind == "categorical":
        out["stats"] = st.column_partial(_category_keys(arr, c.categories), ["counts"])
    else:
        kind = _sketch_kind(arr)
        out["kind"] = kind
        if kind == "numeric":
            out["stats"] = st.column_partial(arr, ["moments", "sketch"])
        elif kind == "categorical":
            out["stats"] = st.column_partial(_category_keys(arr, ()), ["counts"])
        else:
            out["stats"] = {"count": n, "nulls": arr.null_count if present else n}
    return out


def _raw_rows(table: pa.Table) -> pa.Table:
    """The rows that came with raw features: all but those whose ``raw_features`` is false
    (no column, or a null value: raw)."""
    if RAW_FEATURES_COLUMN not in table.column_names:
        return table
    try:
        flags = pc.cast(st.as_array(table[RAW_FEATURES_COLUMN]), pa.bool_())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not a flag column: every row is raw
        return table
    keep = pc.fill_null(flags, True)
    return table if pc.all(keep).as_py() else table.filter(keep)


def table_partial(table: pa.Table, plan: WindowPlan) -> dict[str, Any]:
    """The partial of one table of telemetry rows: only rows inside the plan's window (and
    version) count. Extra columns are ignored; missing ones count as null. Feature columns
    (``feature.*``) count only the rows with raw features; ``rows_without_raw_features``
    says how many were left out."""
    table = _window_rows(table, plan)
    n = table.num_rows
    raw = _raw_rows(table)
    columns = {}
    for c in plan.columns:
        rows = raw if c.column.startswith(FEATURE_PREFIX) else table
        present = c.column in rows.column_names
        arr = st.as_array(rows[c.column]) if present else pa.nulls(rows.num_rows, pa.float64())
        columns[c.name] = _column_partial(arr, present, c)
    return {"rows": n, ROWS_WITHOUT_RAW_FEATURES: n - raw.num_rows, "columns": columns}


def _merge_sketch(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    present = a["present"] + b["present"]
    count, nulls = a["stats"]["count"] + b["stats"]["count"], a["stats"]["nulls"] + b["stats"]["nulls"]
    if a["kind"] == "empty" or b["kind"] == "empty":  # all-null rows add to the other side's nulls
        other = b if a["kind"] == "empty" else a
        return {"present": present, "kind": other["kind"], "stats": {**other["stats"], "count": count, "nulls": nulls}}
    if a["kind"] == b["kind"] and a["kind"] in ("numeric", "categorical"):
        return {"present": present, "kind": a["kind"], "stats": st.merge_partials(a["stats"], b["stats"])}
    return {"present": present, "kind": a["kind"] if a["kind"] == b["kind"] else "mixed",
            "stats": {"count": count, "nulls": nulls}}


def _merge_column(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if "kind" in a:
        return _merge_sketch(a, b)
    out: dict[str, Any] = {"present": a["present"] + b["present"], "stats": st.merge_partials(a["stats"], b["stats"])}
    if "bins" in a:
        out["bins"] = [x + y for x, y in zip(a["bins"], b["bins"], strict=True)]
        out["invalid"] = a["invalid"] + b["invalid"]
    return out


def merge_partials(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The partial of two blocks' rows together (order-independent up to float rounding)."""
    rows = a["rows"] + b["rows"]
    without = a.get(ROWS_WITHOUT_RAW_FEATURES, 0) + b.get(ROWS_WITHOUT_RAW_FEATURES, 0)
    if not a["columns"]:
        return {"rows": rows, ROWS_WITHOUT_RAW_FEATURES: without, "columns": b["columns"]}
    if not b["columns"]:
        return {"rows": rows, ROWS_WITHOUT_RAW_FEATURES: without, "columns": a["columns"]}
    return {"rows": rows, ROWS_WITHOUT_RAW_FEATURES: without,
            "columns": {k: _merge_column(a["columns"][k], b["columns"][k]) for k in a["columns"]}}


# -- finalize ------------------------------------------------------------------------------------


def _edge_labels(edges: tuple[float, ...]) -> tuple[str, ...]:
    inner = [f"[{edges[0]:.4g}, {edges[1]:.4g}]"] + [f"({lo:.4g}, {hi:.4g}]" for lo, hi in zip(edges[1:-1], edges[2:],
                                                                                                  strict=True)]
    return (f"< {edges[0]:.4g}", *inner, f"> {edges[-1]:.4g}")


def feature_stats(name: str, reference: dict[str, Any], partial: dict[str, Any] | None, rows: int) -> FeatureStats:
    """Live statistics of one column against its reference entry (``stats.json`` ``raw[name]``
    format, with ``type`` numeric or categorical)."""
    kind = reference.get("type")
    base: dict[str, Any] = {"name": name, "kind": kind, "rows": rows,
                            "reference_null_rate": reference.get("null_rate"), "reference_mean": reference.get("mean")}
    if partial is None or partial["present"] == 0:
        return FeatureStats(**base, note="absent from telemetry in this window" if rows else "no rows in the window")
    s = partial["stats"]
    base["null_rate"] = s["nulls"] / s["count"] if s["count"] else None
    if kind == "numeric":
        hist = reference["histogram"]
        edges, ref = tuple(hist["edges"]), [0.0, *hist["fractions"], 0.0]
        counts = np.asarray(partial["bins"], dtype=np.float64)
        n = int(counts.sum())
        base.update(values=n, bins=_edge_labels(edges), reference_fractions=tuple(ref))
        base["live_mean"] = st.mean(s) if s["moments"]["n"] else None
        note = f"{partial['invalid']} values were not numbers (counted as missing)" if partial["invalid"] else None
        if n == 0:
            return FeatureStats(**base, note=note or "no non-null values in the window")
        ks = ks_vs_reference(counts, hist["fractions"])
        live = counts / n
        return FeatureStats(**base, psi=psi(ref, live), ks_statistic=ks.statistic, ks_pvalue=ks.pvalue,
                            live_fractions=tuple(live.tolist()))
    freqs: dict[str, float] = reference["frequencies"]
    categories = list(freqs)
    counts_by_key = s["counts"]
    non_null = s["count"] - s["nulls"]
    per_key = [float(counts_by_key.get(k, 0)) for k in categories]
    per_key.append(float(non_null - sum(per_key)))
    expected = [*freqs.values(), float(reference.get("other_fraction", 0.0))]
    base.update(values=int(non_null), bins=(*categories, OTHER_BIN), reference_fractions=tuple(expected))
    if non_null == 0:
        return FeatureStats(**base, note="no non-null values in the window")
    chi2 = chi2_vs_reference(per_key, expected)
    shares = [c / non_null for c in per_key]
    return FeatureStats(**base, psi=psi(expected, shares), chi2_statistic=chi2.statistic, chi2_pvalue=chi2.pvalue,
                        chi2_dof=chi2.dof, chi2_effect=chi2.effect, live_fractions=tuple(shares))


def reference_from_partial(partial: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """A reference entry (``stats.json`` format) from a ``sketch`` column partial, or why not."""
    if partial is None or partial["present"] == 0:
        return None, "no predictions in the reference period"
    kind = partial["kind"]
    if kind == "vector":
        return None, "predictions are vectors; prediction drift is judged for scalar predictions only"
    if kind == "mixed":
        return None, "predictions are numbers in some telemetry files and text in others"
    if kind == "empty":
        return None, "every prediction in the reference period is null"
    ref = st.reference_stats(partial["stats"])
    if "type" not in ref:
        return None, "the reference period has no usable predictions"
    return ref, None


def reference_of_table(table: pa.Table, columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Reference entries (the ``raw`` section of ``stats.json``) of a table's columns, computed
    as a feature-set build computes them: numeric columns get a decile histogram, strings,
    integers-as-categories and booleans get category frequencies (the feature set's rule:
    booleans and strings are categorical, other numbers numeric).

    >>> ref = reference_of_table(pa.table({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "a", "b", None]}))
    >>> ref["x"]["type"], ref["c"]["frequencies"], ref["c"]["null_rate"]
    ('numeric', {'a': 0.6666666666666666, 'b': 0.3333333333333333}, 0.25)
    """
    out = {}
    for name in columns or table.column_names:
        arr = st.as_array(table[name])
        numeric = st.is_numeric_type(arr.type) and not pa.types.is_boolean(arr.type)
        out[name] = st.reference_stats(st.column_partial(arr, ["moments", "sketch"] if numeric else ["counts"]))
    return out
