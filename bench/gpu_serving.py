"""GPU serving on the device machine: one large model in a dedicated deployment on ``cuda`` vs the
same model on CPU replicas, through mlplat's full HTTP path (ingress: bearer auth, validation,
telemetry; then the model's own deployment, which batches concurrent requests with ``@serve.batch``).

The model: the serving builders' fitted encoder (amount, age, country) in front of an MLP of
``--layers`` hidden layers of ``--width`` units (default 7 x 4096: ~101M parameters, 400 MB of
float32). Two models of the same weights are registered with ``placement: dedicated``:
``big-cuda`` (``device: cuda``, ``gpus_per_replica: 1``, 1 replica) and ``big-cpu`` (``device: cpu``,
``--cpu-replicas`` replicas, default a quarter of the cores; each replica runs torch on one
thread, as every serving replica does). One row per request (``/v1/models/NAME:predict``), a
fixed number of connections (``--concurrency``) spread over ``--clients`` load processes
(threads on keep-alive ``http.client`` connections: wrk is not on the device machine and
nothing beyond the standard library is needed): a warm-up, then ``--seconds`` per side,
the sides one after the other, ``--repeats`` rounds alternating which goes first; medians.

``--smoke``: both sides on CPU with a tiny MLP and short runs (checks the code without a GPU).
Writes ``serving-gpu.json`` under ``--out-dir`` (default ``$OUT`` or bench/results)::

    python3 -m bench.gpu_serving [--seconds 12] [--concurrency 64] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
ROW = {"amount": 12.5, "age": 31, "country": "fr"}


# -- load (runs in spawned client processes: stdlib only, so nothing beyond Python is needed) ----

def _connection_loop(host: str, port: int, path: str, deadline: float, out: dict) -> None:
    """One keep-alive connection sending requests back to back until ``deadline``."""
    import http.client

    body = json.dumps({"instances": [ROW]}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    conn = http.client.HTTPConnection(host, port, timeout=60)
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                out["latencies_s"].append(time.perf_counter() - start)
            else:
                out["errors"] += 1
        except (OSError, http.client.HTTPException):
            out["errors"] += 1
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.close()


def client_process(args: tuple[str, float, int]) -> dict:
    """``connections`` threads, each with its own keep-alive connection, for ``seconds``."""
    import threading
    from urllib.parse import urlsplit

    url, seconds, connections = args
    parts = urlsplit(url)
    out: dict = {"latencies_s": [], "errors": 0}
    started = time.perf_counter()
    threads = [threading.Thread(target=_connection_loop, args=(parts.hostname, parts.port, parts.path, started + seconds, out))
               for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out["elapsed_s"] = time.perf_counter() - started
    return out


def run_load(url: str, seconds: float, concurrency: int, clients: int) -> dict:
    """req/s, p50/p99 ms, errors of ``concurrency`` connections over ``clients`` processes."""
    import multiprocessing

    per = [concurrency // clients + (1 if i < concurrency % clients else 0) for i in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        parts = pool.map(client_process, [(url, seconds, n) for n in per if n])
    latencies = sorted(x for p in parts for x in p["latencies_s"])
    elapsed = max(p["elapsed_s"] for p in parts)
    if not latencies:
        return {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": sum(p["errors"] for p in parts)}
    return {"rps": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "errors": sum(p["errors"] for p in parts)}


# -- the platform ----------------------------------------------------------------------------

def register(root: str, hidden: tuple[int, ...], cuda_device: str, cpu_replicas: int) -> dict[str, dict]:
    """``big-cuda`` and ``big-cpu``: the same seeded weights, each with its serving policy."""
    from bench.builders import register_servable
    from mlplat.config import PlatformConfig
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    registry = RegistryStore(PlatformConfig(root=root).registry_db_path(), synchronous="NORMAL")
    storage = open_root(root)
    policies = {
        "big-cuda": {"placement": "dedicated", "device": cuda_device,
                     **({"gpus_per_replica": 1} if cuda_device == "cuda" else {}),
                     "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
        "big-cpu": {"placement": "dedicated", "device": "cpu",
                    "autoscaling": {"min_replicas": cpu_replicas, "max_replicas": cpu_replicas}},
    }
    for name, policy in policies.items():
        register_servable(registry, storage, name, hidden=hidden, serving_policy=policy)
    return policies


def wait_ready(port: int, name: str, timeout_s: float = 300) -> None:
    import urllib.request

    body = json.dumps({"instances": [ROW]}).encode()
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{name}:predict", data=body, method="POST",
                                             headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    raise RuntimeError(f"{name} did not answer on port {port} within {timeout_s:.0f} s: {last}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", type=int, default=max(1, min(8, cores // 4)))
    parser.add_argument("--cpu-replicas", type=int, default=max(1, cores // 4))
    parser.add_argument("--ingress-replicas", type=int, default=max(1, min(8, cores // 4)))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="both sides on CPU, tiny model, short runs")
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.width, args.layers, args.seconds, args.concurrency = 32, 2, min(args.seconds, 3.0), min(args.concurrency, 8)
        args.clients, args.cpu_replicas, args.ingress_replicas = 1, 1, 1
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU machine (or --smoke)", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(0) if device == "cuda" else None
    hidden = (args.width,) * args.layers
    import mlplat

    results: dict[str, list[dict]] = {"big-cuda": [], "big-cpu": []}
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-gpu-serving-") as root:
        began = time.perf_counter()
        policies = register(root, hidden, device, args.cpu_replicas)
        params = sum(p.numel() for p in _model_of(root).parameters())
        register_s = time.perf_counter() - began
        port = _free_port()
        p = mlplat.connect(root=root, api_token=TOKEN, serve__port=port, serve__throughput_optimized=True,
                           serve__ingress_replicas=args.ingress_replicas)
        import ray

        from mlplat.serving import apply_serve_env

        apply_serve_env(p.config)  # Serve's modes act only when set before Ray starts
        # Ray here without its dashboard: the GPU machine's slimmed Ray wheel lacks the dashboard's
        # packages, and serving needs no state API (ensure_ray keeps this Ray)
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 namespace=p.config.namespace)
        p.ensure_ray()
        try:
            began = time.perf_counter()
            p.serve_start()
            for name in results:
                wait_ready(port, name)
            start_s = time.perf_counter() - began
            for round_no in range(args.repeats):
                order = list(results) if round_no % 2 == 0 else list(results)[::-1]
                for name in order:
                    url = f"http://127.0.0.1:{port}/v1/models/{name}:predict"
                    run_load(url, min(3.0, args.seconds), args.concurrency, args.clients)  # warm-up
                    results[name].append(run_load(url, args.seconds, args.concurrency, args.clients))
        finally:
            try:
                p.serve_stop()
            finally:
                import ray

                ray.shutdown()
    rows = as_rows(results, card=card, params=params, args=args, policies=policies, register_s=register_s, start_s=start_s)
    from bench.common import table

    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    target = Path(args.out_dir) / "serving-gpu.json"
    target.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {target}")
    return 0


def _model_of(root: str):
    from mlplat.models import load_bundle
    from mlplat.storage import open_root

    return load_bundle(open_root(root), "big-cpu", 1, expected_sha256=None).model


def as_rows(results: dict[str, list[dict]], *, card: str | None, params: int, args, policies: dict, register_s: float,
            start_s: float) -> list[dict]:
    from bench.common import row, stamp

    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}

    def text(m: dict) -> str:
        return f"p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, errors {int(m['errors'])}"

    what = (f"MLP {args.layers}x{args.width} ({params / 1e6:.0f}M parameters), one row per request, "
            f"{args.concurrency} connections, {args.ingress_replicas} ingress replicas")
    gpu, cpu = med["big-cuda"], med["big-cpu"]
    where = card or "cpu (smoke)"
    common = {"card": card, "params": params, "concurrency": args.concurrency, "seconds": args.seconds,
              "repeats": args.repeats, "policies": policies, "register_s": round(register_s, 1),
              "serve_start_s": round(start_s, 1)}
    return stamp([
        row("serving-gpu", f"dedicated deployment on {where}, 1 replica: req/s ({text(gpu)}; {what})", gpu["rps"], "req/s",
            baseline=f"the same model on {args.cpu_replicas} CPU replica(s) ({text(cpu)})", baseline_value=cpu["rps"],
            target="informational (issue 18: GPU vs CPU req/s and p99)", p50_ms=round(gpu["p50_ms"], 2),
            p99_ms=round(gpu["p99_ms"], 2), baseline_p50_ms=round(cpu["p50_ms"], 2),
            baseline_p99_ms=round(cpu["p99_ms"], 2), runs={k: [{m: round(v, 2) for m, v in r.items()} for r in runs]
                                                          for k, runs in results.items()}, **common),
        row("serving-gpu", f"p99 latency on {where} ({what})", gpu["p99_ms"], "ms",
            baseline=f"p99 on {args.cpu_replicas} CPU replica(s)", baseline_value=cpu["p99_ms"],
            target="informational", card=card),
    ])


if __name__ == "__main__":
    sys.exit(main())
