"""P8 registry benchmark: writes/s and reads/s through the registry actor, on SQLite and on
PostgreSQL, each against the raw database driver in one process.

Same records on both sides, side by side in one run, interleaved repeats (the backends and the
two sides alternate), medians:
- a write is one model version (the same columns and JSON as the registry's ``versions`` row)
  plus its event row; the registry also stores the call's idempotency key (the transport adds
  one to every write call). Same durability on both sides: SQLite in WAL mode with
  ``synchronous=FULL``; PostgreSQL with its defaults (``fsync=on``, ``synchronous_commit=on``).
  Same batch size per transaction.
- a read is one version by (model, version), decoded into a record (registry) or a dict (raw).
  ``read_batch(100)`` answers its ``get_version`` calls with one query, so its baseline reads the
  same 100 keys with one query too; the single-call rows compare with one query per key.
- baselines: plain ``sqlite3`` on a file of its own; plain psycopg 3 on a database of its own
  in the same PostgreSQL server (a throwaway ``pgserver`` instance this benchmark starts and stops).

``python -m bench.registry`` prints the table; ``python -m bench registry`` also stores it.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import row

BATCH = 100
WRITE_BATCHES = 10  # 1,000 writes per repeat
READS = 2_000
SINGLE_CALLS = 200
TARGET_WRITES = "≥1,000 durable writes/s"
TARGET_READS = "≥5,000 reads/s"
BACKENDS = ("sqlite", "postgresql")

# The registry's versions row (schema v2: approval columns) and events row, nothing else.
_RAW_SCHEMA = """
CREATE TABLE versions (model TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, created_at {f} NOT NULL,
  updated_at {f} NOT NULL, config_hash TEXT, code_version TEXT, metrics TEXT NOT NULL, artifacts TEXT NOT NULL,
  datasets TEXT NOT NULL, feature_set TEXT, run_id TEXT, error TEXT, extra TEXT NOT NULL,
  approval_state TEXT NOT NULL DEFAULT 'NOT_REQUIRED', approval_by TEXT, approval_note TEXT, approval_at {f},
  PRIMARY KEY (model, version));
CREATE TABLE events (seq {seq}, ts {f} NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, version INTEGER,
  payload TEXT NOT NULL)
"""
_INSERT_VERSION = ("INSERT INTO versions(model, version, state, created_at, updated_at, config_hash, code_version, "
                   "metrics, artifacts, datasets, feature_set, run_id, error, extra) VALUES ({})".format(",".join(["?"] * 14)))
_INSERT_EVENT = "INSERT INTO events(ts, kind, subject, version, payload) VALUES (?,?,?,?,?)"
_SELECT_VERSION = "SELECT * FROM versions WHERE model=? AND version=?"
_ARTIFACTS = {"weights": {"path": "models/m/v1/model.safetensors", "sha256": "a" * 64, "size_bytes": 1024}}
_DATASETS = [{"name": "clicks", "version": 3}]
_JSON_COLUMNS = ("metrics", "artifacts", "datasets", "extra")


def _select_many(keys: list[tuple[str, int]]) -> str:
    return f"SELECT * FROM versions WHERE (model, version) IN (VALUES {', '.join('(?, ?)' for _ in keys)})"


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _version_params(model: str, v: int, now: float) -> tuple[Any, ...]:
    return (model, v, "REGISTERED", now, now, "cfg", "abc123", _dumps({"auc": 0.9}), _dumps(_ARTIFACTS),
            _dumps(_DATASETS), None, "run-1", None, _dumps({}))


def _event_params(model: str, v: int, now: float) -> tuple[Any, ...]:
    return (now, "version_registered", f"model:{model}", v, _dumps({"run_id": "run-1"}))


def _decode(out: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_COLUMNS:
        out[key] = json.loads(out[key])
    return out


class RawSqlite:
    """The SQLite baseline: the same rows with plain sqlite3, no registry code."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_RAW_SCHEMA.format(f="REAL", seq="INTEGER PRIMARY KEY AUTOINCREMENT") + ";")
        self.next: dict[str, int] = {}

    def write_batch(self, model: str, n: int) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        for _ in range(n):
            v = self.next[model] = self.next.get(model, 0) + 1
            now = time.time()
            c.execute(_INSERT_VERSION, _version_params(model, v, now))
            c.execute(_INSERT_EVENT, _event_params(model, v, now))
        c.execute("COMMIT")

    def read(self, model: str, version: int) -> dict[str, Any]:
        cur = self.conn.execute(_SELECT_VERSION, (model, version))
        names = [d[0] for d in cur.description]
        return _decode(dict(zip(names, cur.fetchone(), strict=True)))

    def read_many(self, keys: list[tuple[str, int]]) -> list[dict[str, Any]]:
        """The same keyed rows in one query, as read_batch does."""
        cur = self.conn.execute(_select_many(keys), [x for key in keys for x in key])
        names = [d[0] for d in cur.description]
        found = {(r["model"], r["version"]): r for r in (dict(zip(names, row, strict=True)) for row in cur.fetchall())}
        return [_decode(dict(found[key])) for key in keys]

    def close(self) -> None:
        self.conn.close()


class RawPostgres:
    """The PostgreSQL baseline: the same rows with plain psycopg 3 (server defaults: fsync and
    synchronous_commit on), one transaction per batch, no registry code."""

    def __init__(self, url: str):
        import psycopg
        from psycopg.rows import dict_row

        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        for statement in _RAW_SCHEMA.format(f="DOUBLE PRECISION", seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY").split(";"):
            self.conn.execute(statement)
        self.next: dict[str, int] = {}
        self._version_sql = _INSERT_VERSION.replace("?", "%s")
        self._event_sql = _INSERT_EVENT.replace("?", "%s")
        self._select_sql = _SELECT_VERSION.replace("?", "%s")

    def write_batch(self, model: str, n: int) -> None:
        c = self.conn
        c.execute("BEGIN")
        for _ in range(n):
            v = self.next[model] = self.next.get(model, 0) + 1
            now = time.time()
            c.execute(self._version_sql, _version_params(model, v, now))
            c.execute(self._event_sql, _event_params(model, v, now))
        c.execute("COMMIT")

    def read(self, model: str, version: int) -> dict[str, Any]:
        return _decode(dict(self.conn.execute(self._select_sql, (model, version)).fetchone()))

    def read_many(self, keys: list[tuple[str, int]]) -> list[dict[str, Any]]:
        """The same keyed rows in one query (one round trip), as read_batch does."""
        rows = self.conn.execute(_select_many(keys).replace("?", "%s"), [x for key in keys for x in key]).fetchall()
        found = {(r["model"], r["version"]): r for r in rows}
        return [_decode(dict(found[key])) for key in keys]

    def close(self) -> None:
        self.conn.close()


def _register_kwargs() -> dict[str, Any]:
    return {"config_hash": "cfg", "code_version": "abc123", "metrics": {"auc": 0.9}, "artifacts": _ARTIFACTS,
            "datasets": _DATASETS, "run_id": "run-1"}


def _register_call(model: str) -> tuple[str, dict[str, Any]]:
    return ("register_version", {"name": model, **_register_kwargs()})


def _rate(n: int, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _one_round(ray: Any, registry: Any, raw: RawSqlite | RawPostgres, model: str) -> dict[str, float]:
    """One repeat on one backend: each registry measurement next to its raw counterpart."""
    writes = WRITE_BATCHES * BATCH
    out = {}
    out["write_batch"] = _rate(writes, lambda: [registry.batch([_register_call(model)] * BATCH)
                                                for _ in range(WRITE_BATCHES)])
    out["raw_write_batch"] = _rate(writes, lambda: [raw.write_batch(model, BATCH) for _ in range(WRITE_BATCHES)])
    # one call = one transaction (one fsync each), sequential
    out["write_single"] = _rate(SINGLE_CALLS, lambda: [registry.register_version(model + "s", **_register_kwargs())
                                                       for _ in range(SINGLE_CALLS)])
    out["raw_write_single"] = _rate(SINGLE_CALLS, lambda: [raw.write_batch(model + "s", 1) for _ in range(SINGLE_CALLS)])
    keys = [(model, random.randint(1, writes)) for _ in range(READS)]  # present on both sides
    calls = [("get_version", {"name": m, "version": v}) for m, v in keys]
    out["read_batch"] = _rate(READS, lambda: [registry.read_batch(calls[i:i + BATCH]) for i in range(0, READS, BATCH)])
    out["raw_read_batch"] = _rate(READS, lambda: [raw.read_many(keys[i:i + BATCH]) for i in range(0, READS, BATCH)])
    out["raw_read"] = _rate(READS, lambda: [raw.read(m, v) for m, v in keys])
    # single read calls, 100 in flight at a time (the async actor serves them one after another, no waiting between)
    actor = registry.actor
    out["read_inflight"] = _rate(READS // 2, lambda: [ray.get([actor.call.remote("get_version", kw) for _, kw in calls[i:i + 100]])
                                                      for i in range(0, READS // 2, 100)])
    out["read_single"] = _rate(SINGLE_CALLS, lambda: [registry.get_version(m, v) for m, v in keys[:SINGLE_CALLS]])
    return out


def _rows(backend: str, med: dict[str, float], repeats: int) -> list[dict]:
    raw = f"raw {'sqlite3' if backend == 'sqlite' else 'psycopg'} ({backend})"
    durable = "WAL, synchronous=FULL" if backend == "sqlite" else "fsync, synchronous_commit=on"
    return [
        row("P8", f"{backend}: writes/s via actor, batch({BATCH}) per transaction, {durable}", med["write_batch"],
            "writes/s", raw, med["raw_write_batch"], TARGET_WRITES, repeats=repeats),
        row("P8", f"{backend}: writes/s via actor, 1 call = 1 transaction, {durable}", med["write_single"], "writes/s",
            raw, med["raw_write_single"], "— (context)", repeats=repeats),
        row("P8", f"{backend}: reads/s via actor, read_batch({BATCH})", med["read_batch"], "reads/s",
            f"{raw}, {BATCH} keys per query", med["raw_read_batch"], TARGET_READS, repeats=repeats),
        row("P8", f"{backend}: reads/s via actor, single calls, 100 in flight", med["read_inflight"], "reads/s", raw,
            med["raw_read"], "— (context)", repeats=repeats),
        row("P8", f"{backend}: reads/s via actor, single get_version calls, sequential", med["read_single"], "reads/s",
            raw, med["raw_read"], "— (context)", repeats=repeats),
    ]


def run(repeats: int = 5) -> list[dict]:
    import pgserver
    import psycopg
    import ray

    from mlplat.config import PlatformConfig
    from mlplat.registry import ActorRegistry

    started_ray = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 namespace="mlplat-bench")
        started_ray = True
    samples: dict[str, dict[str, list[float]]] = {b: {} for b in BACKENDS}
    registries: dict[str, Any] = {}
    raws: dict[str, RawSqlite | RawPostgres] = {}
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
                with psycopg.connect(server.get_uri(), autocommit=True) as admin:
                    admin.execute("CREATE DATABASE registry_bench")
                    admin.execute("CREATE DATABASE raw_bench")
                urls = {"sqlite": f"sqlite:///{Path(tmp) / 'actor.db'}", "postgresql": server.get_uri("registry_bench")}
                suffix = uuid.uuid4().hex[:8]
                config = PlatformConfig(root=tmp, namespace=f"mlplat-bench-{suffix}")
                for backend in BACKENDS:
                    registries[backend] = ActorRegistry.connect(config, actor_name=f"registry-bench-{backend}-{suffix}",
                                                                url=urls[backend])
                raws["sqlite"] = RawSqlite(str(Path(tmp) / "raw.db"))
                raws["postgresql"] = RawPostgres(server.get_uri("raw_bench"))
                for rep in range(repeats + 1):  # the first round warms up and is dropped
                    order = BACKENDS if rep % 2 else BACKENDS[::-1]
                    for backend in order:
                        rates = _one_round(ray, registries[backend], raws[backend], f"m{rep}")
                        if rep:
                            for key, value in rates.items():
                                samples[backend].setdefault(key, []).append(value)
            finally:
                for registry in registries.values():
                    ray.kill(registry.actor, no_restart=True)
                for raw in raws.values():
                    raw.close()
                if server is not None:
                    server.cleanup()
    finally:
        if started_ray:
            ray.shutdown()

    out = []
    for backend in BACKENDS:
        med = {k: statistics.median(v) for k, v in samples[backend].items()}
        out += _rows(backend, med, repeats)
    return out


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
