"""The catalog's compare-and-set, without Ray: ``catalog_update(expected_updated_at=...)`` writes
only over the version it was read from (else ConflictError and nothing written, no event), and
``add_files`` from concurrent writers (ingress replicas flushing together) lists every file."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlplat.registry.tx
from mlplat.data import add_files, complete_partition, dataset_files, get_dataset
from mlplat.errors import ConflictError, ValidationError
from mlplat.registry import RegistryStore
from mlplat.storage import open_root

DAY = "date=2026-11-30"


@pytest.fixture
def store(registry_url) -> RegistryStore:
    s = RegistryStore(registry_url)
    yield s
    s.close()


# -- the registry's compare-and-set ------------------------------------------------------------------


def test_catalog_update_with_the_read_updated_at_writes(store) -> None:
    entry = store.catalog_register("dataset", "clicks", {"files": ["a"]})
    saved = store.catalog_update("dataset", "clicks", 1, {"files": ["a", "b"]}, expected_updated_at=entry.updated_at)
    assert saved.payload["files"] == ["a", "b"] and saved.updated_at > entry.updated_at


def test_catalog_update_over_a_stale_read_is_a_conflict_and_writes_nothing(store) -> None:
    entry = store.catalog_register("dataset", "clicks", {"files": ["a"]})
    first = store.catalog_update("dataset", "clicks", 1, {"files": ["a", "b"]}, expected_updated_at=entry.updated_at)
    seq = store.last_seq()
    with pytest.raises(ConflictError, match="re-read and retry"):
        store.catalog_update("dataset", "clicks", 1, {"files": ["a", "c"]}, expected_updated_at=entry.updated_at,
                             idempotency_key="stale-1")
    after = store.catalog_get("dataset", "clicks", 1)
    assert after.payload["files"] == ["a", "b"] and after.updated_at == first.updated_at
    assert store.last_seq() == seq  # no dataset_updated event either
    # the refused call's idempotency key was not recorded: the same key with a fresh read goes through
    again = store.catalog_update("dataset", "clicks", 1, {"files": ["a", "b", "c"]}, expected_updated_at=after.updated_at,
                                 idempotency_key="stale-1")
    assert again.payload["files"] == ["a", "b", "c"]


def test_catalog_update_without_expected_updated_at_is_unconditional(store) -> None:
    store.catalog_register("dataset", "clicks", {"n": 1})
    assert store.catalog_update("dataset", "clicks", 1, {"n": 2}).payload["n"] == 2
    with pytest.raises(ValidationError, match="expected_updated_at"):
        store.catalog_update("dataset", "clicks", 1, {"n": 3}, expected_updated_at="yesterday")  # type: ignore[arg-type]


def test_updated_at_moves_strictly_forward_even_when_the_clock_does_not(store, monkeypatch) -> None:
    monkeypatch.setattr(mlplat.registry.tx.time, "time", lambda: 1_800_000_000.0)
    entry = store.catalog_register("dataset", "clicks", {"n": 0})
    stamps = [entry.updated_at]
    for n in range(1, 4):
        stamps.append(store.catalog_update("dataset", "clicks", 1, {"n": n}, expected_updated_at=stamps[-1]).updated_at)
    assert stamps == sorted(set(stamps))  # every write leaves a new value: a stale read always conflicts
    with pytest.raises(ConflictError):
        store.catalog_update("dataset", "clicks", 1, {"n": 9}, expected_updated_at=stamps[-2])


# -- add_files from concurrent writers ------------------------------------------------------------------


def _telemetry_file(storage, name: str, value: float) -> str:
    storage.write_bytes(_parquet(value), "telemetry", "churn", DAY, name)
    return f"{DAY}/{name}"


def _parquet(value: float) -> bytes:
    import io

    sink = io.BytesIO()
    pq.write_table(pa.table({"ts": [float(value)], "prediction": [float(value)]}), sink)
    return sink.getvalue()


class BarrierRegistry:
    """The store, with every thread's first read of the dataset held until all writers have
    read it: each then writes over the same version -- the lost-update interleaving, every time."""

    def __init__(self, store: RegistryStore, parties: int):
        self._store, self._barrier, self._seen = store, threading.Barrier(parties, timeout=10), threading.local()

    def catalog_get(self, *args: Any, **kwargs: Any) -> Any:
        entry = self._store.catalog_get(*args, **kwargs)
        if not getattr(self._seen, "read", False):
            self._seen.read = True
            self._barrier.wait()
        return entry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _run(target, args_list) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_two_writers_adding_files_together_both_land(tmp_path) -> None:
    storage, store = open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))
    mine = [_telemetry_file(storage, f"a-{i}.parquet", i) for i in range(3)]
    theirs = [_telemetry_file(storage, f"b-{i}.parquet", 10 + i) for i in range(2)]
    add_files(storage, store, "telemetry-churn", "telemetry/churn", [_telemetry_file(storage, "first.parquet", 0.5)],
              partition=DAY, kind="telemetry")  # the dataset exists: both writers read the same version
    registry = BarrierRegistry(store, 2)

    def write(files: list[str]) -> None:
        add_files(storage, registry, "telemetry-churn", "telemetry/churn", files, partition=DAY, kind="telemetry")

    assert _run(write, [(mine,), (theirs,)]) == []
    dv = get_dataset(store, "telemetry-churn")
    assert sorted(dv.partition(DAY).files) == sorted([f"{DAY}/first.parquet", *mine, *theirs])
    assert dv.num_rows == 6 and dv.partition(DAY).num_rows == 6
    assert len(dataset_files(dv)) == 6


def test_many_writers_with_a_first_registration_race_lose_no_file(tmp_path) -> None:
    storage, store = open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))
    writers = 4
    files = [[_telemetry_file(storage, f"w{w}-{i}.parquet", w * 100 + i) for i in range(5)] for w in range(writers)]

    def write(batch: list[str]) -> None:
        for f in batch:  # one call per flushed file, as a replica's sync would
            add_files(storage, store, "telemetry-churn", "telemetry/churn", [f], partition=DAY, kind="telemetry")

    assert _run(write, [(b,) for b in files]) == []
    dv = get_dataset(store, "telemetry-churn")
    assert dv.version == 1  # concurrent first calls created one version
    assert sorted(dv.partition(DAY).files) == sorted(f for b in files for f in b) and dv.num_rows == 20


def test_completing_a_partition_keeps_files_added_meanwhile(tmp_path) -> None:
    storage, store = open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))
    other = "date=2026-11-29"
    storage.write_bytes(_parquet(1.0), "telemetry", "churn", other, "old.parquet")
    add_files(storage, store, "telemetry-churn", "telemetry/churn", [f"{other}/old.parquet"], partition=other,
              kind="telemetry")
    late = _telemetry_file(storage, "late.parquet", 2.0)
    registry = BarrierRegistry(store, 2)
    errors = _run(lambda job: job(), [
        (lambda: complete_partition(registry, "telemetry-churn", other),),
        (lambda: add_files(storage, registry, "telemetry-churn", "telemetry/churn", [late], partition=DAY,
                           kind="telemetry"),)])
    assert errors == []
    dv = get_dataset(store, "telemetry-churn")
    assert dv.partition(other).complete and dv.partition(DAY).files == (late,)


def test_add_files_gives_up_after_bounded_attempts(tmp_path, monkeypatch) -> None:
    import mlplat.data.catalog as catalog

    storage, store = open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))
    add_files(storage, store, "telemetry-churn", "telemetry/churn", [_telemetry_file(storage, "a.parquet", 1.0)],
              partition=DAY, kind="telemetry")
    calls: list[float | None] = []

    class AlwaysBehind:
        def catalog_update(self, *args: Any, expected_updated_at: float | None = None, **kwargs: Any) -> Any:
            calls.append(expected_updated_at)
            raise ConflictError("somebody changed it first")

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

    monkeypatch.setattr(catalog, "_CAS_BACKOFF_S", 0.0)
    with pytest.raises(ConflictError, match=f"{catalog.CAS_ATTEMPTS} times"):
        add_files(storage, AlwaysBehind(), "telemetry-churn", "telemetry/churn", [_telemetry_file(storage, "b.parquet", 2.0)],
                  partition=DAY, kind="telemetry")
    assert len(calls) == catalog.CAS_ATTEMPTS and all(c is not None for c in calls)
    assert get_dataset(store, "telemetry-churn").partition(DAY).files == (f"{DAY}/a.parquet",)
