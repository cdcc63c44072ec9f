"""Outcomes without Ray: the request-id and point-in-time joins on small tables, bad input
named in one line, the ingest over telemetry the serving writer wrote, and the CLI command."""

from __future__ import annotations

import doctest
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import mlplat.monitoring.outcomes as outcomes_module
from mlplat.cli.monitor_outcomes import outcomes as outcomes_command
from mlplat.errors import MlplatError, NotFound, StorageError, ValidationError
from mlplat.monitoring.outcomes import (
    OUTCOME_COLUMNS,
    OutcomeBatch,
    ingest_outcomes,
    join_by_request_id,
    join_point_in_time,
    read_outcome_files,
)
from mlplat.registry import RegistryStore
from mlplat.serving.telemetry import TelemetryWriter
from mlplat.storage import open_root


def _has_add_files() -> bool:
    import mlplat.data.catalog as catalog

    return hasattr(catalog, "add_files")


needs_add_files = pytest.mark.skipif(not _has_add_files(), reason="the data catalog has no add_files yet "
                                                                  "(register files in place)")


def test_doctests() -> None:
    result = doctest.testmod(outcomes_module)
    assert result.attempted > 0 and result.failed == 0


def _predictions(rows: list[tuple[str, int, float, int, float]]) -> pa.Table:
    rid, row, ts, version, pred = zip(*rows, strict=True) if rows else ((), (), (), (), ())
    return pa.table({"request_id": pa.array(rid, pa.string()), "request_row": pa.array(row, pa.int64()),
                     "ts": pa.array(ts, pa.float64()), "version": pa.array(version, pa.int64()),
                     "prediction": pa.array(pred, pa.float64())})


# -- by request id ------------------------------------------------------------------------------------


def test_join_by_request_id_matches_counts_and_keeps_outcome_order() -> None:
    preds = _predictions([("a", 0, 10.0, 1, 0.9), ("b", 0, 11.0, 1, 0.2), ("c", 0, 12.0, 2, 0.7)])
    outcomes = pa.table({"rid": ["c", "zz", "a"], "clicked": [1, 0, 0]})
    table, counts = join_by_request_id(outcomes, preds, label_column="clicked", request_id_column="rid")
    assert counts == {"rows": 3, "matched": 2, "unmatched": 1, "ambiguous": 0}
    assert tuple(table.column_names) == OUTCOME_COLUMNS
    assert table.select(["request_id", "label", "prediction", "version", "ts"]).to_pylist() == [
        {"request_id": "c", "label": 1.0, "prediction": 0.7, "version": 2, "ts": 12.0},
        {"request_id": "a", "label": 0.0, "prediction": 0.9, "version": 1, "ts": 10.0}]
    assert table.column("entity").null_count == 2 and table.column("outcome_ts").null_count == 2


def test_a_reused_request_id_takes_the_latest_prediction() -> None:
    preds = _predictions([("a", 0, 10.0, 1, 0.1), ("a", 0, 30.0, 2, 0.3), ("a", 0, 20.0, 1, 0.2)])
    table, counts = join_by_request_id(pa.table({"request_id": ["a"], "y": [1.5]}), preds, label_column="y")
    assert counts["matched"] == 1 and table.column("prediction").to_pylist() == [0.3]
    assert table.column("version").to_pylist() == [2]


def test_multi_row_requests_need_the_row_index() -> None:
    preds = _predictions([("m", 0, 1.0, 1, 0.1), ("m", 1, 1.0, 1, 0.2), ("s", 0, 2.0, 1, 0.5)])
    table, counts = join_by_request_id(pa.table({"request_id": ["m", "s"], "y": ["yes", "no"]}), preds, label_column="y")
    assert counts == {"rows": 2, "matched": 1, "unmatched": 0, "ambiguous": 1}
    assert table.column("label").to_pylist() == ["no"] and table.schema.field("label").type == pa.string()
    with_rows = pa.table({"request_id": ["m", "m", "m"], "request_row": [1, 0, 5], "y": [True, False, True]})
    table, counts = join_by_request_id(with_rows, preds, label_column="y", row_column="request_row")
    assert counts == {"rows": 3, "matched": 2, "unmatched": 1, "ambiguous": 0}
    assert table.select(["request_row", "label", "prediction"]).to_pylist() == [
        {"request_row": 1, "label": 1.0, "prediction": 0.2}, {"request_row": 0, "label": 0.0, "prediction": 0.1}]


def test_numeric_request_ids_compare_as_text() -> None:
    preds = _predictions([("17", 0, 1.0, 1, 0.4)])
    table, counts = join_by_request_id(pa.table({"request_id": [17.0, 18.0], "y": [1, 0]}), preds, label_column="y")
    assert counts["matched"] == 1 and table.column("request_id").to_pylist() == ["17"]


# -- point in time ---------------------------------------------------------------------------------------


def _entity_predictions(rows: list[tuple[Any, float, float]], key_type: pa.DataType = pa.string()) -> pa.Table:
    from mlplat.monitoring.outcomes import _as_text

    entity, ts, pred = zip(*rows, strict=True)
    n = len(rows)
    return pa.table({"request_id": [f"r{i}" for i in range(n)], "request_row": [0] * n, "ts": list(ts),
                     "version": [1] * n, "prediction": list(pred),
                     "__key": _as_text(pa.array(entity, key_type))})


def test_point_in_time_takes_the_latest_prediction_at_or_before_the_outcome() -> None:
    preds = _entity_predictions([("u1", 100.0, 0.1), ("u1", 200.0, 0.2), ("u1", 300.0, 0.3), ("u2", 150.0, 0.9)])
    outcomes = pa.table({"user": ["u1", "u1", "u1", "u2", "u3"], "t": [250.0, 200.0, 50.0, 1000.0, 500.0],
                         "label": [1, 0, 1, 1, 0]})
    table, counts = join_point_in_time(outcomes, preds, label_column="label", entity_column="user", time_column="t")
    assert counts == {"rows": 5, "matched": 3, "unmatched": 2, "ambiguous": 0}
    got = {(r["entity"], r["outcome_ts"]): (r["prediction"], r["ts"], r["request_id"]) for r in table.to_pylist()}
    assert got == {("u1", 250.0): (0.2, 200.0, "r1"),  # not the later 300
                   ("u1", 200.0): (0.2, 200.0, "r1"),  # an exact time counts
                   ("u2", 1000.0): (0.9, 150.0, "r3")}
    assert all(r["ts"] <= r["outcome_ts"] for r in table.to_pylist())  # never a future prediction


def test_point_in_time_entities_and_times_of_other_types() -> None:
    import datetime as dt

    preds = _entity_predictions([(31.0, 1_800_000_000.0, 0.4)], pa.float64())  # telemetry stores numbers as float64
    stamp = dt.datetime.fromtimestamp(1_800_000_100, dt.timezone.utc)
    for times in (pa.array([stamp.replace(tzinfo=None)], pa.timestamp("ms")), pa.array([stamp.isoformat()]),
                  pa.array([1_800_000_100])):
        outcomes = pa.table({"uid": pa.array([31], pa.int64()), "when": times, "y": [1]})
        table, counts = join_point_in_time(outcomes, preds, label_column="y", entity_column="uid", time_column="when")
        assert counts["matched"] == 1, times.type
        assert table.column("outcome_ts").to_pylist() == [pytest.approx(1_800_000_100.0)]
    with pytest.raises(ValidationError, match="'when'"):
        join_point_in_time(pa.table({"uid": [31], "when": ["not a time"], "y": [1]}), preds, label_column="y",
                           entity_column="uid", time_column="when")


def test_point_in_time_without_any_prediction_of_the_entities() -> None:
    preds = _entity_predictions([("u9", 100.0, 0.1)]).slice(0, 0)
    outcomes = pa.table({"user": ["u1"], "t": [250.0], "label": [1]})
    table, counts = join_point_in_time(outcomes, preds, label_column="label", entity_column="user", time_column="t")
    assert counts == {"rows": 1, "matched": 0, "unmatched": 1, "ambiguous": 0} and table.num_rows == 0


# -- bad input ----------------------------------------------------------------------------------------------


def test_outcome_files_missing_columns_unreadable_or_absent_are_named(tmp_path) -> None:
    storage = open_root(str(tmp_path / "root"))
    good = tmp_path / "good.csv"
    good.write_text("request_id,clicked\na,1\n")
    (tmp_path / "nolabel.csv").write_text("request_id,other\na,1\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "rows.txt").write_text("x")
    cases = [
        ([str(tmp_path / "nolabel.csv")], ValidationError, r"nolabel\.csv.*'clicked'.*columns: request_id, other"),
        ([str(tmp_path / "broken.parquet")], ValidationError, r"broken\.parquet"),
        ([str(tmp_path / "absent.parquet")], NotFound, r"absent\.parquet"),
        ([str(tmp_path / "rows.txt")], ValidationError, r"rows\.txt.*unknown format"),
        ([], ValidationError, "no outcome files"),
    ]
    for files, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            read_outcome_files(storage, files, ["request_id", "clicked"])
        assert "\n" not in str(info.value)
    assert read_outcome_files(storage, [str(good)], ["request_id", "clicked"]).num_rows == 1


# -- the ingest, over telemetry the serving writer wrote -----------------------------------------------------


@pytest.fixture
def served(tmp_path):
    """A registry with model ``churn`` and telemetry of three requests (one with two rows)."""
    storage, registry = open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))
    registry.create_model("churn", task_type="binary")
    writer = TelemetryWriter(storage, writer_id="w")
    kinds = {"user": "category", "amount": "number"}
    writer.record("churn", 1, [{"user": "u1", "amount": 3.0}], [0.8], request_id="req-1", caller="svc",
                  endpoint="v1", latency_ms=2.0, kinds=kinds, context={"session": "s-1"})
    writer.record("churn", 1, [{"user": "u2", "amount": 1.0}, {"user": "u3", "amount": 2.0}], [0.3, 0.6],
                  request_id="req-2", caller="svc", endpoint="v1", latency_ms=2.0, kinds=kinds)
    writer.record("churn", 2, [{"user": "u1", "amount": 5.0}], [0.9], request_id="req-3", caller="svc",
                  endpoint="v1", latency_ms=2.0, kinds=kinds, context={"session": "s-2"})
    assert writer.flush()
    return storage, registry


def test_ingest_rejects_bad_input_in_one_line(served, tmp_path) -> None:
    storage, registry = served
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,clicked\nreq-1,1\n")
    cases = [
        (dict(name="nope", files=[str(labels)], label_column="clicked"), NotFound, "nope"),
        (dict(name="churn", files=[str(labels)], label_column="converted"), ValidationError, "converted"),
        (dict(name="churn", files=[str(labels)], label_column="clicked", entity_column="user"), ValidationError,
         "entity column and a time column"),
        (dict(name="churn", files=[str(labels)], label_column="clicked", batch="../x"), ValidationError, "batch"),
        (dict(name="churn", files=[str(tmp_path / "none.csv")], label_column="clicked"), NotFound, "none.csv"),
    ]
    for kwargs, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            ingest_outcomes(storage, registry, **kwargs)
        assert "\n" not in str(info.value)
    registry.create_model("quiet", task_type="binary")
    with pytest.raises(NotFound, match="model 'quiet' has no telemetry"):
        ingest_outcomes(storage, registry, "quiet", [str(labels)], label_column="clicked")


def test_ingest_joins_and_finds_nothing_without_writing(served, tmp_path) -> None:
    storage, registry = served
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,clicked\nunknown,1\n")
    result = ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="b0")
    assert (result.matched, result.unmatched, result.path) == (0, 1, None)
    assert not storage.exists("outcomes", "churn")


def test_ingest_hands_the_written_batch_to_the_catalog_and_takes_it_back_on_failure(served, tmp_path,
                                                                                     monkeypatch) -> None:
    import mlplat.data.catalog as catalog
    from mlplat.errors import StorageError

    storage, registry = served
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(catalog, "add_files", lambda *a, **kw: calls.append((*a[2:], kw)), raising=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,request_row,clicked\nreq-2,1,1\nreq-2,0,0\nreq-3,0,1\n")
    result = ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="b7")
    assert (result.matched, result.unmatched, result.ambiguous) == (3, 0, 0)
    assert calls == [("outcomes-churn", "outcomes/churn", ["b7.parquet"],
                      {"kind": "outcomes", "description": calls[0][3]["description"]})]
    rows = pq.read_table(storage.path("outcomes", "churn", "b7.parquet")).to_pylist()
    assert [(r["request_id"], r["request_row"], r["label"], r["prediction"], r["version"]) for r in rows] == [
        ("req-2", 1, 1.0, 0.6, 1), ("req-2", 0, 0.0, 0.3, 1), ("req-3", 0, 1.0, 0.9, 2)]

    def refuse(*a: Any, **kw: Any) -> None:
        raise StorageError("registry unreachable")

    monkeypatch.setattr(catalog, "add_files", refuse, raising=False)
    with pytest.raises(StorageError):
        ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="b8")
    assert not storage.exists("outcomes", "churn", "b8.parquet")  # the batch can be ingested again


@needs_add_files
def test_ingest_by_request_id_writes_and_registers_the_batch(served, tmp_path) -> None:
    from mlplat.data import dataset_files, get_dataset

    storage, registry = served
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"request_id": "req-1", "clicked": 1}\n{"request_id": "req-2", "clicked": 0}\n'
                      '{"request_id": "req-9", "clicked": 0}\n')
    result = ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="b1")
    assert (result.rows, result.matched, result.unmatched, result.ambiguous) == (3, 1, 1, 1)
    assert result.path == "outcomes/churn/b1.parquet" and result.dataset == "outcomes-churn"
    rows = pq.read_table(storage.path(result.path)).to_pylist()
    assert [(r["request_id"], r["label"], r["prediction"], r["version"]) for r in rows] == [("req-1", 1.0, 0.8, 1)]
    dv = get_dataset(registry, "outcomes-churn")
    assert dv.kind.value == "outcomes" and dv.num_rows == 1 and dataset_files(dv) == ["outcomes/churn/b1.parquet"]
    with pytest.raises(MlplatError, match="b1"):
        ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="b1")


@needs_add_files
def test_ingest_point_in_time_by_feature_or_context_entity(served, tmp_path) -> None:
    storage, registry = served
    now = pq.read_table(storage.path("telemetry", "churn")).column("ts").to_pylist()
    later = max(now) + 60
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"user": ["u1", "u3", "u1"], "at": [later, later, min(now) - 3600], "churned": [1, 0, 1]}),
                   labels)
    result = ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="churned", entity_column="user",
                             time_column="at", batch="pit")
    assert (result.matched, result.unmatched) == (2, 1)
    rows = {r["entity"]: r for r in pq.read_table(storage.path(result.path)).to_pylist()}
    assert rows["u1"]["version"] == 2 and rows["u1"]["prediction"] == 0.9  # the latest before the outcome
    assert rows["u3"]["request_id"] == "req-2" and rows["u3"]["request_row"] == 1
    sessions = tmp_path / "sessions.csv"
    sessions.write_text(f"session,at,clicked\ns-1,{later},1\n")
    result = ingest_outcomes(storage, registry, "churn", [str(sessions)], label_column="clicked",
                             entity_column="session", time_column="at", batch="ctx")
    assert result.matched == 1
    assert pq.read_table(storage.path(result.path)).column("request_id").to_pylist() == ["req-1"]


def test_epoch_milliseconds_and_fractional_rows_are_one_line_errors_naming_the_column(served, tmp_path) -> None:
    storage, registry = served
    now_ms = int(time.time() * 1000)
    pit = tmp_path / "pit.csv"
    pit.write_text(f"user,at,churned\nu1,{now_ms},1\n")
    with pytest.raises(ValidationError, match=r"time column 'at' holds \d+, after the year 3000: it looks like epoch "
                                              r"milliseconds: divide by 1000") as info:
        ingest_outcomes(storage, registry, "churn", [str(pit)], label_column="churned", entity_column="user",
                        time_column="at", batch="ms")
    assert "\n" not in str(info.value)
    with pytest.raises(ValidationError, match="time column 'at'"):
        join_point_in_time(pa.table({"user": ["u1"], "at": [float("inf")], "y": [1]}),
                           _entity_predictions([("u1", 1.0, 0.5)]), label_column="y", entity_column="user", time_column="at")
    rows = tmp_path / "rows.csv"
    rows.write_text("request_id,request_row,clicked\nreq-2,1.5,1\n")
    with pytest.raises(ValidationError, match=r"column 'request_row' .* must hold whole numbers") as info:
        ingest_outcomes(storage, registry, "churn", [str(rows)], label_column="clicked", batch="frac")
    assert "\n" not in str(info.value)
    with pytest.raises(ValidationError, match="'request_row'"):
        join_by_request_id(pa.table({"request_id": ["m"], "request_row": ["first"], "y": [1]}),
                           _predictions([("m", 0, 1.0, 1, 0.1)]), label_column="y", row_column="request_row")
    whole = pa.table({"request_id": ["m"], "request_row": [1.0], "y": [1]})  # whole numbers as floats pass
    table, counts = join_by_request_id(whole, _predictions([("m", 1, 1.0, 1, 0.1)]), label_column="y",
                                       row_column="request_row")
    assert counts["matched"] == 1


def test_the_request_id_join_reads_only_the_days_it_needs(served, tmp_path, monkeypatch) -> None:
    import mlplat.data.catalog as catalog

    storage, registry = served
    monkeypatch.setattr(catalog, "add_files", lambda *a, **kw: None, raising=False)
    # an old day whose file cannot even be read: the join must not open it
    storage.write_bytes(b"PAR1 not parquet", "telemetry", "churn", "date=2020-01-01", "w-1577880000000-0.parquet")
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,clicked\nreq-1,1\nreq-3,0\n")
    result = ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="recent")
    assert (result.matched, result.unmatched) == (2, 0)
    assert result.notes and "last 30 days" in result.notes[0] and result.to_json()["notes"] == list(result.notes)
    # with the request time: the days of that range (one day of slack each side), nothing else
    timed = tmp_path / "timed.csv"
    timed.write_text(f"request_id,requested_at,clicked\nreq-1,{time.time() - 60:.3f},1\n")
    result = ingest_outcomes(storage, registry, "churn", [str(timed)], label_column="clicked", time_column="requested_at",
                             batch="timed")
    assert result.matched == 1 and result.notes == ()
    old = tmp_path / "old.csv"
    old.write_text("request_id,requested_at,clicked\nreq-1,2020-01-01T12:00:00Z,1\n")
    with pytest.raises(StorageError, match="date=2020-01-01"):  # that day is read (and today's is not)
        ingest_outcomes(storage, registry, "churn", [str(old)], label_column="clicked", time_column="requested_at",
                        batch="old")
    with pytest.raises(ValidationError, match="max_days"):
        ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", max_days=0)


# -- the CLI -------------------------------------------------------------------------------------------------


class FakePlatform:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def ingest_outcomes(self, *args: Any, **kwargs: Any) -> OutcomeBatch:
        self.calls.append((args, kwargs))
        return OutcomeBatch(model=args[0], batch="b", dataset="outcomes-churn", path="outcomes/churn/b.parquet",
                            rows=3, matched=2, unmatched=1)


class Lazy:
    def __init__(self, p: FakePlatform):
        self.p = p

    def get(self) -> FakePlatform:
        return self.p


def test_cli_outcomes_passes_the_join_and_prints() -> None:
    p = FakePlatform()
    runner = CliRunner()
    result = runner.invoke(outcomes_command, ["churn", "a.csv", "b.csv", "--label", "clicked", "--json"], obj=Lazy(p))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["matched"] == 2
    assert p.calls[-1] == (("churn", ["a.csv", "b.csv"]), {"label_column": "clicked", "request_id_column": "request_id",
                                                          "entity_column": None, "time_column": None, "batch": None})
    result = runner.invoke(outcomes_command, ["churn", "a.csv", "--label", "y", "--entity", "user", "--time", "at"],
                           obj=Lazy(p))
    assert result.exit_code == 0 and "matched" in result.output and "outcomes/churn/b.parquet" in result.output
    assert p.calls[-1][1]["request_id_column"] is None and p.calls[-1][1]["entity_column"] == "user"
    for bad in (["--entity", "user"], ["--entity", "u", "--time", "t", "--request-id-column", "rid"], []):
        result = runner.invoke(outcomes_command, ["churn", "a.csv", *(["--label", "y"] if bad else []), *bad],
                               obj=Lazy(p))
        assert result.exit_code == 2, (bad, result.output)


def test_catalog_missing_is_one_clear_error(served, tmp_path, monkeypatch) -> None:
    import mlplat.data.catalog as catalog

    storage, registry = served
    if hasattr(catalog, "add_files"):
        monkeypatch.delattr(catalog, "add_files")
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,clicked\nreq-1,1\n")
    with pytest.raises(MlplatError, match="add_files"):
        ingest_outcomes(storage, registry, "churn", [str(labels)], label_column="clicked", batch="b2")
    assert not storage.exists("outcomes", "churn", "b2.parquet")
