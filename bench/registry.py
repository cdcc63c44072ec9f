"""P8 registry benchmark: writes/s and reads/s through the registry actor vs raw SQLite.

Same records on both sides, side by side in one run, interleaved repeats, medians:
- a write is one model version (same columns and JSON as the registry's ``versions`` row) plus
  its event row; the registry also stores the call's idempotency key (the client adds one to
  every call). Both sides use WAL and ``synchronous=FULL`` (durable once acknowledged).
- a read is one version by (model, version), decoded into a record (registry) or a dict (raw).
- baseline: plain ``sqlite3`` in this process, same batch size per transaction.

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

_RAW_SCHEMA = """
CREATE TABLE versions (model TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, created_at REAL, updated_at REAL,
  config_hash TEXT, code_version TEXT, metrics TEXT, artifacts TEXT, datasets TEXT, feature_set TEXT, run_id TEXT,
  error TEXT, extra TEXT, PRIMARY KEY (model, version));
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL, kind TEXT, subject TEXT, version INTEGER, payload TEXT);
"""
_ARTIFACTS = {"weights": {"path": "models/m/v1/model.safetensors", "sha256": "a" * 64, "size_bytes": 1024}}
_DATASETS = [{"name": "clicks", "version": 3}]


class RawSqlite:
    """The baseline: the same rows with plain sqlite3, no registry code."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_RAW_SCHEMA)
        self.next: dict[str, int] = {}

    def write_batch(self, model: str, n: int) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        for _ in range(n):
            v = self.next[model] = self.next.get(model, 0) + 1
            now = time.time()
            c.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (model, v, "REGISTERED", now, now, "cfg", "abc123", json.dumps({"auc": 0.9}), json.dumps(_ARTIFACTS),
                 json.dumps(_DATASETS), None, "run-1", None, json.dumps({})),
            )
            c.execute("INSERT INTO events(ts, kind, subject, version, payload) VALUES (?,?,?,?,?)",
                      (now, "version_registered", f"model:{model}", v, json.dumps({"run_id": "run-1"})))
        c.execute("COMMIT")

    def read(self, model: str, version: int) -> dict[str, Any]:
        cur = self.conn.execute("SELECT * FROM versions WHERE model=? AND version=?", (model, version))
        names = [d[0] for d in cur.description]
        out = dict(zip(names, cur.fetchone(), strict=True))
        for key in ("metrics", "artifacts", "datasets", "extra"):
            out[key] = json.loads(out[key])
        return out


def _register_call(model: str) -> tuple[str, dict[str, Any]]:
    return ("register_version", {"name": model, "config_hash": "cfg", "code_version": "abc123", "metrics": {"auc": 0.9},
                                 "artifacts": _ARTIFACTS, "datasets": _DATASETS, "run_id": "run-1"})


def _rate(n: int, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _one_round(ray: Any, client: Any, raw: RawSqlite, model: str) -> tuple[float, ...]:
    writes = WRITE_BATCHES * BATCH
    a = _rate(writes, lambda: [client.batch([_register_call(model)] * BATCH) for _ in range(WRITE_BATCHES)])
    b = _rate(writes, lambda: [raw.write_batch(model, BATCH) for _ in range(WRITE_BATCHES)])
    # one call = one transaction (one fsync each), sequential
    c = _rate(SINGLE_CALLS, lambda: [client.batch([_register_call(model)]) for _ in range(SINGLE_CALLS)])
    d = _rate(SINGLE_CALLS, lambda: [raw.write_batch(model + "x", 1) for _ in range(SINGLE_CALLS)])
    keys = [(model, random.randint(1, writes)) for _ in range(READS)]  # present on both sides
    calls = [("get_version", {"name": m, "version": v}) for m, v in keys]
    e = _rate(READS, lambda: [client.read_batch(calls[i:i + BATCH]) for i in range(0, READS, BATCH)])
    f = _rate(READS, lambda: [raw.read(m, v) for m, v in keys])
    # single read calls, 100 in flight at a time (the async actor serves them concurrently)
    actor = client.actor
    g = _rate(READS // 2, lambda: [ray.get([actor.call.remote("get_version", kw) for _, kw in calls[i:i + 100]])
                                  for i in range(0, READS // 2, 100)])
    h = _rate(SINGLE_CALLS, lambda: [client.get_version(m, v) for m, v in keys[:SINGLE_CALLS]])
    return a, b, c, d, e, f, g, h


def run(repeats: int = 5) -> list[dict]:
    import ray

    from mlplat.config import PlatformConfig
    from mlplat.registry import RegistryClient

    started_ray = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 namespace="mlplat-bench")
        started_ray = True
    samples: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        suffix = uuid.uuid4().hex[:8]
        config = PlatformConfig(root=tmp, namespace=f"mlplat-bench-{suffix}")
        client = RegistryClient.connect(config, actor_name=f"registry-bench-{suffix}", db_path=str(Path(tmp) / "actor.db"))
        raw = RawSqlite(str(Path(tmp) / "raw.db"))
        try:
            for rep in range(repeats + 1):  # the first round warms up and is dropped
                rates = _one_round(ray, client, raw, f"m{rep}")
                if rep:
                    for key, value in zip("abcdefgh", rates, strict=True):
                        note(key, value)
        finally:
            ray.kill(client.actor, no_restart=True)
            raw.conn.close()
            if started_ray:
                ray.shutdown()

    med = {k: statistics.median(v) for k, v in samples.items()}
    raw_label = "raw sqlite"
    return [
        row("P8", f"writes/s via actor, batch({BATCH}) per transaction, fsync", med["a"], "writes/s", raw_label, med["b"],
            TARGET_WRITES, repeats=repeats),
        row("P8", "writes/s via actor, 1 call = 1 transaction, fsync", med["c"], "writes/s", raw_label, med["d"],
            "— (context)", repeats=repeats),
        row("P8", f"reads/s via actor, read_batch({BATCH})", med["e"], "reads/s", raw_label, med["f"], TARGET_READS,
            repeats=repeats),
        row("P8", "reads/s via actor, single calls, 100 in flight", med["g"], "reads/s", raw_label, med["f"],
            "— (context)", repeats=repeats),
        row("P8", "reads/s via actor, single calls, sequential", med["h"], "reads/s", raw_label, med["f"],
            "— (context)", repeats=repeats),
    ]


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
