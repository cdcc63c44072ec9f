"""Drift partials and the telemetry's ``raw_features`` flag, pure: rows that came as a pre-encoded
``input`` tensor (``raw_features`` false, null ``feature.*``) are left out of feature statistics
-- not counted as nulls, so they cannot make every feature look drifted -- while predictions
still count them, and the partial says how many were left out. Old files without the column
count every row as raw."""

from __future__ import annotations

import pyarrow as pa

from mlplat.monitoring.partials import (
    RAW_FEATURES_COLUMN,
    ROWS_WITHOUT_RAW_FEATURES,
    ColumnPlan,
    WindowPlan,
    empty_partial,
    feature_stats,
    merge_partials,
    table_partial,
)

PLAN = WindowPlan(100.0, 200.0, 1, (ColumnPlan("x", "feature.x", "numeric", edges=(0.0, 1.0, 2.0)),
                                    ColumnPlan("c", "feature.c", "categorical", categories=("fr", "de")),
                                    ColumnPlan("prediction", "prediction", "sketch")))
X_REF = {"type": "numeric", "null_rate": 0.0, "histogram": {"edges": [0.0, 1.0, 2.0], "fractions": [0.5, 0.5]}}


def _table(raw: list[bool | None] | None, x: list[float | None], c: list[str | None], ts: float = 150.0) -> pa.Table:
    n = len(x)
    cols = {"ts": [ts] * n, "version": [1] * n, "feature.x": pa.array(x, pa.float64()),
            "feature.c": pa.array(c, pa.string()), "prediction": [0.5] * n}
    if raw is not None:
        cols[RAW_FEATURES_COLUMN] = pa.array(raw, pa.bool_())
    return pa.table(cols)


def test_rows_without_raw_features_are_left_out_of_feature_statistics() -> None:
    table = _table([True, True, False, False, False], [0.5, 1.5, None, None, None], ["fr", "de", None, None, None])
    p = table_partial(table, PLAN)
    x, c, pred = p["columns"]["x"], p["columns"]["c"], p["columns"]["prediction"]
    assert p["rows"] == 5 and p[ROWS_WITHOUT_RAW_FEATURES] == 3
    assert (x["present"], x["stats"]["count"], x["stats"]["nulls"], x["bins"]) == (2, 2, 0, [0, 1, 1, 0])
    assert c["stats"]["counts"] == {"fr": 1, "de": 1} and c["stats"]["nulls"] == 0
    assert pred["stats"]["count"] == 5  # predictions count every row
    fs = feature_stats("x", X_REF, x, p["rows"])
    assert fs.null_rate == 0.0 and fs.values == 2  # not 60% nulls


def test_old_files_without_the_column_and_null_flags_count_as_raw() -> None:
    old = table_partial(_table(None, [0.5, None], ["fr", None]), PLAN)
    assert old[ROWS_WITHOUT_RAW_FEATURES] == 0 and old["columns"]["x"]["stats"]["count"] == 2
    assert old["columns"]["x"]["stats"]["nulls"] == 1  # a real missing value stays a null
    unknown = table_partial(_table([None, True], [0.5, 1.5], ["fr", "de"]), PLAN)
    assert unknown[ROWS_WITHOUT_RAW_FEATURES] == 0 and unknown["columns"]["x"]["present"] == 2


def test_the_excluded_count_merges_and_only_counts_rows_in_the_window() -> None:
    a = table_partial(_table([False, True], [None, 0.5], [None, "fr"]), PLAN)
    b = table_partial(_table(None, [1.5], ["de"]), PLAN)  # an old file
    outside = table_partial(_table([False, False], [None, None], [None, None], ts=500.0), PLAN)
    merged = merge_partials(merge_partials(empty_partial(), a), merge_partials(b, outside))
    assert merged["rows"] == 3 and merged[ROWS_WITHOUT_RAW_FEATURES] == 1
    assert merged["columns"]["x"]["bins"] == [0, 1, 1, 0] and merged["columns"]["x"]["stats"]["nulls"] == 0
    legacy = {"rows": 2, "columns": {}}  # a partial from before the field
    assert merge_partials(legacy, a)[ROWS_WITHOUT_RAW_FEATURES] == 1


def test_a_window_of_encoded_input_only_has_no_feature_values() -> None:
    p = table_partial(_table([False] * 3, [None] * 3, [None] * 3), PLAN)
    assert p["rows"] == 3 and p[ROWS_WITHOUT_RAW_FEATURES] == 3
    assert p["columns"]["x"]["present"] == 0 and p["columns"]["prediction"]["stats"]["count"] == 3
    assert feature_stats("x", X_REF, p["columns"]["x"], p["rows"]).null_rate is None


def test_the_flag_is_read_only_for_plans_with_feature_columns() -> None:
    assert RAW_FEATURES_COLUMN in PLAN.read_columns
    predictions_only = WindowPlan(0.0, 1.0, 1, (ColumnPlan("prediction", "prediction", "sketch"),))
    assert RAW_FEATURES_COLUMN not in predictions_only.read_columns


def test_file_partial_reads_the_flag_from_telemetry_files(tmp_path) -> None:
    """Through the window reader (``file_partial``), which reads only the plan's columns."""
    import io

    import pyarrow.parquet as pq

    from mlplat.monitoring.window import file_partial
    from mlplat.storage import open_root

    storage = open_root(str(tmp_path / "root"))
    for name, table in (("new.parquet", _table([True, False], [0.5, None], ["fr", None])),
                        ("old.parquet", _table(None, [1.5], ["de"]))):
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes(sink.getvalue(), "telemetry", "m", "date=2026-11-30", name)
    p = merge_partials(file_partial(storage, "telemetry/m/date=2026-11-30/new.parquet", PLAN),
                       file_partial(storage, "telemetry/m/date=2026-11-30/old.parquet", PLAN))
    assert p["rows"] == 3 and p[ROWS_WITHOUT_RAW_FEATURES] == 1
    assert p["columns"]["x"]["stats"]["nulls"] == 0 and p["columns"]["x"]["bins"] == [0, 1, 1, 0]
