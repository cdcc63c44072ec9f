"""Multi-node on one machine, and F10 (lose a node under load). Run by test_multinode.py in a
subprocess, since the test session already holds a Ray instance:

    python -m tests.integration.multinode_script OUT.json

A ``ray.cluster_utils.Cluster`` of three nodes: a head that advertises no CPU (the driver, the
Serve controller and its HTTP proxy) and two workers with 2 CPUs and one ``trainslot`` each, so
a 2-worker training run has to put one worker on each. Serving runs 2 ingress and 2 pool
replicas -- the pool autoscaling from 1 to 2 under the load, one replica per worker node, and
back to 1 after it (autoscaling across nodes); the registry actor is pinned to the head. Under
loopback load and a stream of acknowledged registry writes, a worker node is removed
mid-training; a fresh one joins (what the autoscaler would do). The script writes what it saw as JSON; the test judges.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

TOKEN = "f10-" + uuid.uuid4().hex
CLIENTS = 4
#: Longer than Ray takes to declare a lost node dead (GCS health checks, ~12 s here, more on a
#: loaded machine): a request that waits for that gets its answer, and the test judges the wait.
CLIENT_TIMEOUT_S = 60.0
NAMESPACE = "mlplat-f10"
APP = "mlplat-f10"
POOL_MODEL = "tail"
TRAIN_EPOCHS = 4
DEADLINE_S = 260.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive_actors(class_name: str) -> list[dict[str, Any]]:
    """Alive actors of a class, from the GCS actor table (the state API would ask the dashboard,
    and without an address it picks the latest Ray instance on this machine)."""
    from ray._private import state

    return [a for a in state.actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == class_name]


def node_of(actor: dict[str, Any]) -> str:
    return str(actor["Address"]["NodeID"])


def replica_nodes(deployment: str) -> list[str]:
    return sorted(node_of(a) for a in alive_actors(f"ServeReplica:{APP}:{deployment}"))


def running_replicas() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get(APP)
    return {name: sum(v for k, v in (d.replica_states or {}).items() if str(getattr(k, "value", k)) == "RUNNING")
            for name, d in (app.deployments if app else {}).items()}


class Load:
    """CLIENTS threads posting to the pool model; every request's (start, end, status) kept."""

    def __init__(self, url: str):
        self.url, self.stop, self.lock = url, threading.Event(), threading.Lock()
        #: (start, end, status): the HTTP status, or the exception's class name where no answer came
        #: (``ReadTimeout``: the client gave up after CLIENT_TIMEOUT_S; ``RemoteProtocolError``: the
        #: connection closed without an answer)
        self.requests: list[tuple[float, float, int | str]] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(CLIENTS)]

    def _loop(self) -> None:
        import httpx

        from tests.integration.serving_support import RAW_ROW

        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                code: int | str
                try:
                    code = client.post(f"/v1/models/{POOL_MODEL}:predict", json={"instances": [RAW_ROW]}).status_code
                except httpx.TransportError as exc:
                    code = type(exc).__name__
                with self.lock:
                    self.requests.append((start, time.monotonic(), code))
                time.sleep(0.02)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class RegistryWrites:
    """Registry writes with idempotency keys, one after another; ``acked`` holds those that returned."""

    def __init__(self, registry: Any):
        self.registry, self.stop = registry, threading.Event()
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.registry.append_event("f10.probe", "f10", {"i": i}, idempotency_key=f"f10-probe-{i}")
                self.acked.append(i)
            except Exception as exc:  # an unacknowledged write: it may or may not be there
                self.errors.append(f"{i}: {type(exc).__name__}: {exc}"[:300])
            i += 1
            time.sleep(0.05)


def watch_node_death(node_id: str, dead_at: list[float], timeout_s: float = 120.0) -> None:
    """Append the moment the GCS marks ``node_id`` dead (polled every 0.2 s): until then, Ray
    has not told the callers of the node's actors that they are gone."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            dead_at.append(time.monotonic())
            return
        time.sleep(0.2)


def save(out: dict[str, Any]) -> None:
    out["wall_s"] = round(time.monotonic() - STARTED, 1)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, default=str))


def run(out: dict[str, Any], work: Path) -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
    from mlplat.registry import ActorRegistry
    from mlplat.serving import start_serving
    from mlplat.storage import open_root
    from mlplat.training import read_progress, train
    from tests.integration.serving_support import register_servable
    from tests.integration.test_training import make_feature_set

    t0 = time.monotonic()
    mark = lambda what: out["timeline"].append((what, round(time.monotonic() - t0, 1)))  # noqa: E731
    worker_args = {"num_cpus": 2, "resources": {"trainslot": 1}, "object_store_memory": 150 * 1024 * 1024}
    dashboard_port = free_port()
    # Inherited by every node's processes: the state API inside them (Train's PlacementGroupCleaner)
    # asks this cluster, not the one /tmp/ray/ray_current_cluster names (see mlplat.api.Platform.ensure_ray).
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port, "dashboard_agent_listen_port": free_port()})
    try:
        node_a = cluster.add_node(**worker_args)
        node_b = cluster.add_node(**worker_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
        out["nodes"] = {"head": cluster.head_node.node_id, "a": node_a.node_id, "b": node_b.node_id}
        mark("cluster up")

        root = work / "root"
        port = free_port()
        config = PlatformConfig(root=str(root), namespace=NAMESPACE, api_token=TOKEN, serve=ServeSettings(
            port=port, app_name=APP, telemetry=False, metrics=False, ingress_replicas=2, ingress_num_cpus=0.1,
            # the pool autoscales 1 -> 2 under the load (one replica per worker node) and back after it;
            # the load keeps ~1 request in the pool, so a target of 0.5 holds 2 replicas (at 1 it flapped)
            pool=PoolSettings(min_replicas=1, max_replicas=2, num_cpus=0.1, target_ongoing_requests=0.5,
                              upscale_delay_s=1, downscale_delay_s=3, look_back_period_s=2, metrics_interval_s=0.5)))
        registry = ActorRegistry.connect(config, actor_name="registry-f10", url=str(work / "registry.db"))
        storage = open_root(config.root)
        register_servable(registry, storage, POOL_MODEL)
        make_feature_set(storage, registry)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = start_serving(config, registry_actor="registry-f10")
        mark("serving up")
        out["autoscaling"] = {"pool_before_load": running_replicas().get("model-pool")}

        load = Load(url)
        writes = RegistryWrites(registry)
        load.start()
        writes.thread.start()
        scaled_from = time.monotonic()
        while time.monotonic() - t0 < DEADLINE_S * 0.3:  # Serve adds the second pool replica on the other node
            if running_replicas().get("model-pool") == 2 and len(set(replica_nodes("model-pool"))) == 2:
                out["autoscaling"]["pool_up_s"] = round(time.monotonic() - scaled_from, 1)
                break
            time.sleep(0.3)
        mark("pool scaled up" if "pool_up_s" in out["autoscaling"] else "pool NOT scaled up")
        out["placement"] = {"ingress": replica_nodes("ingress"), "pool": replica_nodes("model-pool"),
                            "registry": [node_of(a) for a in alive_actors("RegistryActor")]}

        cfg = {"model": "f10", "feature_set": {"name": "toy"}, "code_version": "f10",
               "spec": {"task": "binary", "architecture": "custom",
                        "factory": "tests.integration.test_training_models:slow_mlp", "params": {"delay_s": 0.1}},
               "hyperparameters": {"epochs": TRAIN_EPOCHS, "batch_size": 16, "lr": 0.02},
               "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5, "trainslot": 1}},
               "failure": {"max_failures": 3}, "checkpoint": {"keep": 2}}
        run_id = f"f10-{uuid.uuid4().hex[:6]}"
        result: dict[str, Any] = {}

        def training() -> None:
            try:
                result["r"] = train(cfg, registry=registry, storage=storage, run_id=run_id)
            except Exception as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"

        trainer = threading.Thread(target=training, daemon=True)
        trainer.start()

        # Wait for a checkpointed epoch with both workers up, then remove a worker node.
        victim, workers, progress = None, [], {}
        while time.monotonic() - t0 < DEADLINE_S * 0.6 and trainer.is_alive():
            progress = read_progress(storage, run_id) or {}
            if len(workers) < 2:
                workers = alive_actors("RayTrainWorker")
                if len(workers) == 2:
                    mark("2 training workers up")
            else:
                workers = alive_actors("RayTrainWorker")
            # both ingress and both pool replicas up, one of each per worker node: losing a node then
            # leaves every deployment a replica (one that loses its only replica waits for a new one, ~20 s here)
            spread = running_replicas() == {"ingress": 2, "model-pool": 2} and all(
                len(set(replica_nodes(name))) == 2 for name in ("ingress", "model-pool"))
            if 1 <= len(progress.get("history", [])) <= TRAIN_EPOCHS - 2 and len(workers) == 2 and spread:
                out["train_nodes_before"] = sorted(node_of(w) for w in workers)
                out["epochs_before_removal"] = len(progress["history"])
                out["placement"].update(ingress=replica_nodes("ingress"), pool=replica_nodes("model-pool"))
                # Both worker nodes hold a training worker and a pool replica; take the one with
                # the registry actor too when it is on one of them (Ray puts that 0-CPU actor anywhere).
                registry_nodes = [node_of(a) for a in alive_actors("RegistryActor")]
                victim = node_a if node_a.node_id in registry_nodes else node_b
                break
            time.sleep(0.3)
        if victim is None:
            out["error"] = (f"training never reached a checkpointed epoch with 2 workers and 2 ingress and 2 pool "
                            f"replicas spread over the worker nodes in {time.monotonic() - t0:.0f} s: replicas {running_replicas()}, "
                            f"{len(workers)} workers alive, progress {progress}, training {result or 'running'}, "
                            f"placement groups {[(g.get('state'), g.get('bundles')) for g in ray.util.placement_group_table().values()]}, "
                            f"available {ray.available_resources()}")
            return
        out["removed"] = victim.node_id
        out["pool_on_removed"] = out["placement"]["pool"].count(victim.node_id)
        out["registry_on_removed"] = victim.node_id in [node_of(a) for a in alive_actors("RegistryActor")]
        removed_at = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        mark("node removed")
        node_dead_at: list[float] = []  # when the GCS declared the removed node dead
        watcher = threading.Thread(target=watch_node_death, args=(victim.node_id, node_dead_at), daemon=True)
        watcher.start()
        replacement = cluster.add_node(**worker_args)
        out["replacement"] = replacement.node_id
        mark("replacement joined")

        # Serving recovers: both deployments back at 2 running replicas.
        recovered_at, replicas_gone_at = None, None
        while time.monotonic() - t0 < DEADLINE_S * 0.8:
            if replicas_gone_at is None and not any(victim.node_id in replica_nodes(name) for name in ("ingress", "model-pool")):
                replicas_gone_at = time.monotonic()  # Ray has declared the node's replicas dead
            placed = {name: replica_nodes(name) for name in ("ingress", "model-pool")}
            if running_replicas() == {"ingress": 2, "model-pool": 2} and all(
                    len(nodes) == 2 and victim.node_id not in nodes for nodes in placed.values()):
                recovered_at = time.monotonic()
                break
            time.sleep(0.3)
        mark("serving recovered" if recovered_at else "serving NOT recovered")
        time.sleep(3.0)  # load on the recovered app
        resumed_workers: set[str] = set()
        while trainer.is_alive() and time.monotonic() - t0 < DEADLINE_S:
            resumed_workers |= {node_of(w) for w in alive_actors("RayTrainWorker")}
            trainer.join(timeout=1.0)
        mark("training done" if not trainer.is_alive() else "training NOT done")
        load.finish()
        writes.stop.set()
        writes.thread.join(timeout=30)
        idle_from = time.monotonic()
        while time.monotonic() - idle_from < 60:  # no load: the pool goes back to its minimum
            if running_replicas().get("model-pool") == 1:
                out["autoscaling"]["pool_down_s"] = round(time.monotonic() - idle_from, 1)
                break
            time.sleep(0.5)
        out["autoscaling"]["pool_after_load"] = running_replicas().get("model-pool")
        mark("pool scaled down" if "pool_down_s" in out["autoscaling"] else "pool NOT scaled down")

        watcher.join(timeout=1.0)
        requests = list(load.requests)

        def since_removal(r: tuple[float, float, int | str]) -> tuple[float, float, int | str]:
            return round(r[0] - removed_at, 2), round(r[1] - removed_at, 2), r[2]

        in_flight = [r for r in requests if r[0] <= removed_at <= r[1]]
        failed = [r for r in requests if r[2] != 200]
        out["serving"] = {
            "requests": len(requests), "failed": len(failed), "in_flight_at_removal": len(in_flight),
            "failed_codes": sorted({str(r[2]) for r in failed}),
            # requests that got no answer within CLIENT_TIMEOUT_S: they hung
            "hung": [since_removal(r) for r in failed if isinstance(r[2], str) and r[2].endswith("Timeout")],
            "failed_started_before_removal": sum(1 for r in failed if r[0] <= removed_at),
            # each failure as (start, end) seconds from the removal, and its status: what judges the bound
            "failed_at_s": [since_removal(r) for r in failed][:50],
            # the longest requests, failed or not: where a slow recovery shows first
            "slowest_s": [since_removal(r) for r in sorted(requests, key=lambda r: r[0] - r[1])[:5]],
            "recovered_s": None if recovered_at is None else round(recovered_at - removed_at, 1),
            "replicas_gone_s": None if replicas_gone_at is None else round(replicas_gone_at - removed_at, 1),
            "node_dead_s": round(node_dead_at[0] - removed_at, 1) if node_dead_at else None,
            # the requests running between the removal and the node's death that took over 1 s, as
            # (start, end) seconds from the removal and status: what judges how long the loss held them
            "held_up": [since_removal(r) for r in requests
                        if r[1] >= removed_at and r[1] - r[0] > 1.0
                        and (not node_dead_at or r[0] <= node_dead_at[0])][:50],
            "requests_after_recovery": 0 if recovered_at is None else sum(1 for r in requests if r[0] >= recovered_at),
            "failed_after_recovery": None if recovered_at is None else sum(1 for r in failed if r[0] >= recovered_at),
            "placement_after": {"ingress": replica_nodes("ingress"), "pool": replica_nodes("model-pool")},
        }
        r = result.get("r")
        out["training"] = {"error": result.get("error") or (r.error if r else "no result"), "state": r.state if r else None,
                           "version": r.version if r else None, "resumes": r.resumes if r else [],
                           "epochs": [h["epoch"] for h in (r.history if r else [])],
                           "worker_nodes_after_removal": sorted(resumed_workers)}
        events = registry.events_since(0, kinds="f10.probe", limit=100_000)
        seen = [e.payload["i"] for e in events]
        out["registry"] = {
            "acked": len(writes.acked), "unacked_errors": writes.errors[:5], "n_unacked": len(writes.errors),
            "missing_acked": sorted(set(writes.acked) - set(seen))[:20],
            "duplicates": sorted({i for i in seen if seen.count(i) > 1})[:20],
            "pool_model_state": registry.get_version(POOL_MODEL, 1).state.value,
            "trained_state": registry.get_version("f10", r.version).state.value if r else None,
            "registry_after": [node_of(a) for a in alive_actors("RegistryActor")],
        }
        mark("checked")
    except Exception:
        out["error"] = traceback.format_exc()[-4000:]
    finally:
        save(out)  # before shutdown: a thread still using Ray after ray.shutdown() ends the process
        stop_cluster(cluster)


def stop_cluster(cluster: Any) -> None:
    """Every process of every node, the head last (Cluster.shutdown refuses the head this driver
    was connected to when a thread still holds Ray)."""
    import ray

    try:
        ray.shutdown()
    finally:
        for node in list(cluster.worker_nodes):
            try:
                cluster.remove_node(node, allow_graceful=False)
            except Exception as exc:
                print(f"stopping a worker node: {exc}", file=sys.stderr)
        if cluster.head_node is not None:
            cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)


STARTED = time.monotonic()


def main() -> int:
    work = Path(sys.argv[1]).parent / f"f10-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    out: dict[str, Any] = {"timeline": []}
    try:
        run(out, work)
    except Exception:
        out.setdefault("error", traceback.format_exc()[-4000:])
    save(out)
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    sys.exit(main())
