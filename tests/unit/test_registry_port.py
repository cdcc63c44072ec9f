"""The registry port: the store implements every protocol call with its signature; registry.url
parsing; schema migrations (old databases upgrade, newer ones are refused); PostgreSQL down at
start and mid-call; writers in several processes on one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import inspect
import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from mlplat.config import PlatformConfig, normalize_registry_url, platform_config, redact_url
from mlplat.errors import ConfigError, StorageError
from mlplat.records import ApprovalState, ModelState, Run, RunState
from mlplat.registry import REGISTRY_CALLS, SCHEMA_VERSION, Registry, RegistryStore
from tests.servers import start_postgres


def _shape(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


def test_store_implements_every_call_with_the_protocols_signature(tmp_path):
    store = RegistryStore(tmp_path / "r.db")
    assert isinstance(store, Registry)
    assert len(REGISTRY_CALLS) == 42
    for name, call in REGISTRY_CALLS.items():
        implemented = inspect.signature(getattr(store, name))
        declared = inspect.signature(getattr(Registry, name))
        assert _shape(implemented) == _shape(declared), name
        assert call.writes == ("idempotency_key" in declared.parameters)
    writes = {n for n, c in REGISTRY_CALLS.items() if c.writes}
    assert {"register_version", "promote", "review", "update_run", "batch", "catalog_register"} <= writes
    assert not writes & {"get_version", "events_since", "read_batch", "backend_url", "list_runs"}


def test_call_binding_rejects_wrong_calls_like_a_direct_call():
    call = REGISTRY_CALLS["transition"]
    assert call.bind(("churn", 1, "TRAINING"), {})["state"] == "TRAINING"
    with pytest.raises(TypeError):
        call.bind(("churn",), {"bogus": 1})


@pytest.mark.parametrize(("given", "expected"), [
    ("/var/lib/r.db", "sqlite:////var/lib/r.db"),
    ("sqlite:///rel/r.db", f"sqlite:///{Path.cwd() / 'rel/r.db'}"),  # the actor runs elsewhere: absolute
    ("rel.db", f"sqlite:///{Path.cwd() / 'rel.db'}"),
    ("sqlite:////abs/r.db", "sqlite:////abs/r.db"),
    ("postgres://u:pw@db:5432/mlplat", "postgresql://u:pw@db:5432/mlplat"),
    ("postgresql://u@/mlplat?host=/run/pg", "postgresql://u@/mlplat?host=/run/pg"),
])
def test_registry_url_forms(given, expected):
    assert normalize_registry_url(given) == expected


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "sqlite://relative.db", "postgresql:///db", "  ", "http://x",
                                 "host=db user=mlplat password=secret dbname=mlplat"])
def test_bad_registry_url_is_one_line_naming_the_setting(bad):
    with pytest.raises(ConfigError) as err:
        normalize_registry_url(bad)
    assert "registry.url" in str(err.value) and "MLPLAT_REGISTRY_URL" in str(err.value) and "\n" not in str(err.value)


def test_registry_url_from_env_and_conflicts(tmp_path):
    cfg = platform_config(env={"MLPLAT_REGISTRY_URL": "postgresql://u:secret@db/mlplat"})
    assert cfg.registry_url() == "postgresql://u:secret@db/mlplat"
    assert PlatformConfig(root=str(tmp_path)).registry_url() == f"sqlite:///{tmp_path / 'registry.db'}"
    both = PlatformConfig(registry={"url": "postgresql://u@db/x"}, registry_db="/tmp/r.db")
    with pytest.raises(ConfigError, match="different databases"):
        both.registry_url()
    with pytest.raises(ConfigError, match="unknown key 'registry.uri'"):
        platform_config(env={}, registry__uri="x")
    with pytest.raises(ConfigError, match="MLPLAT_REGISTRY_URL"):
        PlatformConfig(registry={"url": "oracle://x"}).registry_url()


def test_redact_url_hides_passwords_in_user_part_and_query():
    assert redact_url("postgresql://u:s3cret@db/x") == "postgresql://u:***@db/x"
    assert redact_url("postgresql://u@db/x?sslmode=require&password=s3cret") == "postgresql://u@db/x?sslmode=require&password=***"
    assert redact_url("postgresql://u@db/x") == "postgresql://u@db/x"


@pytest.mark.postgres
def test_password_never_shown(postgres_server):
    url = postgres_server.url.replace("postgres:@", "postgres:hunter2@")
    with pytest.raises(StorageError) as err:  # wrong password or not: the message must not carry it
        RegistryStore(url.replace("/postgres?", "/no_such_db?"))
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


# -- migrations ------------------------------------------------------------------------------

_LEGACY_SCHEMA = """
CREATE TABLE models (name TEXT PRIMARY KEY, description TEXT NOT NULL, owner TEXT NOT NULL, tags TEXT NOT NULL,
    task_type TEXT, serving_policy TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE versions (model TEXT NOT NULL REFERENCES models(name), version INTEGER NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, config_hash TEXT, code_version TEXT, metrics TEXT NOT NULL,
    artifacts TEXT NOT NULL, datasets TEXT NOT NULL, feature_set TEXT, run_id TEXT, error TEXT, extra TEXT NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    version INTEGER, payload TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, version INTEGER, state TEXT NOT NULL,
    request TEXT NOT NULL, priority INTEGER NOT NULL, attempts INTEGER NOT NULL, claimed_by TEXT, claimed_at REAL,
    heartbeat_at REAL, cancel_requested INTEGER NOT NULL, progress TEXT NOT NULL, result TEXT, error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL);
"""


def test_a_database_from_before_migrations_is_upgraded_in_place(tmp_path):
    """mlplat 0.1's SQLite file: approval in extra, run metrics in result, no migration table."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_LEGACY_SCHEMA)
    conn.execute("INSERT INTO models VALUES ('churn','','','[]',NULL,'{}',1,1)")
    for v, extra in ((1, {"approval": "rejected", "approval_by": "bob", "approval_note": "no", "k": 1}),
                     (2, {"approval": "pending"}), (3, {"approval": "approved", "approval_by": "al"})):
        conn.execute("INSERT INTO versions VALUES ('churn',?,'VALIDATED',1,1,NULL,NULL,'{}','{}','[]',NULL,NULL,NULL,?)",
                     (v, json.dumps(extra)))
    conn.execute("INSERT INTO events(ts, kind, subject, version, payload) VALUES (1,'old','model:churn',1,'{}')")
    conn.execute("INSERT INTO runs VALUES ('r1','train','churn',3,'SUCCEEDED','{}',0,1,NULL,NULL,NULL,0,'{}',?,NULL,1,1,1)",
                 (json.dumps({"metrics": {"auc": 0.8}, "ok": True}),))
    conn.commit()
    conn.close()

    store = RegistryStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    rejected, pending, approved = (store.get_version("churn", v) for v in (1, 2, 3))
    assert (rejected.state, rejected.approval.state, rejected.approval.by, rejected.extra) == (
        ModelState.REJECTED, ApprovalState.REJECTED, "bob", {"k": 1})
    assert pending.approval.state is ApprovalState.PENDING and pending.extra == {}
    assert approved.approval.state is ApprovalState.APPROVED and approved.approval.by == "al"
    assert store.get_run("r1").metrics == {"auc": 0.8}
    assert store.last_seq() == 1 and store.append_event("new", "s").seq == 2  # the old log continues gap-free
    store.close()
    assert RegistryStore(path).schema_version() == SCHEMA_VERSION  # reopening applies nothing twice


def test_a_newer_schema_is_refused(registry_url):
    store = RegistryStore(registry_url)
    store._run_write("test", None, lambda tx: tx.execute(
        "INSERT INTO schema_migrations(version, description, applied_at) VALUES (?,?,?)", (SCHEMA_VERSION + 1, "future", 0)))
    store.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this mlplat"):
        RegistryStore(registry_url)


# -- PostgreSQL faults -----------------------------------------------------------------------

@pytest.mark.postgres
def test_postgresql_down_at_start_and_mid_call(tmp_path):
    server = start_postgres(tmp_path / "pg")
    try:
        store = RegistryStore(server.url)
        store.register_version("churn", idempotency_key="first")
        server.stop()
        with pytest.raises(StorageError, match="retry it with the same idempotency key"):
            store.register_version("churn", idempotency_key="second")
        with pytest.raises(StorageError, match="cannot be reached.*registry.url"):
            RegistryStore(server.url)
        server = start_postgres(tmp_path / "pg")  # the same data directory comes back
        again = store.register_version("churn", idempotency_key="second")  # the store reconnects by itself
        assert store.register_version("churn", idempotency_key="second") == again
        assert [v.version for v in store.list_versions("churn")] == [1, 2]
        store.close()
    finally:
        server.stop()


# -- several processes, one database ---------------------------------------------------------

def _writer(url: str, worker: int, n: int) -> None:
    store = RegistryStore(url)
    for i in range(n):
        store.append_event("w", f"worker:{worker}", {"i": i}, idempotency_key=f"w{worker}-{i}")
        if i % 10 == 0:
            store.enqueue_run(f"run-{worker}-{i}", kind="train", model=f"m{worker}", request={})
    store.close()


def test_writers_in_several_processes_see_one_gap_free_ordered_log(registry_url):
    RegistryStore(registry_url).close()  # migrate once, so the writers race on data, not DDL
    workers, n = 4, 40
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(registry_url, w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = RegistryStore(registry_url)
    events = store.events_since(0, limit=10_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gap-free
    assert [e.ts for e in events] == sorted(e.ts for e in events)  # seq order is commit order
    for w in range(workers):
        mine = [e.payload["i"] for e in events if e.subject == f"worker:{w}"]
        assert mine == list(range(n))  # each writer's events in its order, none lost or doubled
    claimed: list[Run] = []
    while (run := store.claim_next_run("one-scheduler")) is not None:
        claimed.append(run)
    assert len(claimed) == len({r.run_id for r in claimed}) == workers * (n // 10)
    assert all(r.state is RunState.RUNNING for r in claimed)
    store.close()


def test_event_seq_is_not_consumed_by_a_rolled_back_call(registry_url):
    store = RegistryStore(registry_url)
    store.append_event("a", "s")
    with pytest.raises(Exception):  # noqa: B017  (any failure inside the batch)
        store.batch([("append_event", {"kind": "b", "subject": "s"}), ("get_version", {"name": "ghost", "version": 1})])
    assert store.append_event("c", "s").seq == 2
    assert [e.kind for e in store.events_since(0)] == ["a", "c"]


def test_pruning_old_idempotency_keys_never_fails_a_write(registry_url, monkeypatch):
    """Every Nth write prunes expired keys: the write that triggers it still succeeds, the prune's
    own write does not trigger another, and no transaction is left open."""
    from mlplat.registry import tx as tx_module

    monkeypatch.setattr(tx_module, "_PRUNE_EVERY_WRITES", 3)
    store = RegistryStore(registry_url)
    for i in range(10):
        assert store.append_event("e", "s", idempotency_key=f"k{i}").seq == i + 1
    assert store.append_event("e", "s", idempotency_key="k0").seq == 1  # keys younger than the TTL stay
    monkeypatch.setattr(tx_module, "IDEMPOTENCY_TTL_S", -1.0)  # now every key is expired
    assert store.prune_idempotency() == 10
    assert store.append_event("e", "s", idempotency_key="k0").seq == 11  # the key was forgotten
    assert store.read_batch([("last_seq", {})]) == [11]  # the connection is usable: nothing left open
    store.close()
