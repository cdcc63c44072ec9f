"""P5: a feature set's materialize work on Ray Data vs the same work in one pyarrow process.

Both sides read the same Parquet files (8 files), fit the same encoders (standardize, log1p,
min-max, quantile bucketize, one-hot over 50 categories, hashed buckets over 5,000 ids) and the
raw columns' reference statistics with the same statistics code, encode, write Parquet, and
compute the output columns' reference-stat partials (what drift detection compares against).
Ray Data runs what ``materialize`` runs: ``mlplat.raydata.read_parquet`` + ``cache_if_small``
(the source is read once into the object store when it fits) + ``fit_on_ray`` (one pass of
per-block partials) + ``encode_dataset`` + ``write_encoded`` (one Parquet file and one
stats partial per block). Baseline: ``pq.read_table`` + ``build.fit_table`` +
``transform_table`` + ``pq.write_table`` + the output partials over 1 Mi-row slices (faster in
one process than over whole 10M-row columns: 2.2 s vs 3.6-4.5 s) in this process.

Per size, the two sides alternate in one process: 3 rounds (``BENCH_FEATURES_REPEATS``), each
running both sides once, the side that goes first rotating (pyarrow, Ray | Ray, pyarrow |
pyarrow, Ray); each side's median over the rounds goes in the row (``ray_runs_s`` and
``baseline_runs_s`` keep every run). Before the first size both sides run once on 10,000 rows,
untimed (Ray's workers start, both code paths are imported).

``python -m bench.features`` prints a table; ``BENCH_FEATURES_SIZES=100000,1000000`` picks
sizes.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SIZES = [100_000, 1_000_000, 10_000_000]
FILES = 8
SPECS = [
    {"type": "standardize", "column": "x"},
    {"type": "bucketize", "column": "x", "output": "x_q", "params": {"num_buckets": 10}},
    {"type": "log1p", "column": "amount"},
    {"type": "minmax", "column": "amount", "output": "amount_mm"},
    {"type": "onehot", "column": "cat", "params": {"max_categories": 20}},
    {"type": "hash", "column": "item", "params": {"num_buckets": 256}},
]


def _encoder():
    from mlplat.features import FeatureEncoder, build_encoder

    return FeatureEncoder([build_encoder(s) for s in SPECS], keep=["id"])


def make_data(n: int, where: Path) -> Path:
    rng = np.random.default_rng(n)
    cats = np.array([f"c{i:02d}" for i in range(50)])
    items = np.array([f"item-{i}" for i in range(5000)])
    src = where / f"src-{n}"
    src.mkdir(parents=True)
    per = -(-n // FILES)
    for i in range(FILES):
        m = min(per, n - i * per)
        if m <= 0:
            break
        x = rng.normal(50, 10, m)
        x[rng.random(m) < 0.01] = np.nan
        pq.write_table(pa.table({
            "id": np.arange(i * per, i * per + m),
            "x": x,
            "amount": rng.exponential(30, m),
            "cat": cats[rng.zipf(1.5, m) % 50],
            "item": items[rng.integers(0, 5000, m)],
        }), src / f"part-{i}.parquet")
    return src


RAW_COLUMNS = ["x", "amount", "cat", "item"]
STATS_SLICE_ROWS = 1 << 20


def _output_partials(encoded: pa.Table, feature_columns: list[str]) -> dict[str, Any]:
    from mlplat.features import stats as st
    from mlplat.features.build import _raw_kinds

    need = {c: sorted(_raw_kinds(encoded.schema.field(c).type)) for c in feature_columns}
    merged: dict[str, Any] = {}
    for offset in range(0, encoded.num_rows, STATS_SLICE_ROWS):
        piece = encoded.slice(offset, STATS_SLICE_ROWS)
        for c, kinds in need.items():
            p = st.column_partial(piece.column(c), kinds)
            merged[c] = p if c not in merged else st.merge_partials(merged[c], p)
    return merged


def run_pyarrow(src: Path, out: Path) -> int:
    from mlplat.features.build import fit_table

    table = pq.read_table(src)
    fe, _ = fit_table(table, _encoder(), RAW_COLUMNS)
    encoded = fe.transform_table(table)
    pq.write_table(encoded, out / "encoded.parquet")
    _output_partials(encoded, fe.feature_columns)
    return encoded.num_rows


def run_ray(src: Path, out: Path) -> int:
    from mlplat.features.build import encode_dataset, fit_on_ray, write_encoded
    from mlplat.raydata import approx_bytes, cache_if_small, read_parquet
    from mlplat.storage import open_root

    files = sorted(str(p) for p in src.glob("*.parquet"))  # the catalog lists its files
    ds = read_parquet(files)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)  # the catalog records it
    ds = cache_if_small(ds, approx_bytes(pq.read_schema(files[0]), rows))  # as materialize does
    fe, _ = fit_on_ray(ds, _encoder(), RAW_COLUMNS)
    files, _, _ = write_encoded(open_root(str(out)), "encoded", encode_dataset(ds, fe), fe)
    return sum(rows for _, rows in files)


def _interleaved_s(sides: dict[str, Callable[[Path], int]], out_root: Path, n: int, repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` rounds; each round runs every side once, the side that goes
    first rotating from round to round (A, B, B, A, ...); each run writes to a fresh directory."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out = out_root / f"{name}-{r}"
            out.mkdir(parents=True)
            start = time.perf_counter()
            rows = sides[name](out)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out, ignore_errors=True)
            assert rows == n, (name, rows, n)
    return times


def run(sizes: list[int] | None = None, budget_s: float = 300.0, repeats: int | None = None) -> list[dict[str, Any]]:
    import ray

    env_sizes = os.environ.get("BENCH_FEATURES_SIZES")
    sizes = sizes or ([int(s) for s in env_sizes.split(",")] if env_sizes else SIZES)
    repeats = repeats or int(os.environ.get("BENCH_FEATURES_REPEATS", "3"))
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        # warm-up, both sides: Ray's workers start, both code paths are imported
        warm = make_data(10_000, tmp / "warm")
        _interleaved_s({"pyarrow": lambda o: run_pyarrow(warm, o), "ray": lambda o: run_ray(warm, o)}, tmp / "w", 10_000, 1)
        for n in sizes:
            elapsed = time.perf_counter() - started
            if n >= 10_000_000 and elapsed > budget_s * 0.6:
                print(f"skipping {n:,} rows: {elapsed:.0f}s of the {budget_s:.0f}s budget already used")
                continue
            src = make_data(n, tmp)
            times = _interleaved_s({"pyarrow": lambda o, s=src: run_pyarrow(s, o), "ray": lambda o, s=src: run_ray(s, o)},
                                   tmp / f"out-{n}", n, repeats)
            base_s, ray_s = statistics.median(times["pyarrow"]), statistics.median(times["ray"])
            rows.append({
                "id": "P5", "metric": f"feature materialize (fit+encode+write+stats), {n:,} rows", "value": n / ray_s, "unit": "rows/s",
                "baseline": "pyarrow single process", "baseline_value": n / base_s, "ratio": base_s / ray_s,
                "target": ">= 1.0x at 10M rows (2 cores)", "rows": n, "ray_s": round(ray_s, 2),
                "baseline_s": round(base_s, 2), "repeats": repeats,
                "ray_runs_s": [round(t, 2) for t in times["ray"]], "baseline_runs_s": [round(t, 2) for t in times["pyarrow"]],
            })
            shutil.rmtree(src, ignore_errors=True)
            print(f"{n:>11,} rows  ray {ray_s:7.2f}s  pyarrow {base_s:7.2f}s  ratio {base_s / ray_s:5.2f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wins = [r["rows"] for r in rows if r["ratio"] >= 1.0]
    for r in rows:
        r["ray_wins_from_rows"] = min(wins) if wins else None
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    try:
        from bench.common import stamp, table

        print(table(stamp(rows)))
    except ImportError:
        print("| rows | ray rows/s | pyarrow rows/s | ratio |")
        for r in rows:
            print(f"| {r['rows']:,} | {r['value']:,.0f} | {r['baseline_value']:,.0f} | {r['ratio']:.2f} |")
    wins = rows[0]["ray_wins_from_rows"] if rows else None
    print(f"Ray Data starts to win at: {f'{wins:,} rows' if wins else 'no measured size'}")


if __name__ == "__main__":
    _print(run())
