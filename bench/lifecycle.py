"""P2 and P3 lifecycle benchmarks: latency while a version is swapped in and rolled back, how
fast a deploy and a rollback take effect, and pre-warm time against the weights' size.

One process: an embedded Ray (``num_cpus=2``), a temporary root, a registry actor, one mlplat
Serve app (one ingress replica, the model pool; Serve's default HTTP proxy, HAProxy OFF;
Serve's throughput-optimized mode on, as ``mlplat serve start`` sets it), settings with an API
token, an admin token and ``telemetry=False``. The P2/P3 model is a small MLP (hidden 64, 32)
with a fitted encoder, ``placement: ingress`` (no second hop). Load: client threads in this
process (``http.client``, keep-alive, loopback, back to back, bounded in time) recording per
request the send and receive time, the status and ``x-mlplat-model-version``.

Rows:

- P2 ``p99 steady`` / ``p99 during deploy`` / ``p99 during rollback``: each round measures three
  windows of the same length under the same load (3 client threads): (a) steady, nothing
  changes; (b) ``deploy()`` of a freshly registered version (blue-green: pre-warm on the
  ingress replica, then the production alias moves) 1 s into the window; (c) a rollback through
  the admin route (``POST /admin/models/NAME/rollback``) 1 s into the window. Rounds are
  interleaved (steady, deploy, rollback, repeated), the value is the median over rounds of each
  window's p99 and the baseline is the steady p99: same process, same load, same warm state
  (an untimed deploy+rollback round runs first). Target: ≤1.5x. A change disturbs well under
  a second of a window, so a stricter pair of rows takes only the 1 s from the call on (steady:
  the same 1 s slice of its window), pooled over rounds. ``failed requests``: non-2xx
  responses and transport errors over every window of every round (target 0).
- P3 ``deploy() -> 100% new version``: from the ``deploy(...)`` call to the receive time of the
  first response of the final run of new-version responses seen by one poller thread (requests
  back to back, no other load); the run lasts until the poller stops 1.5 s after ``deploy``
  returns, so no old-version (or failed) response comes after that point. Median of repeats.
  Target ≤1 s. ``deploy() call`` is the call's own duration (pre-warm reported by every replica,
  then the alias moved), ``serve.status()`` for the replica counts included.
- P3 ``mlplat rollback -> 100% previous``: from starting the ``mlplat rollback NAME`` command
  (a subprocess of the venv's ``mlplat`` script with MLPLAT_ADMIN_TOKEN, so it takes the admin
  route, no Ray driver) to 100% previous version as seen by the poller, same rule. Median of
  repeats, interleaved with the deploy repeats. Target ≤1 s. The command's wall time and the
  bare admin HTTP call (timed during P2) are context rows: the difference is the CLI's start.
- P3 ``pre-warm N MB``: a model whose float32 weights are ~1 MB, ~100 MB, ~1 GB (an MLP with two
  equal hidden layers, so the weights are what grows and the 8-row probe stays cheap), placed
  in the model pool (where large models go), its weights dropped from the page cache
  (``posix_fadvise(DONTNEED)``) before ``deploy()``. Rows: the ``deploy()`` call, the pre-warm
  time the replica reports (``load_s`` of its ``deployment_replica`` event: resolve + read +
  sha256 + parse + build + load_state_dict + probe) and the effective rate ``size / load_s``;
  baseline: plain Python reading the same file in 8 MB chunks after dropping it from the page
  cache -- the machine's disk read rate. A first deploy of a small model to the pool runs
  before them, on its own row: a fresh replica's first load also imports torch. Context row:
  the rate at which a new process allocates and writes fresh memory (on a VM whose guest pages
  the host backs lazily, this and not the disk bounds a 1 GB load). The JSON rows also carry
  an in-process breakdown of one load, twice (page cache warm, one torch thread as in a
  replica; the second pass reuses memory the first freed). S3 read rate: not measured here.

``python -m bench.lifecycle`` prints the table; ``python -m bench lifecycle`` also stores it.
Environment: BENCH_LIFECYCLE_SIZES_MB (default "1,100,1000"), BENCH_LIFECYCLE_ROUNDS (P2
rounds, default 7), BENCH_LIFECYCLE_REPEATS (P3 repeats, default 5), BENCH_LIFECYCLE_WINDOW_S
(default 4), BENCH_LIFECYCLE_CLIENTS (default 3).
"""

from __future__ import annotations

import gc
import http.client
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import row

TOKEN = "bench-" + uuid.uuid4().hex
ADMIN = "bench-admin-" + uuid.uuid4().hex
NAMESPACE = "mlplat-bench-lifecycle"
APP = "mlplat-bench-lifecycle"
MODEL = "inline"
ROW = {"amount": 12.5, "age": 31, "country": "fr"}
MLPLAT = str(Path(sys.executable).with_name("mlplat"))
SIZES_MB = [int(s) for s in os.environ.get("BENCH_LIFECYCLE_SIZES_MB", "1,100,1000").split(",") if s.strip()]
ROUNDS = int(os.environ.get("BENCH_LIFECYCLE_ROUNDS", "7"))
REPEATS = int(os.environ.get("BENCH_LIFECYCLE_REPEATS", "5"))
WINDOW_S = float(os.environ.get("BENCH_LIFECYCLE_WINDOW_S", "4"))
CLIENTS = int(os.environ.get("BENCH_LIFECYCLE_CLIENTS", "3"))
LEAD_S = 1.0  # the change happens this far into its window
TAIL_S = 1.5  # P3: the poller keeps going this long after the call/command returned
CHUNK = 8 * 1024 * 1024
ENCODER_SPECS = [
    {"type": "standardize", "column": "amount"},
    {"type": "impute", "column": "age", "params": {"strategy": "mean"}},
    {"type": "onehot", "column": "country"},
]


# -- models (the lines of tests/integration/serving_support.py this needs) ----------------------

def _fitted_encoder(seed: int = 0) -> Any:
    import numpy as np
    import pyarrow as pa

    from mlplat.features import FeatureEncoder, build_encoder

    rng = np.random.default_rng(seed)
    n = 200
    table = pa.table({"amount": rng.normal(10, 3, n), "age": rng.integers(18, 80, n).astype(float),
                      "country": rng.choice(["fr", "de", "us"], n)})
    return FeatureEncoder([build_encoder(s) for s in ENCODER_SPECS]).fit_table(table)


def _register(registry: Any, storage: Any, encoder: Any, name: str, *, seed: int, task: str = "binary",
              hidden: list[int] | tuple[int, ...] = (64, 32), placement: str = "ingress", promote: bool = False) -> int:
    """A VALIDATED (or, with ``promote``, PRODUCTION) version with a real bundle."""
    import torch

    from mlplat.models import ModelSpec, build_model, save_bundle

    spec = ModelSpec(task=task, hidden=list(hidden))
    torch.manual_seed(seed)
    model = build_model(spec, len(encoder.feature_columns))
    try:
        registry.get_model(name)
    except Exception:
        registry.create_model(name, task_type=task, serving_policy={"placement": placement})
    version = registry.register_version(name, code_version=f"seed{seed}").version
    ref = save_bundle(storage, name, version, model, spec=spec, input_columns=encoder.feature_columns,
                      encoder=encoder.to_json())
    del model
    registry.update_version(name, version, artifacts={"bundle": ref})
    for state in ("TRAINING", "TRAINED", "VALIDATING", "VALIDATED"):
        registry.transition(name, version, state)
    if promote:
        registry.promote(name, version)
    return version


# -- load --------------------------------------------------------------------------------------

class Load:
    """Client threads sending the same predict request back to back until stopped; each keeps
    (send time, receive time, status, version) per request (time.monotonic, this process)."""

    def __init__(self, port: int, name: str, threads: int):
        self._port, self._path = port, f"/v1/models/{name}:predict"
        self._body = json.dumps({"instances": [ROW]}).encode()
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        self._stop = threading.Event()
        self._lists: list[list[tuple[float, float, int, int | None]]] = [[] for _ in range(threads)]
        self._threads = [threading.Thread(target=self._run, args=(out,), daemon=True) for out in self._lists]

    def _run(self, out: list[tuple[float, float, int, int | None]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("POST", self._path, self._body, self._headers)
                response = conn.getresponse()
                response.read()
                status, version = response.status, response.getheader("x-mlplat-model-version")
            except (OSError, http.client.HTTPException):
                status, version = 599, None
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
            out.append((sent, time.monotonic(), status, int(version) if version else None))
        conn.close()

    def samples(self, start: float = 0.0, end: float = math.inf) -> list[tuple[float, float, int, int | None]]:
        """Requests sent in [start, end), by send time."""
        merged = [s for out in self._lists for s in list(out) if start <= s[0] < end]
        return sorted(merged)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _p(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else math.nan


def _window(samples: list[tuple[float, float, int, int | None]]) -> dict[str, Any]:
    latencies = [(r - s) * 1000 for s, r, _, _ in samples]
    return {"p50": _p(latencies, 50), "p99": _p(latencies, 99), "max": max(latencies, default=math.nan),
            "n": len(samples), "failed": sum(1 for *_, code, _ in samples if not 200 <= code < 300),
            "versions": sorted({v for *_, v in samples if v is not None})}


def _switch_s(samples: list[tuple[float, float, int, int | None]], t0: float, want: int, min_tail: int = 20) -> float | None:
    """Seconds from ``t0`` to the receive time of the first response of the final run of
    ``want`` responses (every later response names ``want`` with a 2xx); None if no such run
    of at least ``min_tail`` responses."""
    after = [s for s in samples if s[1] >= t0]
    last_bad = max((i for i, (_, _, code, v) in enumerate(after) if v != want or not 200 <= code < 300), default=-1)
    tail = after[last_bad + 1:]
    if len(tail) < min_tail:
        return None
    return tail[0][1] - t0


# -- the running platform -----------------------------------------------------------------------

class Platform:
    def __init__(self) -> None:
        import ray

        from mlplat.config import PlatformConfig, ServeSettings
        from mlplat.registry import ActorRegistry
        from mlplat.serving import serve_env, start_serving
        from mlplat.storage import open_root

        self.root = tempfile.mkdtemp(prefix="mlplat-bench-lifecycle-")
        self.port = _free_port()
        self.config = PlatformConfig(root=self.root, namespace=NAMESPACE, api_token=TOKEN, admin_token=ADMIN,
                                     serve=ServeSettings(port=self.port, app_name=APP, telemetry=False, haproxy=False))
        if ray.is_initialized():
            ray.shutdown()
        self._saved_env = {k: os.environ.get(k) for k in serve_env(self.config)}
        os.environ.update(serve_env(self.config))  # Serve modes act only when set before Ray starts
        ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.actor = f"registry-bench-{uuid.uuid4().hex[:6]}"
        self.registry = ActorRegistry.connect(self.config, actor_name=self.actor, url=str(Path(self.root) / "registry.db"))
        self.storage = open_root(self.config.root)
        self.encoder = _fitted_encoder()
        self.seed = 0
        self.v1 = self.new_version(promote=True)
        start_serving(self.config, registry_actor=self.actor)
        _wait_ready(self.port)

    def new_version(self, promote: bool = False) -> int:
        self.seed += 1
        return _register(self.registry, self.storage, self.encoder, MODEL, seed=self.seed, promote=promote)

    def deploy(self, name: str, version: int) -> Any:
        from mlplat.lifecycle.deploy import deploy

        d = deploy(self.registry, self.config, name, version, by="bench")
        if d.state.value != "LIVE":
            raise RuntimeError(f"deploy of {name} v{version} ended {d.state.value}: {d.reason}")
        return d

    def admin_rollback(self, name: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", f"/admin/models/{name}/rollback", b"",
                         {"Authorization": f"Bearer {ADMIN}", "x-mlplat-user": "bench"})
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"admin rollback answered {response.status}: {body}")
        return int(body["production"])

    def close(self) -> None:
        import ray

        try:  # the local cluster goes with its Serve app and registry actor (serve.shutdown can take 30 s here)
            ray.shutdown()
        finally:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, timeout_s: float = 180.0) -> None:
    body = json.dumps({"instances": [ROW]}).encode()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", f"/v1/models/{MODEL}:predict", body,
                         {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the serving app on port {port} did not answer within {timeout_s:.0f} s")


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


# -- P2 ------------------------------------------------------------------------------------------

def run_p2(p: Platform) -> tuple[list[dict[str, Any]], list[float]]:
    """Interleaved rounds of steady / deploy / rollback windows under the same load."""
    windows: dict[str, list[dict[str, Any]]] = {"steady": [], "deploy": [], "rollback": []}
    #: the 1 s from the change on (steady: the same slice of its window), pooled over rounds
    slices: dict[str, list[tuple[float, float, int, int | None]]] = {"steady": [], "deploy": [], "rollback": []}
    admin_call_s: list[float] = []
    unexpected_versions = 0
    with Load(p.port, MODEL, CLIENTS) as load:
        time.sleep(2.0)  # connections open, caches warm
        for i in range(ROUNDS + 1):  # round 0: untimed warm-up of the deploy and rollback paths
            new = p.new_version()
            time.sleep(0.5)
            ts = time.monotonic()
            _sleep_until(ts + WINDOW_S)
            steady = _window(load.samples(ts, ts + WINDOW_S))
            td = time.monotonic()
            _sleep_until(td + LEAD_S)
            p.deploy(MODEL, new)
            _sleep_until(td + WINDOW_S)
            deploy = _window(load.samples(td, td + WINDOW_S))
            tr = time.monotonic()
            _sleep_until(tr + LEAD_S)
            called = time.monotonic()
            back = p.admin_rollback(MODEL)
            called = time.monotonic() - called
            _sleep_until(tr + WINDOW_S)
            rollback = _window(load.samples(tr, tr + WINDOW_S))
            if back != p.v1:
                raise RuntimeError(f"rollback put v{back} back, expected v{p.v1}")
            if i == 0:
                continue
            admin_call_s.append(called)
            unexpected_versions += len(set(deploy["versions"]) - {p.v1, new}) + len(set(rollback["versions"]) - {p.v1, new})
            for key, w, t in (("steady", steady, ts), ("deploy", deploy, td), ("rollback", rollback, tr)):
                windows[key].append(w)
                slices[key] += load.samples(t + LEAD_S, t + LEAD_S + 1.0)
            print(f"  P2 round {i}: p99 steady {steady['p99']:.1f} ms, deploy {deploy['p99']:.1f} ms, "
                  f"rollback {rollback['p99']:.1f} ms; failed {steady['failed'] + deploy['failed'] + rollback['failed']}; "
                  f"{steady['n'] / WINDOW_S:.0f} req/s", flush=True)
    med = {k: statistics.median(w["p99"] for w in ws) for k, ws in windows.items()}
    p50 = {k: statistics.median(w["p50"] for w in ws) for k, ws in windows.items()}
    per_round = {k: [round(w["p99"], 2) for w in ws] for k, ws in windows.items()}
    failed = sum(w["failed"] for ws in windows.values() for w in ws)
    total = sum(w["n"] for ws in windows.values() for w in ws)
    common = {"rounds": ROUNDS, "window_s": WINDOW_S, "clients": CLIENTS}
    pooled = {k: _window(v) for k, v in slices.items()}
    rows = [
        row("P2", "p99 steady (no change)", med["steady"], "ms", p50_ms=round(p50["steady"], 3),
            per_round_ms=per_round["steady"], req_per_s=round(statistics.median(w["n"] for w in windows["steady"]) / WINDOW_S),
            max_ms=round(max(w["max"] for w in windows["steady"]), 2), **common),
    ]
    for key, what in (("deploy", "deploy (pre-warm + swap)"), ("rollback", "rollback (admin route)")):
        ratios = [round(d / s, 3) for d, s in zip(per_round[key], per_round["steady"], strict=True)]
        rows.append(row("P2", f"p99 during {what}", med[key], "ms", baseline="steady p99 (same load)",
                        baseline_value=med["steady"], target="<=1.5x", p50_ms=round(p50[key], 3),
                        per_round_ms=per_round[key], per_round_ratio=ratios,
                        max_ms=round(max(w["max"] for w in windows[key]), 2), **common))
    for key, what in (("deploy", "the 1 s from the deploy() call"), ("rollback", "the 1 s from the rollback call")):
        rows.append(row("P2", f"p99 in {what} (all rounds pooled)", pooled[key]["p99"], "ms",
                        baseline="steady p99, same 1 s slice of its window (pooled)", baseline_value=pooled["steady"]["p99"],
                        target="<=1.5x", requests=pooled[key]["n"], baseline_requests=pooled["steady"]["n"],
                        max_ms=round(pooled[key]["max"], 2), baseline_max_ms=round(pooled["steady"]["max"], 2), **common))
    rows.append(row("P2", "failed requests (non-2xx) over all windows", failed, "requests", target="0",
                    requests=total, unexpected_versions=unexpected_versions, **common))
    return rows, admin_call_s


# -- P3: deploy and rollback -> 100% -------------------------------------------------------------

def run_p3(p: Platform, admin_call_s: list[float]) -> list[dict[str, Any]]:
    deploy_switch, deploy_call, rollback_switch, rollback_cmd = [], [], [], []
    cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLPLAT_", "RAY_"))},
               "MLPLAT_ROOT": p.root, "MLPLAT_ADMIN_TOKEN": ADMIN, "MLPLAT_SERVE_PORT": str(p.port),
               "MLPLAT_USER": "bench", "MLPLAT_RAY_ADDRESS": "ray://no-ray-needed:1"}  # a Ray fallback would fail loudly
    with Load(p.port, MODEL, 1) as poller:
        time.sleep(1.0)
        for i in range(REPEATS):
            new = p.new_version()
            time.sleep(0.5)
            t0 = time.monotonic()
            p.deploy(MODEL, new)
            returned = time.monotonic()
            time.sleep(TAIL_S)
            switch = _switch_s(poller.samples(t0 - 1.0), t0, new)
            if switch is None:
                raise RuntimeError(f"deploy repeat {i}: the poller did not see 100% v{new}")
            deploy_switch.append(switch)
            deploy_call.append(returned - t0)

            t0 = time.monotonic()
            out = subprocess.run([MLPLAT, "rollback", MODEL, "--json"], env=cli_env, capture_output=True, text=True,
                                 timeout=60)
            returned = time.monotonic()
            if out.returncode != 0 or json.loads(out.stdout)["production"] != p.v1:
                raise RuntimeError(f"`mlplat rollback` failed ({out.returncode}): {out.stdout} {out.stderr}")
            time.sleep(TAIL_S)
            switch = _switch_s(poller.samples(t0 - 1.0), t0, p.v1)
            if switch is None:
                raise RuntimeError(f"rollback repeat {i}: the poller did not see 100% v{p.v1}")
            rollback_switch.append(switch)
            rollback_cmd.append(returned - t0)
            print(f"  P3 repeat {i + 1}: deploy->100% {deploy_switch[-1]:.3f} s (call {deploy_call[-1]:.3f} s); "
                  f"rollback->100% {rollback_switch[-1]:.3f} s (command {rollback_cmd[-1]:.3f} s)", flush=True)

    def r(values: list[float]) -> list[float]:
        return [round(v, 4) for v in values]

    return [
        row("P3", "deploy() call -> 100% new version (small MLP, ingress)", statistics.median(deploy_switch), "s",
            target="<=1 s", repeats=r(deploy_switch)),
        row("P3", "deploy() call duration (pre-warm reported, alias moved)", statistics.median(deploy_call), "s",
            target="informational", repeats=r(deploy_call)),
        row("P3", "`mlplat rollback` start -> 100% previous version", statistics.median(rollback_switch), "s",
            target="<=1 s", repeats=r(rollback_switch)),
        row("P3", "`mlplat rollback` command wall time", statistics.median(rollback_cmd), "s", target="informational",
            repeats=r(rollback_cmd)),
        row("P3", "admin rollback HTTP call alone (POST /admin/models/NAME/rollback)", statistics.median(admin_call_s), "s",
            target="informational", repeats=r(admin_call_s)),
    ]


# -- P3: pre-warm vs weight size ----------------------------------------------------------------

def _hidden_for(size_mb: float, input_dim: int) -> int:
    """Width H of an MLP [H, H] with ~size_mb MB of float32 weights: H² + H(input_dim + 3) + 1 params."""
    params = size_mb * 1e6 / 4
    b = input_dim + 3
    return max(1, round((-b + math.sqrt(b * b + 4 * (params - 1))) / 2))


def _drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cached_bytes(path: str) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``), None when unknown."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True)
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def _read_rate(path: str) -> tuple[float, int | None]:
    """Seconds to read ``path`` in 8 MB chunks with the page cache dropped first; bytes that
    were still cached before the read."""
    _drop_cache(path)
    cached = _cached_bytes(path)
    start = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass
    return time.monotonic() - start, cached


def _first_touch_mb_s(size_mb: int) -> float | None:
    """MB/s at which a new process allocates and writes ``size_mb`` MB of fresh memory (numpy)."""
    if size_mb < 10:
        return None
    code = (f"import time, numpy as np; t = time.monotonic(); a = np.ones({int(size_mb * 1e6)}, dtype=np.uint8); "
            "print(time.monotonic() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return size_mb / float(out.stdout.strip())


def _breakdown(storage: Any, name: str, version: int) -> dict[str, float]:
    """One load of the bundle in this process, step by step (page cache warm, one torch thread)."""
    import torch
    from safetensors.torch import load

    from mlplat.models import ModelSpec, build_model
    from mlplat.models.bundle import BUNDLE_FILE, WEIGHTS_FILE, bundle_dir
    from mlplat.storage import sha256_bytes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = bundle_dir(name, version)
        meta = json.loads(storage.read_bytes(*parts, BUNDLE_FILE))
        t = [time.monotonic()]
        data = storage.read_bytes(*parts, WEIGHTS_FILE)
        t.append(time.monotonic())
        sha256_bytes(data)
        t.append(time.monotonic())
        state = load(data)
        t.append(time.monotonic())
        model = build_model(ModelSpec.model_validate(meta["spec"]), int(meta["input_dim"]))
        t.append(time.monotonic())
        model.load_state_dict(state, strict=True)
        t.append(time.monotonic())
        del data, state, model
    finally:
        torch.set_num_threads(threads)
        gc.collect()
    steps = ("read_s", "sha256_s", "safetensors_parse_s", "build_model_s", "load_state_dict_s")
    return {k: round(b - a, 4) for k, a, b in zip(steps, t[:-1], t[1:], strict=True)}


def run_sizes(p: Platform) -> list[dict[str, Any]]:
    from mlplat.models.bundle import WEIGHTS_FILE, bundle_dir

    rows = []
    # The first load in a fresh pool replica also imports torch there: measured once, on its own row,
    # so the size rows below compare loads in a replica that already loaded a model.
    version = _register(p.registry, p.storage, p.encoder, "pool-first", seed=1, placement="pool")
    t0 = time.monotonic()
    d = p.deploy("pool-first", version)
    first_s = time.monotonic() - t0
    first_load = max(float(e.payload["load_s"])
                     for e in p.registry.events_since(0, subject=f"deployment:{d.id}", kinds=["deployment_replica"]))
    rows.append(row("P3", "first pre-warm on a fresh pool replica (small MLP): replica load_s", first_load, "s",
                    target="informational", deploy_call_s=round(first_s, 4),
                    note="the replica's first model load imports torch (lazily, ~1.3 s in a fresh process here)"))
    print(f"  first pre-warm on the pool replica: deploy {first_s:.3f} s, load_s {first_load:.3f} s", flush=True)
    touch = _first_touch_mb_s(max(SIZES_MB, default=0))
    if touch is not None:
        rows.append(row("P3", f"memory first-touch rate (new process allocates and writes {max(SIZES_MB)} MB)", touch,
                        "MB/s", target="informational",
                        note="context: on a VM whose guest pages are backed lazily this, not the disk, bounds large loads"))
        print(f"  memory first-touch: {touch:,.0f} MB/s", flush=True)
    input_dim = len(p.encoder.feature_columns)
    for size_mb in SIZES_MB:
        name = f"weights-{size_mb}mb"
        hidden = _hidden_for(size_mb, input_dim)
        version = _register(p.registry, p.storage, p.encoder, name, seed=1, task="regression", hidden=[hidden, hidden],
                            placement="pool")
        gc.collect()
        path = p.storage.path(*bundle_dir(name, version), WEIGHTS_FILE)
        size = os.path.getsize(path)
        _drop_cache(path)
        cached_before_deploy = _cached_bytes(path)
        t0 = time.monotonic()
        d = p.deploy(name, version)
        deploy_s = time.monotonic() - t0
        reports = p.registry.events_since(0, subject=f"deployment:{d.id}", kinds=["deployment_replica"])
        load_s = max(float(e.payload["load_s"]) for e in reports)
        read_s, cached_before_read = _read_rate(path)
        steps = _breakdown(p.storage, name, version)
        steps_again = _breakdown(p.storage, name, version)
        mb = size / 1e6
        label = f"{mb:,.0f} MB weights" if mb >= 10 else f"{mb:.1f} MB weights"
        extra = {"weights_bytes": size, "hidden": [hidden, hidden], "placement": "pool", "replicas": len(reports),
                 "cached_bytes_before_deploy": cached_before_deploy, "cached_bytes_before_read": cached_before_read,
                 "in_process_load": steps, "in_process_load_repeat": steps_again, "memory_first_touch_mb_s": touch,
                 "note": "S3 read rate: not measured here"}
        baseline = "disk read of the same file (page cache dropped)"
        rows += [
            row("P3", f"pre-warm {label}: deploy() call", deploy_s, "s", baseline=baseline, baseline_value=read_s,
                target="informational", **extra),
            row("P3", f"pre-warm {label}: replica load_s", load_s, "s", baseline=baseline, baseline_value=read_s,
                target="informational", **extra),
            row("P3", f"pre-warm {label}: effective load rate (size / load_s)", mb / load_s, "MB/s",
                baseline="disk read rate (page cache dropped, 8 MB chunks)", baseline_value=mb / read_s,
                target="informational", **extra),
        ]
        print(f"  pre-warm {label}: deploy {deploy_s:.3f} s, load_s {load_s:.3f} s, disk read {read_s:.3f} s "
              f"({mb / read_s:,.0f} MB/s; cached before deploy/read: {cached_before_deploy}/{cached_before_read} B), "
              f"in-process {steps}, again {steps_again}", flush=True)
    return rows


def run() -> list[dict[str, Any]]:
    started = time.monotonic()
    p = Platform()
    try:
        print(f"  platform up in {time.monotonic() - started:.1f} s", flush=True)
        p2_rows, admin_call_s = run_p2(p)
        rows = p2_rows + run_p3(p, admin_call_s) + run_sizes(p)
    finally:
        p.close()
    print(f"  bench/lifecycle.py took {time.monotonic() - started:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
