"""Telemetry as data, without Ray: the call context from headers and its bounds (none by
default), the request id, the row shape of a flush (``raw_features``), the bounded buffer and
its drop counts, the catalog sync (its own thread, batches per interval, file-by-file fallback,
registry calls under a timeout, retry and give-up rules), the request metrics' aggregation
(through a fake sink; sent off the event loop, a uniform latency sample), and the canary split
counted for answered requests only."""

from __future__ import annotations

import asyncio
import doctest
import io
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlplat.metrics
import mlplat.serving.telemetry
from mlplat.config import ServeSettings
from mlplat.errors import NotFound, SchemaMismatch, StorageError
from mlplat.metrics import SERIES, prometheus_name, record_drift_scores
from mlplat.serving.metrics import MAX_LATENCIES_PER_EXPORT, UNKNOWN_MODEL, ServingMetrics
from mlplat.serving.telemetry import (
    MAX_CONTEXT_KEYS,
    TelemetryFile,
    TelemetryWriter,
    context_from_headers,
    request_id_of,
    telemetry_dataset_name,
)
from mlplat.serving.telemetry_catalog import MAX_ABANDONED_CALLS, CatalogSync, CatalogUnavailable, RegistryTimeout
from mlplat.storage import open_root

KINDS = {"amount": "number", "age": "number_or_null", "country": "category"}


def _rows(n: int = 1) -> list[dict[str, Any]]:
    return [{"amount": 12.5 + i, "age": 31 if i % 2 == 0 else None, "country": "fr"} for i in range(n)]


@pytest.mark.parametrize("module", [mlplat.serving.telemetry, mlplat.metrics])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# -- context ---------------------------------------------------------------------------------------


def test_context_headers_become_keys_and_other_headers_are_ignored() -> None:
    raw = [(b"host", b"x"), (b"x-mlplat-context-tenant", b"acme"), (b"X-MLPLAT-CONTEXT-channel", b"web"),
           (b"x-mlplat-caller", b"svc"), (b"x-mlplat-context-", b"empty key"), (b"x-mlplat-context-bad key", b"v"),
           (b"x-mlplat-context-../x", b"v"), (b"x-mlplat-context-tenant", b"second"), (b"x-mlplat-context-utf", "é".encode())]
    assert context_from_headers(raw) == {"tenant": "acme", "channel": "web", "utf": "é"}


def test_context_is_bounded_in_keys_and_value_length() -> None:
    raw = [(f"x-mlplat-context-k{i:02d}".encode(), b"v" * 1000) for i in range(40)]
    context = context_from_headers(raw)
    assert list(context) == [f"k{i:02d}" for i in range(MAX_CONTEXT_KEYS)]
    assert all(len(v) == 256 for v in context.values())
    assert context_from_headers(raw, max_keys=2, max_value_chars=3) == {"k00": "vvv", "k01": "vvv"}


def test_context_keys_setting_is_an_allowlist() -> None:
    raw = [(b"x-mlplat-context-tenant", b"acme"), (b"x-mlplat-context-secret", b"s")]
    assert context_from_headers(raw, keys=frozenset({"tenant"})) == {"tenant": "acme"}
    assert context_from_headers(raw, keys=frozenset()) == {}


def test_no_context_columns_unless_configured() -> None:
    """The default allowlist is empty: a client cannot grow the catalog schema with headers."""
    default = ServeSettings()
    assert default.telemetry_context_keys == []
    raw = [(b"x-mlplat-context-tenant", b"acme"), (b"x-mlplat-context-k2", b"x")]
    assert context_from_headers(raw, keys=frozenset(default.telemetry_context_keys)) == {}
    configured = ServeSettings(telemetry_context_keys=["tenant"])
    assert context_from_headers(raw, keys=frozenset(configured.telemetry_context_keys or ())) == {"tenant": "acme"}
    many = [(f"x-mlplat-context-k{i:02d}".encode(), b"v" * 300) for i in range(20)]
    anything = ServeSettings(telemetry_context_keys=None)  # explicit opt-in: still 16 keys, 256 characters
    assert anything.telemetry_context_keys is None
    got = context_from_headers(many, keys=None)
    assert len(got) == MAX_CONTEXT_KEYS and all(len(v) == 256 for v in got.values())
    with pytest.raises(Exception, match="telemetry_context_keys"):
        ServeSettings(telemetry_context_keys=["Bad Key"])


def test_request_id_prefers_the_oip_id_then_the_header_then_a_new_unique_id() -> None:
    assert request_id_of("req-1", "hdr") == "req-1"
    assert request_id_of(None, "hdr 7") == "hdr 7"  # Serve echoes whatever the client sent
    for unusable in ("x" * 257, "", None):
        generated = request_id_of(None, unusable)
        assert len(generated) == 32 and int(generated, 16) >= 0
    assert request_id_of(None, None) != request_id_of(None, None)


def test_dataset_names_fit_the_name_rule() -> None:
    from mlplat.names import validate_name

    for model in ("a", "churn", "m" * 53, "m" * 54, "x" + "-" * 62):
        validate_name(telemetry_dataset_name(model), "dataset name")
    assert telemetry_dataset_name("m" * 60) != telemetry_dataset_name("m" * 61)


# -- the row shape -----------------------------------------------------------------------------------


def _writer(tmp_path, **kw) -> TelemetryWriter:
    return TelemetryWriter(open_root(str(tmp_path / "root")), writer_id="w1", **kw)


def _record(w: TelemetryWriter, model: str = "churn", n: int = 1, **kw: Any) -> None:
    args: dict[str, Any] = {"request_id": "r", "caller": "svc", "endpoint": "v1", "latency_ms": 1.5, "kinds": KINDS}
    args.update(kw)
    w.record(model, 2, _rows(n), [0.25 + i for i in range(n)], **args)


def _read_all(storage, model: str) -> pa.Table:
    tables = [pq.read_table(io.BytesIO(storage.read_bytes("telemetry", model, day, f)))
              for day in storage.list_dir("telemetry", model) for f in storage.list_dir("telemetry", model, day)]
    return pa.concat_tables(tables, promote_options="permissive")


def test_a_flush_writes_one_row_per_prediction_with_the_call_context(tmp_path) -> None:
    w = _writer(tmp_path)
    _record(w, n=2, request_id="req-9", region="eu", user_agent="curl/8", context={"tenant": "acme"})
    _record(w, n=1, request_id="req-10", context={"channel": "web"})
    files = w.flush()
    assert [(f.model, f.partition, f.num_rows) for f in files] == [("churn", files[0].partition, 3)]
    assert files[0].partition.startswith("date=") and files[0].name.startswith("w1-")
    table = _read_all(open_root(str(tmp_path / "root")), "churn")
    schema = {f.name: str(f.type) for f in table.schema}
    assert schema == {
        "ts": "double", "model": "string", "version": "int64", "request_id": "string", "request_row": "int64",
        "endpoint": "string", "caller": "string", "region": "string", "user_agent": "string", "latency_ms": "double",
        "prediction": "double", "raw_features": "bool", "feature.amount": "double", "feature.age": "double",
        "feature.country": "string", "context.tenant": "string", "context.channel": "string"}
    rows = table.to_pylist()
    assert [(r["request_id"], r["request_row"], r["prediction"]) for r in rows] == [
        ("req-9", 0, 0.25), ("req-9", 1, 1.25), ("req-10", 0, 0.25)]
    assert [r["context.tenant"] for r in rows] == ["acme", "acme", None]
    assert [r["context.channel"] for r in rows] == [None, None, "web"]
    assert rows[0]["region"] == "eu" and rows[0]["user_agent"] == "curl/8" and rows[2]["region"] is None
    assert [r["feature.age"] for r in rows] == [31.0, None, 31.0] and rows[0]["feature.country"] == "fr"
    assert [r["raw_features"] for r in rows] == [True, True, True]


def test_encoded_input_rows_are_flagged_as_without_raw_features(tmp_path) -> None:
    """A v2 request with the pre-encoded ``input`` tensor has no raw rows: its ``feature.*``
    are null because there were none, and ``raw_features`` says so (drift skips those rows)."""
    w = _writer(tmp_path)
    _record(w, n=2, request_id="raw")
    w.record("churn", 2, None, [0.7, 0.8], request_id="encoded", caller=None, endpoint="v2", latency_ms=1.0,
             kinds=KINDS, matrix=np.zeros((2, 4), dtype=np.float32))
    w.flush()
    table = _read_all(open_root(str(tmp_path / "root")), "churn")
    assert table.schema.field("raw_features").type == pa.bool_()
    rows = table.to_pylist()
    assert [(r["request_id"], r["raw_features"]) for r in rows] == [
        ("raw", True), ("raw", True), ("encoded", False), ("encoded", False)]
    assert [r["feature.amount"] for r in rows] == [12.5, 13.5, None, None]

    only_encoded = _writer(tmp_path / "b")
    only_encoded.record("m", 1, None, [0.1], request_id="e", caller=None, endpoint="v2", latency_ms=1.0,
                        matrix=np.zeros((1, 2), dtype=np.float32))
    only_encoded.flush()
    table = _read_all(open_root(str(tmp_path / "b" / "root")), "m")
    assert table.column("raw_features").to_pylist() == [False]
    assert not [c for c in table.column_names if c.startswith("feature.")]


def test_vectors_are_json_text_and_categories_stay_text(tmp_path) -> None:
    w = _writer(tmp_path)
    w.record("multi", 1, [{"plan": 3}, {"plan": True}], [[0.1, 0.9], [0.5, 0.5]], request_id="r", caller=None,
             endpoint="v2", latency_ms=1.0, kinds={"plan": "category"})
    w.flush()
    rows = _read_all(open_root(str(tmp_path / "root")), "multi").to_pylist()
    assert [r["prediction"] for r in rows] == ["[0.1, 0.9]", "[0.5, 0.5]"]
    assert [r["feature.plan"] for r in rows] == ["3", "true"]  # the encoders' category keys


def test_encoded_features_from_the_matrix_and_from_the_versions_encoder(tmp_path) -> None:
    from mlplat.features import FeatureEncoder, build_encoder
    from mlplat.models.bundle import BUNDLE_FILE, bundle_dir

    storage = open_root(str(tmp_path / "root"))
    fitted = FeatureEncoder([build_encoder({"type": "standardize", "column": "amount"}),
                             build_encoder({"type": "onehot", "column": "country"})]).fit_table(
        pa.table({"amount": [1.0, 3.0], "country": ["fr", "de"]}))
    storage.write_json({"encoder": fitted.to_json()}, *bundle_dir("churn", 2), BUNDLE_FILE)
    w = TelemetryWriter(storage, encoded=True)
    w.record("churn", 2, [{"amount": 3.0, "country": "fr"}], [0.5], request_id="a", caller=None, endpoint="v1",
             latency_ms=1.0, kinds={"amount": "number", "country": "category"})
    w.record("churn", 2, None, [0.7], request_id="b", caller=None, endpoint="v2", latency_ms=1.0,
             matrix=np.array([[0.5, 1.0, 0.0, 0.0]], dtype=np.float32))
    w.record("churn", 3, [{"amount": 1.0, "country": "de"}], [0.1], request_id="c", caller=None, endpoint="v1",
             latency_ms=1.0)  # v3 has no bundle: encoded is null, the error counted
    w.flush()
    table = _read_all(storage, "churn")
    assert pa.types.is_list(table.schema.field("encoded").type) and table.schema.field("encoded").type.value_type == pa.float32()
    by_id = {r["request_id"]: r["encoded"] for r in table.to_pylist()}
    assert by_id["a"] == pytest.approx(fitted.to_numpy([{"amount": 3.0, "country": "fr"}])[0].tolist())
    assert by_id["b"] == [0.5, 1.0, 0.0, 0.0] and by_id["c"] is None
    assert w.take_counts()[1] == {"encode": 1}


# -- the bounded buffer ----------------------------------------------------------------------------------


def test_the_buffer_drops_the_oldest_requests_and_counts_them_per_model(tmp_path) -> None:
    w = _writer(tmp_path, max_rows=5)
    _record(w, "a", n=2, request_id="a1")
    _record(w, "b", n=2, request_id="b1")
    _record(w, "a", n=3, request_id="a2")  # 7 > 5: a1 goes (2 rows)
    assert w.pending_rows == 5 and w.dropped_rows == 2
    _record(w, "b", n=9, request_id="big")  # larger than the buffer: everything before it, then itself
    assert w.pending_rows == 0 and w.dropped_rows == 2 + 14
    assert w.take_counts() == ({"a": 5, "b": 11}, {})
    assert w.take_counts() == ({}, {})


def test_a_failed_write_keeps_its_rows_for_the_next_flush_within_the_bound(tmp_path, monkeypatch) -> None:
    w = _writer(tmp_path, max_rows=4)
    _record(w, "a", n=3, request_id="old")
    storage = w._storage
    real = storage.write_bytes

    def broken(*args: Any, **kw: Any) -> Any:
        raise StorageError("disk full")

    monkeypatch.setattr(type(storage), "write_bytes", lambda self, *a, **k: broken())
    assert w.flush() == [] and w.flush_errors == 1 and w.pending_rows == 3
    _record(w, "a", n=2, request_id="new")  # 5 > 4: the oldest (the failed request) is dropped
    assert w.pending_rows == 2 and w.take_counts() == ({"a": 3}, {"flush": 1})
    monkeypatch.setattr(type(storage), "write_bytes", real)
    assert [f.num_rows for f in w.flush()] == [2]


def test_record_stores_references_only(tmp_path) -> None:
    w = _writer(tmp_path)
    rows, predictions = _rows(2), [0.1, 0.2]
    w.record("m", 1, rows, predictions, request_id="r", caller=None, endpoint="v1", latency_ms=1.0)
    item = w._pending[0]
    assert item.rows is rows and item.predictions is predictions and item.matrix is None


# -- the catalog sync --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _file(model: str, name: str, day: str = "2026-11-30") -> TelemetryFile:
    return TelemetryFile(model, f"date={day}", name, 1)


def test_sync_registers_files_grouped_by_model_and_partition() -> None:
    calls: list[tuple[str, str, list[str]]] = []
    sync = CatalogSync(lambda m, p, f: calls.append((m, p, f)))
    sync.add([_file("a", "1.parquet"), _file("a", "2.parquet"), _file("b", "3.parquet"), _file("a", "4.parquet", "2026-12-01")])
    assert sync.sync() == 4 and sync.pending_files == 0 and sync.registered_files == 4
    assert calls == [("a", "date=2026-11-30", ["date=2026-11-30/1.parquet", "date=2026-11-30/2.parquet"]),
                     ("b", "date=2026-11-30", ["date=2026-11-30/3.parquet"]),
                     ("a", "date=2026-12-01", ["date=2026-12-01/4.parquet"])]


def test_sync_retries_a_failed_group_with_backoff_and_counts_each_failure() -> None:
    clock, outcomes, errors = Clock(), [ConnectionError("registry restarting")] * 2, []
    calls: list[list[str]] = []

    def register(model: str, partition: str, files: list[str]) -> None:
        calls.append(list(files))
        if outcomes:
            raise outcomes.pop()

    sync = CatalogSync(register, interval_s=0, retry_s=5, clock=clock, on_error=lambda: errors.append(1))
    sync.add([_file("a", "1.parquet")])
    assert sync.sync() == 0 and sync.errors == 1
    sync.add([_file("a", "2.parquet")])
    clock.now = 4.9
    assert sync.sync() == 0 and len(calls) == 1  # not due yet
    clock.now = 5.0
    assert sync.sync() == 0 and sync.errors == 2  # second failure: next try after 10 s more
    clock.now = 14.9
    assert sync.sync() == 0 and len(calls) == 2
    clock.now = 15.0
    assert sync.sync() == 2 and calls[-1] == ["date=2026-11-30/1.parquet", "date=2026-11-30/2.parquet"]
    assert len(errors) == 2 and sync.pending_files == 0


def test_sync_drops_files_the_catalog_refuses_and_stops_when_it_cannot_register_at_all() -> None:
    def refuse(model: str, partition: str, files: list[str]) -> None:
        if model == "bad":
            raise SchemaMismatch("column 'prediction' has type string, the dataset has double")

    sync = CatalogSync(refuse)
    sync.add([_file("bad", "1.parquet"), _file("good", "2.parquet")])
    assert sync.sync() == 1 and sync.rejected == 1 and sync.pending_files == 0 and sync.errors == 1

    def unavailable(model: str, partition: str, files: list[str]) -> None:
        raise CatalogUnavailable("no add_files")

    sync = CatalogSync(unavailable)
    sync.add([_file("a", "1.parquet")])
    assert sync.sync() == 0 and sync.disabled == "no add_files" and sync.pending_files == 0
    sync.add([_file("a", "2.parquet")])
    assert sync.pending_files == 0


def test_sync_queue_is_bounded() -> None:
    sync = CatalogSync(lambda m, p, f: None, max_files=3)
    sync.add([_file("a", f"{i}.parquet") for i in range(5)])
    assert sync.pending_files == 3 and sync.dropped_files == 2


def test_sync_registers_each_model_and_day_at_most_once_per_interval() -> None:
    clock, calls = Clock(), []
    sync = CatalogSync(lambda m, p, f: calls.append((m, p, list(f))), interval_s=60, clock=clock)
    sync.add([_file("a", "1.parquet")])
    assert sync.sync() == 1  # a day's first files go at once
    for t, name in ((5, "2"), (10, "3"), (30, "4")):  # flushes every few seconds
        clock.now = t
        sync.add([_file("a", f"{name}.parquet")])
        assert sync.sync() == 0
    sync.add([_file("b", "5.parquet")])  # another model: its own interval
    assert sync.sync() == 1
    clock.now = 59.9
    assert sync.sync() == 0 and sync.pending_files == 3
    clock.now = 60
    assert sync.sync() == 3
    assert calls == [("a", "date=2026-11-30", ["date=2026-11-30/1.parquet"]),
                     ("b", "date=2026-11-30", ["date=2026-11-30/5.parquet"]),
                     ("a", "date=2026-11-30", [f"date=2026-11-30/{n}.parquet" for n in "234"])]  # one call per batch
    clock.now = 61
    sync.add([_file("a", "6.parquet")])
    assert sync.sync() == 0  # the interval counts from the last call
    assert sync.sync_now() is True and sync.pending_files == 0  # explicit: now (no thread running)


def test_a_failed_batch_is_retried_no_sooner_than_the_interval() -> None:
    clock, outcomes = Clock(), [ConnectionError("down")]
    calls: list[float] = []

    def register(model: str, partition: str, files: list[str]) -> None:
        calls.append(clock.now)
        if outcomes:
            raise outcomes.pop()

    sync = CatalogSync(register, interval_s=60, retry_s=5, clock=clock)
    sync.add([_file("a", "1.parquet")])
    assert sync.sync() == 0 and sync.errors == 1
    clock.now = 30
    assert sync.sync() == 0
    clock.now = 60
    assert sync.sync() == 1 and calls == [0, 60]


def test_a_schema_mismatch_in_a_batch_registers_the_other_files_one_by_one() -> None:
    calls: list[list[str]] = []
    errors: list[int] = []

    def register(model: str, partition: str, files: list[str]) -> None:
        calls.append(list(files))
        if any("bad" in f for f in files):
            raise SchemaMismatch("column 'feature.x' has type string, the dataset has double")

    sync = CatalogSync(register, on_error=lambda: errors.append(1))
    sync.add([_file("a", "1.parquet"), _file("a", "bad.parquet"), _file("a", "3.parquet")])
    assert sync.sync() == 2
    assert calls[0] == ["date=2026-11-30/1.parquet", "date=2026-11-30/bad.parquet", "date=2026-11-30/3.parquet"]
    assert calls[1:] == [["date=2026-11-30/1.parquet"], ["date=2026-11-30/bad.parquet"], ["date=2026-11-30/3.parquet"]]
    assert (sync.registered_files, sync.rejected, sync.pending_files, sync.errors, len(errors)) == (2, 1, 0, 1, 1)


def test_file_by_file_stops_at_a_transient_failure_and_keeps_the_rest_queued() -> None:
    clock = Clock()
    state = {"down": False}

    def register(model: str, partition: str, files: list[str]) -> None:
        if len(files) > 1:
            raise NotFound("a file of the batch is gone")
        if files[0].endswith("gone.parquet"):
            raise NotFound("gone")
        if state["down"]:
            raise ConnectionError("registry restarting")
        state["down"] = True  # the first single file goes through, then the registry goes away

    sync = CatalogSync(register, interval_s=0, retry_s=5, clock=clock)
    sync.add([_file("a", "gone.parquet"), _file("a", "2.parquet"), _file("a", "3.parquet")])
    assert sync.sync() == 1 and sync.rejected == 1 and sync.pending_files == 1 and sync.errors == 2
    state["down"] = False
    clock.now = 5
    assert sync.sync() == 1 and sync.pending_files == 0


def test_the_catalog_thread_registers_while_the_flush_only_queues() -> None:
    """``add`` (the flush thread) returns while the registry hangs; the catalog thread does the
    call; ``sync_now`` waits for it."""
    release, entered = threading.Event(), threading.Event()
    callers: list[str] = []

    def register(model: str, partition: str, files: list[str]) -> None:
        callers.append(threading.current_thread().name)
        entered.set()
        assert release.wait(10)

    sync = CatalogSync(register, interval_s=3600)
    sync.start()
    try:
        t0 = time.monotonic()
        sync.add([_file("a", "1.parquet")])
        assert entered.wait(5)  # picked up by the thread at once (a day's first files)
        sync.add([_file("a", "2.parquet")])  # the registry is stuck: queuing still returns at once
        assert time.monotonic() - t0 < 2 and sync.pending_files == 2
        release.set()
        assert sync.sync_now(timeout_s=10) is True  # forced past the hour's interval
        assert sync.pending_files == 0 and sync.registered_files == 2
        assert callers == ["mlplat-telemetry-catalog"] * 2
    finally:
        release.set()
        sync.stop()
    assert not sync.running


def test_registrar_registry_calls_are_abandoned_after_the_timeout(tmp_path, monkeypatch) -> None:
    from mlplat.serving.telemetry_catalog import catalog_registrar

    hang = threading.Event()

    class StuckRegistry:
        def catalog_get(self, *args: Any, **kwargs: Any) -> Any:
            hang.wait(30)
            raise NotFound("late")

    try:
        register = catalog_registrar(open_root(str(tmp_path / "root")), StuckRegistry, timeout_s=0.2)
        errors: list[int] = []
        sync = CatalogSync(register, interval_s=0, retry_s=0, on_error=lambda: errors.append(1))
        sync.add([_file("churn", "1.parquet")])
        t0 = time.monotonic()
        assert sync.sync() == 0
        assert time.monotonic() - t0 < 5 and sync.errors == 1 and errors == [1] and sync.pending_files == 1
        for _ in range(MAX_ABANDONED_CALLS):  # more stuck calls, then none is sent until one returns
            try:
                register("churn", "date=2026-11-30", ["date=2026-11-30/1.parquet"])
            except RegistryTimeout as exc:
                last = str(exc)
        assert "not sent" in last
    finally:
        hang.set()


def test_registrar_calls_the_catalog_with_the_dataset_directory_and_partition(tmp_path, monkeypatch) -> None:
    import mlplat.data.catalog as catalog
    from mlplat.serving.telemetry_catalog import catalog_registrar

    calls: list[tuple[Any, ...]] = []
    built: list[int] = []
    monkeypatch.setattr(catalog, "add_files", lambda *a, **kw: calls.append((*a[1:], kw)), raising=False)
    register = catalog_registrar(open_root(str(tmp_path / "root")), lambda: built.append(1) or "the-registry")
    register("churn", "date=2026-11-30", ["date=2026-11-30/w-1.parquet"])
    register("m" * 60, "date=2026-11-30", ["date=2026-11-30/w-2.parquet"])
    assert built == [1]  # the registry is built once, on first use (in the catalog thread)
    assert calls[0][0]._registry == "the-registry"  # every registry call under the timeout
    assert calls[0][1:4] == ("telemetry-churn", "telemetry/churn", ["date=2026-11-30/w-1.parquet"])
    assert calls[0][4]["partition"] == "date=2026-11-30" and calls[0][4]["kind"] == "telemetry"
    assert calls[1][1] == telemetry_dataset_name("m" * 60) and calls[1][2] == "telemetry/" + "m" * 60
    monkeypatch.delattr(catalog, "add_files")
    with pytest.raises(CatalogUnavailable):
        register("churn", "date=2026-11-30", ["date=2026-11-30/w-3.parquet"])


def test_registrar_adds_telemetry_files_to_the_catalog_in_place(tmp_path) -> None:
    catalog = pytest.importorskip("mlplat.data.catalog")
    if not hasattr(catalog, "add_files"):
        pytest.skip("the data catalog has no add_files yet (register files in place)")
    from mlplat.data import dataset_files, get_dataset, search_datasets
    from mlplat.registry import RegistryStore
    from mlplat.serving.telemetry_catalog import catalog_registrar

    storage, registry = open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))
    w = TelemetryWriter(storage, writer_id="w1")
    sync = CatalogSync(catalog_registrar(storage, lambda: registry))
    _record(w, n=2, context={"tenant": "acme"})
    sync.add(w.flush())
    _record(w, n=1)
    sync.add(w.flush())
    assert sync.sync() == 2 and sync.errors == 0
    dv = get_dataset(registry, "telemetry-churn")
    assert dv.kind.value == "telemetry" and dv.num_rows == 3 and dv.path == "telemetry/churn"
    assert len(dv.partitions) == 1 and len(dv.partitions[0].files) == 2
    assert "context.tenant" in dv.column_names and all(storage.exists(f) for f in dataset_files(dv))
    assert [d.name for d in search_datasets(registry, "tenant")] == ["telemetry-churn"]


# -- request metrics ---------------------------------------------------------------------------------------


class FakeSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, str]]] = []

    def inc(self, name: str, value: float, tags: Any) -> None:
        self.calls.append(("inc", name, value, dict(tags)))

    def observe(self, name: str, value: float, tags: Any) -> None:
        self.calls.append(("observe", name, value, dict(tags)))

    def set(self, name: str, value: float, tags: Any) -> None:
        self.calls.append(("set", name, value, dict(tags)))


def test_request_metrics_aggregate_until_export(tmp_path) -> None:
    sink, w = FakeSink(), _writer(tmp_path, max_rows=1)
    metrics = ServingMetrics(sink, telemetry=w)
    for _ in range(3):
        metrics.request("churn", 2, 200, 4.0)
    metrics.request("churn", 2, 422, 1.0)
    metrics.request(UNKNOWN_MODEL, 0, 404, 0.5)
    metrics.canary("churn", 3, "canary")
    metrics.canary("churn", 2, "production")
    _record(w, n=1)
    _record(w, n=2)  # over max_rows=1: the oldest requests go, this one too (3 rows)
    w.count_error("catalog")
    assert sink.calls == []
    metrics.export()
    incs = {(c[1], tuple(sorted(c[3].items()))): c[2] for c in sink.calls if c[0] == "inc"}
    assert incs == {
        ("mlplat_requests", (("code", "200"), ("model", "churn"), ("version", "2"))): 3,
        ("mlplat_requests", (("code", "422"), ("model", "churn"), ("version", "2"))): 1,
        ("mlplat_requests", (("code", "404"), ("model", UNKNOWN_MODEL), ("version", ""))): 1,
        ("mlplat_canary_requests", (("arm", "canary"), ("model", "churn"), ("version", "3"))): 1,
        ("mlplat_canary_requests", (("arm", "production"), ("model", "churn"), ("version", "2"))): 1,
        ("mlplat_telemetry_rows_dropped", (("model", "churn"),)): 3,
        ("mlplat_telemetry_errors", (("stage", "catalog"),)): 1,
    }
    observed = sorted((c[3]["model"], c[2]) for c in sink.calls if c[0] == "observe")
    assert observed == [(UNKNOWN_MODEL, 0.5), ("churn", 1.0), ("churn", 4.0), ("churn", 4.0), ("churn", 4.0)]
    assert ("set", "mlplat_telemetry_pending_rows", 0, {}) in sink.calls
    sink.calls.clear()
    metrics.export()
    assert [c[0] for c in sink.calls] == ["set"]  # nothing new counted: only the buffer gauge


def test_latency_observations_are_a_uniform_sample_past_the_cap() -> None:
    sink = FakeSink()
    metrics = ServingMetrics(sink)
    assert MAX_LATENCIES_PER_EXPORT == ServeSettings().metrics_max_latencies == 1_000  # the setting's default
    for i in range(4 * MAX_LATENCIES_PER_EXPORT):  # the interval's first quarter at 1 ms, the rest at 2 ms
        metrics.request("m", 1, 200, 1.0 if i < MAX_LATENCIES_PER_EXPORT else 2.0)
    assert metrics.skipped_latencies == 3 * MAX_LATENCIES_PER_EXPORT
    metrics.export()
    observed = [c[2] for c in sink.calls if c[0] == "observe"]
    assert len(observed) == MAX_LATENCIES_PER_EXPORT
    assert 0.20 < observed.count(1.0) / len(observed) < 0.30  # not the first 1,000: a sample of all of them (±3.6 sd)
    assert [c[2] for c in sink.calls if c[0] == "inc"] == [4 * MAX_LATENCIES_PER_EXPORT]  # the counter stays exact
    sink.calls.clear()
    metrics.request("m", 1, 200, 3.0)  # a new interval: sampling starts over
    metrics.export()
    assert [c[2] for c in sink.calls if c[0] == "observe"] == [3.0]


def test_export_sends_to_ray_off_the_event_loop() -> None:
    class ThreadSink(FakeSink):
        def __init__(self) -> None:
            super().__init__()
            self.threads: set[int] = set()

        def observe(self, name: str, value: float, tags: Any) -> None:
            self.threads.add(threading.get_ident())
            time.sleep(0.001)
            super().observe(name, value, tags)

    sink = ThreadSink()
    metrics = ServingMetrics(sink)

    async def scenario() -> tuple[int, int]:
        for _ in range(200):
            metrics.request("m", 1, 200, 1.0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.get_running_loop().create_task(ticker())
        await metrics.export_async()
        task.cancel()
        metrics.request("m", 1, 200, 1.0)  # counted into the next interval, not the one being sent
        return threading.get_ident(), ticks

    loop_thread, ticks = asyncio.run(scenario())
    assert sink.threads and loop_thread not in sink.threads
    assert ticks > 10  # the loop kept running while ~200 ms of observations were sent
    assert sum(1 for c in sink.calls if c[0] == "observe") == 200


def test_series_names_as_prometheus_scrapes_them() -> None:
    names = {prometheus_name(n) for n in SERIES}
    assert names == {"ray_mlplat_requests_total", "ray_mlplat_request_latency_ms", "ray_mlplat_canary_requests_total",
                     "ray_mlplat_telemetry_rows_dropped_total", "ray_mlplat_telemetry_pending_rows",
                     "ray_mlplat_telemetry_errors_total", "ray_mlplat_drift_score"}
    assert SERIES["mlplat_requests"].tag_keys == ("model", "version", "code")
    assert SERIES["mlplat_drift_score"].tag_keys == ("model", "feature", "statistic")


def test_drift_scores_are_checked_and_need_ray() -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("this process is connected to Ray")
    assert record_drift_scores("churn", {"amount": {"psi": 0.2, "ks": float("nan")}}) == 0
    with pytest.raises(TypeError, match="amount"):
        record_drift_scores("churn", {"amount": {"psi": "high"}})  # type: ignore[dict-item]
    with pytest.raises(Exception, match="model name"):
        record_drift_scores("../x", {})


# -- the canary split counts answered requests --------------------------------------------------------------


def test_the_canary_split_counts_answered_requests_only(tmp_path) -> None:
    """A request the split sent to the canary that then failed (bad input: 422) is in the
    request counter with its code, not in the canary split; an answered one is in both."""
    import json

    import torch

    from mlplat.config import PlatformConfig
    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.records import ModelState
    from tests.integration.serving_support import RAW_ROW, fitted_encoder
    from tests.unit.test_serving_routes import FakeReader, _request, ingress_outside_serve

    storage = open_root(str(tmp_path / "root"))
    encoder = fitted_encoder(0)
    spec = ModelSpec(task="binary", hidden=[8])
    reader = FakeReader()
    for version in (1, 2):
        torch.manual_seed(version)
        ref = save_bundle(storage, "inline", version, build_model(spec, len(encoder.feature_columns)), spec=spec,
                          input_columns=encoder.feature_columns, encoder=encoder.to_json())
        reader.add("inline", version, ModelState.PRODUCTION if version == 1 else ModelState.CANARY, placement="ingress")
        reader.versions[("inline", version)] = reader.versions[("inline", version)].model_copy(
            update={"artifacts": {"bundle": ref}})
    reader.promote("inline", 1)
    reader.canary["inline"] = (2, 100.0)
    token = "unit-token"
    config = PlatformConfig(root=str(tmp_path / "root"), api_token=token)
    config = config.model_copy(update={"serve": config.serve.model_copy(
        update={"telemetry": False, "metrics_interval_s": 3600.0, "canary_report_s": 3600.0})})
    async def scenario() -> Any:
        ingress = ingress_outside_serve(config, "no-actor-needed", None, {}, reader=reader)
        try:
            bad = await ingress.predict_v1("inline", _request("/v1/models/inline:predict",
                                                              {"instances": [{**RAW_ROW, "amount": "lots"}]}, token))
            assert bad.status_code == 422, bad.body
            good = await ingress.predict_v1("inline", _request("/v1/models/inline:predict", {"instances": [RAW_ROW]}, token))
            assert good.status_code == 200, good.body
            assert json.loads(good.body)["model_version"] == "2"
            return dict(ingress._metrics._canary), dict(ingress._metrics._requests)
        finally:
            await ingress._routes.stop()

    canary, requests = asyncio.run(scenario())
    assert canary == {("inline", 2, "canary"): 1}
    assert requests == {("inline", 2, 422): 1, ("inline", 2, 200): 1}


def test_the_ingress_flushes_early_when_its_buffer_is_half_full(tmp_path):
    """``telemetry_flush_s`` is an hour, but a buffer at half of ``telemetry_max_rows`` is written
    within a check interval, so a fast replica keeps its rows instead of dropping the oldest;
    below half nothing is written before the hour."""
    import asyncio

    from mlplat.serving.telemetry import FLUSH_CHECK_S
    from mlplat.storage import open_root
    from tests.unit.test_load_shedding import _ingress

    ingress = _ingress(tmp_path, telemetry=True, telemetry_flush_s=3600, telemetry_max_rows=8)
    writer = ingress._telemetry  # noqa: SLF001 - the replica's own buffer

    def record(n: int) -> None:
        for i in range(n):
            writer.record("inline", 1, _rows(1), [0.5], request_id=f"r-{writer.pending_rows}-{i}", caller=None,
                          endpoint="v1", latency_ms=1.0)

    async def scenario() -> tuple[int, int, int]:
        task = asyncio.get_running_loop().create_task(ingress._flusher.run())  # noqa: SLF001
        try:
            record(3)  # under half: stays buffered
            await asyncio.sleep(3 * FLUSH_CHECK_S)
            below = writer.pending_rows
            record(2)  # 5 rows >= 8 / 2: flushed at the next check
            for _ in range(40):
                await asyncio.sleep(FLUSH_CHECK_S / 2)
                if writer.pending_rows == 0:
                    break
            return below, writer.pending_rows, writer.dropped_rows
        finally:
            task.cancel()
            await ingress._routes.stop()  # noqa: SLF001

    below, after, dropped = asyncio.run(scenario())
    assert (below, after, dropped) == (3, 0, 0)
    storage = open_root(str(tmp_path / "root"))
    files = [f for day in storage.list_dir("telemetry", "inline") for f in storage.list_dir("telemetry", "inline", day)]
    assert len(files) == 1, files
