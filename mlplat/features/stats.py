"""Mergeable column statistics: computed per block, combined, then finalized.

Everything here is pure (pyarrow + numpy) and JSON-serializable, so Ray Data computes one
partial per block with ``map_batches`` and the driver merges the small partials — no collect
of the data. Fitting the same data in one piece gives the same result (exactly, while the
quantile sketch holds at most :data:`SKETCH_CAP` distinct values; approximately beyond).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "as_array",
    "SKETCH_CAP",
    "COUNTS_CAP",
    "is_numeric_type",
    "numeric_values",
    "category_keys",
    "category_key",
    "column_partial",
    "merge_partials",
    "merge_all",
    "mean",
    "std",
    "quantile",
    "reference_stats",
]

SKETCH_CAP = 2048
COUNTS_CAP = 10_000
STAT_KINDS = frozenset({"moments", "sketch", "counts"})


def is_numeric_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def as_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        return array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    return array


def numeric_values(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Non-null, non-NaN values of a numeric column as float64."""
    arr = as_array(array)
    if not is_numeric_type(arr.type):
        raise TypeError(f"column of type {arr.type} is not numeric")
    if arr.type != pa.float64():
        arr = pc.cast(arr, pa.float64())
    if arr.null_count:
        arr = arr.drop_null()
    values = arr.to_numpy(zero_copy_only=False)
    nan = np.isnan(values)
    return values[~nan] if nan.any() else values


def category_keys(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The category key of each value: the value as a string (null stays null)."""
    arr = as_array(array)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_floating(arr.type):
        raise TypeError("categorical encoders need string, integer or boolean columns, not floats")
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type):
        return pc.cast(arr, pa.string())
    return pc.cast(arr, pa.string())


def category_key(value: Any) -> str | None:
    """Single-value twin of :func:`category_keys` (same strings as Arrow's cast)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():  # a JSON client may send 3.0 for an integer category
            return str(int(value))
        return repr(value)
    return str(value)


# -- partials --------------------------------------------------------------------------------


def _sketch_of_values(values: np.ndarray) -> dict[str, list[float]]:
    """The sketch of unweighted values: one sort, then either the exact (value, count) pairs or,
    past :data:`SKETCH_CAP` distinct values, the values at the SKETCH_CAP target ranks, read
    straight off the sorted array (the same values the cumulative-count search would pick)."""
    s = np.sort(values)
    n = s.size
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    if starts.size <= SKETCH_CAP:
        counts = np.diff(np.append(starts, n)).astype(np.float64)
        return {"v": s[starts].tolist(), "w": counts.tolist()}
    step = n / SKETCH_CAP
    ranks = np.minimum(np.ceil((np.arange(SKETCH_CAP) + 0.5) * step).astype(np.int64) - 1, n - 1)
    picked, picked_counts = np.unique(s[ranks], return_counts=True)
    return {"v": picked.tolist(), "w": (picked_counts * step).tolist()}


def _sketch_from(values: np.ndarray, weights: np.ndarray | None = None) -> dict[str, list[float]]:
    if values.size == 0:
        return {"v": [], "w": []}
    if weights is None:
        return _sketch_of_values(values)
    order = np.argsort(values, kind="stable")
    v_sorted, w_sorted = values[order], weights[order]
    uniq, start = np.unique(v_sorted, return_index=True)
    w = np.add.reduceat(w_sorted, start)
    if uniq.size > SKETCH_CAP:
        cum = np.cumsum(w)
        total = cum[-1]
        targets = (np.arange(SKETCH_CAP) + 0.5) * (total / SKETCH_CAP)
        idx = np.minimum(np.searchsorted(cum, targets, side="left"), uniq.size - 1)
        idx, inverse = np.unique(idx, return_inverse=True)
        new_w = np.bincount(inverse, minlength=idx.size) * (total / SKETCH_CAP)
        uniq, w = uniq[idx], new_w
    return {"v": uniq.tolist(), "w": w.tolist()}


def column_partial(array: pa.Array | pa.ChunkedArray, want: Iterable[str]) -> dict[str, Any]:
    """Partial statistics of one block of a column. ``want`` ⊆ {moments, sketch, counts}."""
    want = set(want)
    arr = as_array(array)
    out: dict[str, Any] = {"count": len(arr), "nulls": arr.null_count}
    if want & {"moments", "sketch"}:
        values = numeric_values(arr)
        out["nulls"] = len(arr) - int(values.size)  # NaN counts as missing
        if "moments" in want:
            n = int(values.size)
            mu = float(values.mean()) if n else 0.0
            out["moments"] = {
                "n": n,
                "mean": mu,
                "m2": float(((values - mu) ** 2).sum()) if n else 0.0,
                "min": float(values.min()) if n else None,
                "max": float(values.max()) if n else None,
            }
        if "sketch" in want:
            out["sketch"] = _sketch_from(values)
    if "counts" in want:
        keys = category_keys(arr)
        vc = pc.value_counts(keys.drop_null())
        values_ = vc.field("values").to_pylist()
        counts_ = vc.field("counts").to_pylist()
        out["counts"] = _cap_counts(dict(zip(values_, counts_, strict=True)))
    return out


def _cap_counts(counts: dict[str, int]) -> dict[str, int]:
    if len(counts) <= COUNTS_CAP:
        return counts
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:COUNTS_CAP]
    return dict(top)


def _merge_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    # Chan et al. parallel variance: stable, order-independent up to rounding.
    na, nb = a["n"], b["n"]
    if na == 0:
        return dict(b)
    if nb == 0:
        return dict(a)
    n = na + nb
    delta = b["mean"] - a["mean"]
    mu = a["mean"] + delta * nb / n
    m2 = a["m2"] + b["m2"] + delta * delta * na * nb / n
    return {"n": n, "mean": mu, "m2": m2, "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"])}


def merge_partials(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": a["count"] + b["count"], "nulls": a["nulls"] + b["nulls"]}
    if "moments" in a:
        out["moments"] = _merge_moments(a["moments"], b["moments"])
    if "sketch" in a:
        v = np.asarray(a["sketch"]["v"] + b["sketch"]["v"], dtype=np.float64)
        w = np.asarray(a["sketch"]["w"] + b["sketch"]["w"], dtype=np.float64)
        out["sketch"] = _sketch_from(v, w)
    if "counts" in a:
        counts = dict(a["counts"])
        for k, c in b["counts"].items():
            counts[k] = counts.get(k, 0) + c
        out["counts"] = _cap_counts(counts)
    return out


def merge_all(partials: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    result = None
    for p in partials:
        result = p if result is None else merge_partials(result, p)
    return result


# -- finalizers ------------------------------------------------------------------------------


def mean(stats: dict[str, Any]) -> float:
    m = stats["moments"]
    return float(m["mean"]) if m["n"] else 0.0


def std(stats: dict[str, Any]) -> float:
    """Population standard deviation (ddof=0)."""
    m = stats["moments"]
    return math.sqrt(m["m2"] / m["n"]) if m["n"] else 0.0


def quantile(stats: dict[str, Any], q: float) -> float | None:
    """Lower weighted quantile: the smallest value whose cumulative weight reaches q·total."""
    v, w = stats["sketch"]["v"], stats["sketch"]["w"]
    if not v:
        return None
    cum = np.cumsum(np.asarray(w, dtype=np.float64))
    idx = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return float(v[min(idx, len(v) - 1)])


def reference_stats(stats: dict[str, Any], bins: int = 10, top_k: int = 50) -> dict[str, Any]:
    """Reference statistics for drift detection: null rate, and either a quantile-bin
    histogram (numeric) or category frequencies (categorical)."""
    count = stats["count"]
    out: dict[str, Any] = {"count": count, "null_rate": (stats["nulls"] / count) if count else 0.0}
    if "sketch" in stats and stats["sketch"]["v"]:
        v = np.asarray(stats["sketch"]["v"], dtype=np.float64)
        w = np.asarray(stats["sketch"]["w"], dtype=np.float64)
        inner = sorted({q for q in (quantile(stats, i / bins) for i in range(1, bins)) if q is not None})
        edges = [float(v[0]), *inner, float(v[-1])]
        # bin i holds (edges[i], edges[i+1]], the first bin also its left edge.
        cum = np.concatenate([[0.0], np.cumsum(w)])
        pos = np.searchsorted(v, np.asarray(edges[1:], dtype=np.float64), side="right")
        upto = cum[pos]
        counts = np.diff(np.concatenate([[0.0], upto]))
        total = cum[-1]
        out["type"] = "numeric"
        out["histogram"] = {"edges": edges, "fractions": (counts / total).tolist() if total else []}
        if "moments" in stats:
            out["mean"], out["std"] = mean(stats), std(stats)
            out["min"], out["max"] = stats["moments"]["min"], stats["moments"]["max"]
    elif "counts" in stats:
        counts = stats["counts"]
        non_null = count - stats["nulls"]
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        out["type"] = "categorical"
        out["cardinality"] = len(counts)
        out["frequencies"] = {k: c / non_null for k, c in top} if non_null else {}
        out["other_fraction"] = (1.0 - sum(c for _, c in top) / non_null) if non_null else 0.0
    return out
