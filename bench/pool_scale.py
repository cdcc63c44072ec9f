"""The multiplexed pool at scale: 10,000+ registered models (single and family members) served
from a three-node ``ray.cluster_utils.Cluster`` -- memory per pool replica and the cold / warm
latency distributions (issue 18).

    python -m bench.pool_scale [--models 10000] [--family-share 0.8] [--cold 300] [--warm 300]

The cluster: a head that advertises no CPU (the driver, the Serve controller and its HTTP proxy,
the registry actor) and two worker nodes (``--node-cpus`` each) holding the ingress and pool
replicas (``--pool-replicas``, a fixed count: autoscaling would move the distribution while it is
measured). The models:

- single models: one real bundle (``bench.builders.register_servable``), copied on disk for the
  rest, so each is two files like any trained version;
- family members: one family whose members' weights are packed into a few safetensors shards
  (``mlplat.models.packed.write_pack``), each member an ordinary version whose bundle.json points
  into its shard (a cold load is a bundle.json read and one range read).

Every model is PRODUCTION in the registry (bulk batches of registry calls). Cold: one request
to each of ``--cold`` distinct models never asked before, sequential, drawn in the mix's
proportion; warm: ``--warm`` sequential requests to models the pool already holds. Memory: each
pool replica's resident set (its process, read with psutil by pid) before the cold loads and
after, and per loaded model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import row, stamp, table

HERE = Path(__file__).resolve().parent
TOKEN = "bench-pool-scale"
NAMESPACE = "bench-pool-scale"
APP = "mlplat-scale"
ROW = {"amount": 12.5, "age": 31, "country": "fr"}
FAMILY = "store"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _promote_calls(name: str, ref: Any) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = [("register_version", {"name": name, "artifacts": {"bundle": ref}})]
    calls += [("transition", {"name": name, "version": 1, "state": s}) for s in ("TRAINING", "TRAINED", "VALIDATING", "VALIDATED")]
    calls.append(("promote", {"name": name, "version": 1}))
    return calls


def _flush(registry: Any, calls: list[tuple[str, dict[str, Any]]]) -> None:
    if calls:
        registry.batch(calls)
        calls.clear()


def register_models(root: str, singles: int, members: int) -> dict[str, Any]:
    """``singles`` single-file models (``tiny-NNNNN``) and ``members`` packed family members
    (``store-NNNNN``), all PRODUCTION; returns names and sizes."""
    import torch

    from bench.builders import fitted_encoder, register_servable
    from mlplat.config import PlatformConfig
    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.models.bundle import BUNDLE_FILE, WEIGHTS_FILE, bundle_dir
    from mlplat.records import ArtifactRef
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    storage = open_root(root)
    registry = RegistryStore(PlatformConfig(root=root).registry_db_path(), synchronous="NORMAL")
    single_names = [f"tiny-{i:05d}" for i in range(singles)]
    register_servable(registry, storage, single_names[0], hidden=(32,))
    template = Path(storage.path(*bundle_dir(single_names[0], 1)))
    sha = storage.sha256(*bundle_dir(single_names[0], 1), BUNDLE_FILE)
    calls: list[tuple[str, dict[str, Any]]] = []
    for name in single_names[1:]:
        target = Path(storage.path(*bundle_dir(name, 1)))
        target.mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_FILE, BUNDLE_FILE):
            shutil.copyfile(template / file, target / file)
        registry.create_model(name, task_type="binary", serving_policy={"placement": "pool"})
        calls += _promote_calls(name, ArtifactRef(path=f"models/{name}/v1/{BUNDLE_FILE}", sha256=sha, size_bytes=0))
        if len(calls) >= 600:
            _flush(registry, calls)
    _flush(registry, calls)
    out: dict[str, Any] = {"singles": single_names, "members": [],
                           "single_weight_bytes": (template / WEIGHTS_FILE).stat().st_size}
    if not members:
        return out
    from mlplat.models.packed import write_pack

    encoder = fitted_encoder(0)
    spec = ModelSpec(task="binary", hidden=[32])
    member_names = [f"{FAMILY}-{i:05d}" for i in range(members)]
    models: dict[str, Any] = {}
    states: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(member_names):
        torch.manual_seed(i)
        models[name] = build_model(spec, len(encoder.feature_columns))
        states[name] = {k: v.detach().clone().contiguous() for k, v in models[name].state_dict().items()}
    refs = write_pack(storage, states, "models", f"{FAMILY}-family", "packs", "p1", shard_max_bytes=64 * 1024 * 1024)
    for name in member_names:
        registry.create_model(name, task_type="binary", serving_policy={"placement": "pool"})
        ref = save_bundle(storage, name, 1, models[name], spec=spec, input_columns=encoder.feature_columns,
                          encoder=encoder.to_json(), placement=refs[name])
        calls += _promote_calls(name, ref)
        if len(calls) >= 600:
            _flush(registry, calls)
    _flush(registry, calls)
    out["members"] = member_names
    out["member_weight_bytes"] = refs[member_names[0]].length
    out["shards"] = len({r.shard for r in refs.values()})
    return out


def _alive(class_name: str) -> list[dict[str, Any]]:
    from ray._private import state

    return [a for a in state.actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == class_name]


def _pool_rss_mb() -> dict[str, float]:
    import psutil

    out = {}
    for actor in _alive(f"ServeReplica:{APP}:model-pool"):
        try:
            out[f"{actor['Address']['NodeID'][:8]}/{actor['Pid']}"] = psutil.Process(actor["Pid"]).memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def _quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")  # never past the largest sample
    return {"p50": statistics.median(values), "p90": q[89], "p99": q[98], "max": max(values), "n": len(values)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
    from mlplat.registry import ActorRegistry
    from mlplat.serving import start_serving

    work = Path(tempfile.mkdtemp(prefix="bench-pool-scale-"))
    root = str(work / "root")
    members = int(args.models * args.family_share)
    t0 = time.perf_counter()
    made = register_models(root, args.models - members, members)
    setup_s = time.perf_counter() - t0
    print(f"registered {args.models} models in {setup_s:.0f} s", flush=True)
    dashboard_port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
        "dashboard_agent_listen_port": _free_port()})
    result: dict[str, Any] = {"setup_s": setup_s, **{k: v for k, v in made.items() if k not in ("singles", "members")}}
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=args.node_cpus, object_store_memory=200 * 1024 * 1024)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
        port = _free_port()
        config = PlatformConfig(root=root, namespace=NAMESPACE, api_token=TOKEN, serve=ServeSettings(
            port=port, app_name=APP, telemetry=False, metrics=False, ingress_replicas=2, ingress_num_cpus=0.25,
            pool=PoolSettings(min_replicas=args.pool_replicas, max_replicas=args.pool_replicas, num_cpus=0.25)))
        ActorRegistry.connect(config, actor_name="registry-scale", url=PlatformConfig(root=root).registry_db_path())
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = start_serving(config, registry_actor="registry-scale")
        result["max_models_per_replica"] = config.serve.pool.max_models_per_replica
        nodes = {a["Address"]["NodeID"][:8] for a in _alive(f"ServeReplica:{APP}:model-pool")}
        result["pool_replicas_on_nodes"] = len(nodes)
        rng = random.Random(0)
        n_members = round(args.cold * args.family_share) if made["members"] else 0
        warmup = made["singles"][:8] + made["members"][:8]  # first loads import and allocate once per replica
        singles = made["singles"][8:]
        cold_names = rng.sample(singles, args.cold - n_members) + rng.sample(made["members"][8:], n_members)
        rng.shuffle(cold_names)
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            def timed(name: str) -> float:
                start = time.perf_counter()
                response = client.post(f"/v1/models/{name}:predict", json={"instances": [ROW]})
                response.raise_for_status()
                return (time.perf_counter() - start) * 1000

            for name in warmup:
                timed(name)
            result["rss_before_mb"] = _pool_rss_mb()
            cold = {"single": [], "member": []}
            for name in cold_names:
                cold["member" if name.startswith(FAMILY) else "single"].append(timed(name))
            result["rss_after_mb"] = _pool_rss_mb()
            loaded = cold_names[-min(len(cold_names), 50):]
            warm = [timed(rng.choice(loaded)) for _ in range(args.warm)]
        result["cold_ms"] = {k: _quantiles(v) for k, v in cold.items() if len(v) >= 2}
        result["warm_ms"] = _quantiles(warm)
    finally:
        try:
            ray.shutdown()
        finally:
            for node in list(cluster.worker_nodes):
                cluster.remove_node(node, allow_graceful=False)
            if cluster.head_node is not None:
                cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
            shutil.rmtree(work, ignore_errors=True)
    return result


def rows_of(r: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    where = (f"{args.models} registered models ({len(r.get('cold_ms', {}))} kinds), 3-node Cluster, "
             f"{args.pool_replicas} pool replicas on {r['pool_replicas_on_nodes']} worker nodes")
    rows = []
    for kind, q in r["cold_ms"].items():
        size = r.get(f"{kind}_weight_bytes")
        rows.append(row("P4-scale", f"cold load p50, {kind} ({q['n']} models, {size} B weights; {where})", q["p50"], "ms",
                        target="≤100 ms", p90_ms=round(q["p90"], 2), p99_ms=round(q["p99"], 2), max_ms=round(q["max"], 2)))
    w = r["warm_ms"]
    rows.append(row("P4-scale", f"warm hit p50 ({w['n']} requests to models already loaded)", w["p50"], "ms",
                    target="informational", p90_ms=round(w["p90"], 2), p99_ms=round(w["p99"], 2)))
    before, after = r["rss_before_mb"], r["rss_after_mb"]
    loaded = sum(q["n"] for q in r["cold_ms"].values())
    for replica, mb in after.items():
        rows.append(row("P4-scale", f"pool replica {replica} resident memory after the cold loads", mb, "MB",
                        target="informational", before_mb=round(before.get(replica, 0.0), 1)))
    if after:
        grown = sum(after.values()) - sum(before.get(k, 0.0) for k in after)
        rows.append(row("P4-scale", f"pool memory per loaded model ({loaded} loads over {len(after)} replicas)",
                        grown / max(loaded, 1) * 1024, "KB", target="informational",
                        max_models_per_replica=r["max_models_per_replica"], setup_s=round(r["setup_s"], 1)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--family-share", type=float, default=0.8, help="the share of models that are family members")
    parser.add_argument("--cold", type=int, default=300)
    parser.add_argument("--warm", type=int, default=300)
    parser.add_argument("--pool-replicas", type=int, default=2)
    parser.add_argument("--node-cpus", type=float, default=1.0)
    parser.add_argument("--out", default=str(HERE / "results" / "pool-scale.json"))
    args = parser.parse_args()
    rows = stamp(rows_of(measure(args), args))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], Path(args.out).name).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
