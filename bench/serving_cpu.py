"""Where a P1 request's CPU goes (docs/benchmarks.md, "P1 CPU breakdown").

``python -m bench.serving_cpu [SECONDS [SIDE ...]]`` starts the ``mlplat+haproxy`` side (or the
sides named, e.g. ``mlplat+direct``: wrk on the direct port) and the fair
``bare xN`` side of bench/serving.py one after the other, loads each with wrk (16 connections,
one row per request) and reads, for the load's duration:

- every process's CPU time from /proc (user + system), grouped by what the process is, divided
  by the requests answered: µs of CPU per request per process kind;
- a py-spy profile of one server process (an ingress replica / a uvicorn worker), each sample
  given to the innermost frame that belongs to a known layer (mlplat's own modules by name,
  FastAPI/Starlette, uvicorn, Ray Serve, torch/numpy), so the layer shares split that
  process's µs per request.

py-spy (PyPI ``py-spy``) must be on PATH or in ``PY_SPY``. A profiling tool, not a benchmark:
it writes ``bench/results/profiles/serving-cpu.json`` (with sides named:
``serving-cpu-<first side>.json``, e.g. ``serving-cpu-direct.json``) and prints a table.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import serving
from bench import serving_load as load

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
#: (substring of a frame's file, layer); the first match walking from the innermost frame out
LAYERS = [
    ("mlplat/serving/runtime.py", "mlplat: forward (numpy/torch)"),
    ("mlplat/features/", "mlplat: encode features"),
    ("mlplat/serving/request.py", "mlplat: parse + validate"),
    ("mlplat/serving/telemetry", "mlplat: telemetry"),
    ("mlplat/serving/metrics.py", "mlplat: metrics"),
    ("mlplat/serving/direct.py", "mlplat: direct data plane (server glue)"),
    ("mlplat/", "mlplat: auth, admission, routing, response"),
    ("fastapi/", "FastAPI + Starlette"),
    ("starlette/", "FastAPI + Starlette"),
    ("uvicorn/", "uvicorn (HTTP parsing, ASGI)"),
    ("httptools", "uvicorn (HTTP parsing, ASGI)"),
    ("ray/serve/", "Ray Serve replica request path"),
    ("ray/", "Ray core (metrics, events)"),
    ("torch/", "mlplat: forward (numpy/torch)"),
]


def _process_kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
    if cmd.startswith("ray::ServeReplica"):
        return "Serve replica " + cmd.split(":")[-1].split()[0]
    if cmd.startswith("ray::"):
        return "Ray actor " + cmd.split()[0].removeprefix("ray::")
    for needle, kind in (("haproxy", "HAProxy"), ("wrk", "wrk (load generator)"), ("raylet", "raylet"),
                         ("gcs_server", "GCS"), ("bench.serving --side bare", "uvicorn worker"),
                         ("multiprocessing", "uvicorn worker"), ("dashboard", "Ray dashboard"),
                         ("bench.serving", "benchmark driver"), ("py-spy", "py-spy (profiler)")):
        if needle in cmd:
            return kind
    return "other: " + cmd[:40]


def _cpu_by_pid() -> dict[int, float]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(entry.name)] = (int(fields[11]) + int(fields[12])) * TICK_S
            except (OSError, IndexError, ValueError):
                pass
    return out


def _server_pid(side: str) -> int:
    """One process that answers requests: an ingress replica, or a uvicorn worker."""
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if entry.name.isdigit():
            kind = _process_kind(int(entry.name))
            if (side.startswith("mlplat") and kind == "Serve replica ingress") or (
                    side.startswith("bare") and kind == "uvicorn worker" and "multiprocessing" in
                    Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace")):
                return int(entry.name)
    raise RuntimeError(f"no server process found for {side}")


def _layers(raw: str) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        layer = "Python stdlib (asyncio, json, ...)"
        for frame in reversed(frames):
            found = next((name for needle, name in LAYERS if needle in frame), None)
            if found:
                layer = found
                break
        counts[layer] += int(count)
    return dict(counts)


def measure(side: str, seconds: int) -> dict[str, Any]:
    py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    root = tempfile.mkdtemp(prefix="bench-cpu-")
    port = serving._free_port()
    os.environ["BENCH_GRPC_PORT"] = "0"
    if side == "mlplat+direct":  # wrk on the direct port (serve.direct_port)
        os.environ["BENCH_DIRECT_PORT"] = str(serving._free_port())
    before_haproxy = serving._haproxy_pids()
    proc = serving._start_side(side, port, root)
    try:
        if side == "mlplat+direct":
            port = int(os.environ["BENCH_DIRECT_PORT"])
            serving._wait_http(port)
        load.wrk(port, 8)  # warm-up
        server = _server_pid(side)
        spy = None
        if py_spy:
            spy = subprocess.Popen([py_spy, "record", "-p", str(server), "-d", str(seconds), "-r", "100", "-f", "raw",
                                    "-o", f"{root}/server.raw", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0, t0 = _cpu_by_pid(), time.monotonic()
        result = load.wrk(port, seconds)
        cpu1, wall = _cpu_by_pid(), time.monotonic() - t0
        if spy is not None:
            spy.wait(timeout=seconds + 60)
        requests = result["rps"] * seconds
        kinds: collections.Counter[str] = collections.Counter()
        for pid, used in cpu1.items():
            delta = used - cpu0.get(pid, 0.0)
            if delta > 0:
                kinds[_process_kind(pid)] += delta
        per_request = {k: round(1e6 * v / requests, 1) for k, v in kinds.most_common() if v / wall > 0.005}
        server_kind = "Serve replica ingress" if side.startswith("mlplat") else "uvicorn worker"
        layers = _layers(Path(f"{root}/server.raw").read_text()) if spy is not None else {}
        total = sum(layers.values()) or 1
        server_us = per_request.get(server_kind, 0.0)
        return {"side": side, "wrk": result, "cpu_us_per_request": per_request,
                "server_layers_us_per_request": {k: round(server_us * v / total, 1)
                                                 for k, v in sorted(layers.items(), key=lambda kv: -kv[1])}}
    finally:
        os.environ.pop("BENCH_DIRECT_PORT", None)
        serving._stop(proc, before_haproxy)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    sides = sys.argv[2:] or ["mlplat+haproxy", f"bare x{serving.INGRESS_REPLICAS}"]  # or: mlplat+direct
    results = [measure(side, seconds) for side in sides]
    name = "serving-cpu.json" if len(sys.argv) <= 2 else f"serving-cpu-{sides[0].replace('mlplat+', '')}.json"
    out = Path(__file__).parent / "results" / "profiles" / name  # not rows: outside write_doc's glob
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seconds": seconds, "sides": results}, indent=1))
    for r in results:
        print(f"\n{r['side']}: {r['wrk']['rps']:.0f} req/s, p99 {r['wrk']['p99_ms']:.1f} ms")
        print("  CPU µs per request, by process:")
        for k, v in r["cpu_us_per_request"].items():
            print(f"    {v:8.1f}  {k}")
        print("  the server process's share, by layer (py-spy):")
        for k, v in r["server_layers_us_per_request"].items():
            print(f"    {v:8.1f}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
