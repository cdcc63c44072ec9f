"""The registry through its detached Ray actor, on SQLite and on PostgreSQL (the module runs once
per backend): same records and errors as the in-process store, concurrent writers, F5 (SIGKILL
the actor during 1,000 idempotent writes) and F6 (a client process killed mid-registration leaves
each version absent or complete).

Uses its own actor name, namespace and database, and kills only that actor."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlplat.config import PlatformConfig, redact_url
from mlplat.errors import ConfigError, ConflictError, InvalidName, InvalidTransition, NotFound
from mlplat.records import Event, ModelState, ModelVersion, check_transition
from mlplat.registry import REGISTRY_CALLS, ActorRegistry, RegistryStore

pytestmark = [pytest.mark.ray]
S = ModelState
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def reg(request, ray_session, tmp_path_factory):
    """A registry actor of this module and backend only: (transport, config, actor_name)."""
    suffix = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("registry-actor")
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"actor_{suffix}")
    config = PlatformConfig(root=str(root), namespace=f"mlplat-regtest-{suffix}", registry={"url": url})
    name = f"registry-test-{suffix}"
    client = ActorRegistry.connect(config, actor_name=name)
    yield client, config, name
    ray_session.kill(client.actor, no_restart=True)


def test_every_protocol_call_goes_through_the_actor(reg):
    client, config, _ = reg
    assert client.backend_url() == redact_url(config.registry_url())
    assert set(dir(client)) >= set(REGISTRY_CALLS)
    with pytest.raises(AttributeError, match="not a Registry call"):
        client.drop_everything  # noqa: B018
    with pytest.raises(TypeError):
        client.get_version("x", 1, bogus=True)
    run = client.enqueue_run("actor-run-1", kind="train", model="m", request={"a": 1})
    assert run.queue_position == 1 and client.claim_next_run("w").run_id == "actor-run-1"
    assert client.update_run("actor-run-1", state="SUCCEEDED", metrics={"auc": 0.9}).metrics == {"auc": 0.9}
    entry = client.catalog_register("dataset", "actor-ds", {"status": "ready"}, tags=iter(["t"]))  # iterators are sent as lists
    assert client.catalog_get("dataset", "actor-ds", status="ready") == entry and entry.tags == ("t",)


def test_same_records_and_errors_as_local(reg, tmp_path):
    client, _, _ = reg
    local = RegistryStore(tmp_path / "local.db")
    for c in (client, local):
        v = c.register_version("parity", datasets=[{"name": "clicks", "version": 2}], metrics={"auc": 0.9})
        assert isinstance(v, ModelVersion) and v.state is S.REGISTERED and v.datasets[0].version == 2
        assert c.get_version("parity", v.version) == v
        with pytest.raises(NotFound) as nf:
            c.get_version("parity", 999)
        assert type(nf.value) is NotFound
        with pytest.raises(InvalidTransition, match="REGISTERED -> PRODUCTION") as it:
            c.transition("parity", v.version, "PRODUCTION")
        assert type(it.value) is InvalidTransition
        with pytest.raises(ConflictError):
            c.transition("parity", v.version, "TRAINING", expected_state="TRAINED")
        with pytest.raises(InvalidName):
            c.get_model("../etc")
        e = c.append_event("note", "model:parity", {"x": 1})
        assert isinstance(e, Event) and c.last_seq() == e.seq
        assert c.read_batch([("get_version", {"name": "parity", "version": v.version})]) == [c.get_version("parity", v.version)]


def test_connect_twice_reuses_the_actor(reg):
    client, config, name = reg
    again = ActorRegistry.connect(config, actor_name=name)
    assert again.getpid() == client.getpid()
    other = config.model_copy(update={"registry": config.registry.model_copy(update={"url": "/tmp/elsewhere.db"})})
    with pytest.raises(ConfigError, match="already runs on"):
        ActorRegistry.connect(other, actor_name=name)


def _writer_task(config_json: str, actor_name: str, worker: int, n: int):
    """Runs in a Ray task: its own client, n registrations, and one race for the same version."""
    cfg = PlatformConfig.model_validate_json(config_json)
    c = ActorRegistry.connect(cfg, actor_name=actor_name)
    versions = [c.register_version("shared", extra={"worker": worker, "j": j}).version for j in range(n)]
    try:
        c.transition("race", 1, "TRAINING", expected_state="REGISTERED")
        outcome = "won"
    except ConflictError:
        outcome = "conflict"
    return versions, outcome


def test_concurrent_writers_from_tasks(reg, ray_session):
    client, config, name = reg
    client.register_version("race")
    task = ray_session.remote(num_cpus=0.25, max_retries=0)(_writer_task)
    workers, n = 4, 25
    results = ray_session.get([task.remote(config.model_dump_json(), name, w, n) for w in range(workers)], timeout=120)
    all_versions = sorted(v for versions, _ in results for v in versions)
    assert all_versions == list(range(1, workers * n + 1))  # every write, each once, no gaps
    assert sorted(outcome for _, outcome in results) == ["conflict"] * (workers - 1) + ["won"]
    stored = client.list_versions("shared")
    assert sorted((v.extra["worker"], v.extra["j"]) for v in stored) == [(w, j) for w in range(workers) for j in range(n)]
    assert client.get_version("race", 1).state is S.TRAINING


def test_f5_sigkill_actor_during_1000_idempotent_writes(reg):
    """F5: every acknowledged write present, none twice, no illegal state; the actor restarts itself."""
    client, _, _ = reg
    n_items = 500  # 500 registrations + 500 transitions = 1,000 writes
    acked_reg: dict[int, ModelVersion] = {}
    acked_tr: dict[int, ModelVersion] = {}
    lock = threading.Lock()
    killed: list[int] = []

    def op(i: int) -> None:
        model = f"f5-m{i % 5}"
        v = client.register_version(model, extra={"i": i}, idempotency_key=f"f5-reg-{i}")
        with lock:
            acked_reg[i] = v
        t = client.transition(model, v.version, S.TRAINING, expected_state=S.REGISTERED, idempotency_key=f"f5-tr-{i}")
        with lock:
            acked_tr[i] = t

    def killer() -> None:
        for threshold in (150, 600):  # two kills, at ~15% and ~60% of the writes
            while True:
                with lock:
                    done = len(acked_reg) + len(acked_tr)
                if done >= threshold:
                    break
                time.sleep(0.005)
            pid = client.getpid()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    start = time.monotonic()
    kill_thread = threading.Thread(target=killer, daemon=True)
    kill_thread.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(op, range(n_items)))
    kill_thread.join(timeout=60)
    elapsed = time.monotonic() - start

    # the actor came back by itself, twice
    assert len(set(killed)) == 2, killed
    assert client.ping() and client.getpid() not in killed

    assert len(acked_reg) == len(acked_tr) == n_items
    stored = [v for m in range(5) for v in client.list_versions(f"f5-m{m}")]
    assert len(stored) == n_items  # none twice
    by_i = {v.extra["i"]: v for v in stored}
    assert len(by_i) == n_items
    for i, v in acked_reg.items():  # every acknowledged write present, with the acknowledged number
        assert by_i[i].name == v.name and by_i[i].version == v.version
        assert by_i[i].state is S.TRAINING
    for m in range(5):
        assert [v.version for v in client.list_versions(f"f5-m{m}")] == list(range(1, n_items // 5 + 1))
    events = [e for e in client.events_since(0, limit=100_000) if e.subject.startswith("model:f5-")]
    assert sum(e.kind == "version_registered" for e in events) == n_items
    changes = [e for e in events if e.kind == "state_changed"]
    assert len(changes) == n_items and len({(e.subject, e.version) for e in changes}) == n_items
    for e in changes:  # no illegal state
        check_transition(e.payload["from"], e.payload["to"])
    seqs = [e.seq for e in client.events_since(0, limit=100_000)]
    assert seqs == sorted(set(seqs))
    print(f"F5: 1,000 writes with 2 actor kills in {elapsed:.1f}s")


F6_SCRIPT = textwrap.dedent("""
    import hashlib, os, sys
    import ray
    from mlplat.config import PlatformConfig, redact_url
    from mlplat.registry import ActorRegistry

    config_json, actor_name, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    ray.init(address=os.environ["F6_RAY_ADDRESS"], namespace="f6-client", log_to_driver=False, configure_logging=False)
    client = ActorRegistry.connect(PlatformConfig.model_validate_json(config_json), actor_name=actor_name)
    i = 0
    while True:
        arts = {}
        for part in ("weights", "encoder"):
            data = os.urandom(64 * 1024)
            path = os.path.join(out_dir, f"{i}-{part}.bin")
            with open(path, "wb") as f:
                f.write(data)
            arts[part] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
        # one transaction: the version, its artifacts and a completion event
        out = client.batch([
            ("register_version", {"name": "f6", "artifacts": arts, "extra": {"i": i}}),
            ("append_event", {"kind": "bundle_complete", "subject": "model:f6", "payload": {"i": i}}),
        ])
        print("ack", out[0].version, flush=True)
        i += 1
""")


def test_f6_client_killed_mid_registration(reg, ray_session, tmp_path):
    """F6: a killed client leaves each version absent, or complete with matching sha256."""
    client, config, name = reg
    script = tmp_path / "f6_client.py"
    script.write_text(F6_SCRIPT)
    out_dir = tmp_path / "artifacts"
    out_dir.mkdir()
    env = {**os.environ, "F6_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    proc = subprocess.Popen([sys.executable, str(script), config.model_dump_json(), name, str(out_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    acked = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 20 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("ack "):
                acked.append(int(line.split()[1]))
        assert len(acked) >= 20, f"client made only {len(acked)} registrations (rc={proc.poll()})"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-registration: it is writing or registering continuously
        proc.wait(timeout=30)
    time.sleep(0.5)  # let a call the client sent before dying finish on the actor

    versions = client.list_versions("f6")
    assert {v.version for v in versions} >= set(acked)
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    complete = {e.payload["i"] for e in client.events_since(0, limit=100_000, subject="model:f6", kinds="bundle_complete")}
    for v in versions:
        assert set(v.artifacts) == {"weights", "encoder"}
        assert v.extra["i"] in complete
        for ref in v.artifacts.values():
            data = Path(ref.path).read_bytes()
            assert len(data) == ref.size_bytes and hashlib.sha256(data).hexdigest() == ref.sha256
    assert len(complete) == len(versions)


def test_an_idle_rollout_controller_waits_in_the_log_and_wakes_at_the_next_write(reg, ray_session):
    """With no deployment in flight the controller's loop long-polls the registry actor instead of
    ticking every poll_s (0.2 s here: ~10 ticks in 2 s); an event it acts on (a state change)
    wakes it, another kind does not, and a stream of them costs a tick per poll_s at most."""
    from mlplat.lifecycle.controller import ensure_controller

    client, config, actor_name = reg
    controller = ensure_controller(config, poll_s=0.2, registry_actor=actor_name, name=f"ctl-{uuid.uuid4().hex[:6]}")

    def status():
        return ray_session.get(controller.status.remote())

    try:
        deadline = time.monotonic() + 30
        while (status()["ticks"] < 1 or status()["in_flight"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status()["in_flight"] is False and status()["last_error"] is None, status()
        time.sleep(0.5)  # a tick that started before the checks above ends
        idle = status()["ticks"]
        time.sleep(2.0)
        assert status()["ticks"] - idle <= 1, status()
        idle = status()["ticks"]
        client.append_event("note_added", "model:idle-controller", {"why": "not an event the controller acts on"})
        time.sleep(1.0)
        assert status()["ticks"] == idle, status()
        client.append_event("state_changed", "model:idle-controller", {"to": "VALIDATED"}, version=1)
        deadline = time.monotonic() + 3
        while status()["ticks"] == idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status()["ticks"] > idle and status()["last_error"] is None, status()
        before, started = status()["ticks"], time.monotonic()
        for _ in range(25):  # 25 events in ~1 s: without the pause, a tick each
            client.append_event("state_changed", "model:idle-controller", {"to": "VALIDATED"}, version=1)
            time.sleep(0.04)
        ticks = status()["ticks"] - before
        assert ticks <= (time.monotonic() - started) / 0.2 + 2, (ticks, status())
    finally:
        ray_session.kill(controller, no_restart=True)


def test_platform_registry_property(ray_session, tmp_path, monkeypatch):
    """``Platform.registry`` connects to the named detached actor of its namespace."""
    from mlplat.api import connect
    from mlplat.registry import REGISTRY_ACTOR_NAME, ActorRegistry

    monkeypatch.delenv("MLPLAT_REGISTRY_MODE", raising=False)
    p = connect(root=str(tmp_path / "root"), namespace=f"mlplat-regtest-{uuid.uuid4().hex[:8]}")
    client = p.registry
    try:
        assert p.registry is client and isinstance(client, ActorRegistry)
        assert client.register_version("via-api").version == 1
        handle = ray_session.get_actor(REGISTRY_ACTOR_NAME, namespace=p.config.namespace)
        assert ray_session.get(handle.backend_url.remote()) == p.config.registry_url()
    finally:
        ray_session.kill(client.actor, no_restart=True)


TWO_CLUSTERS_SCRIPT = textwrap.dedent("""
    import sys
    import ray
    from mlplat.config import PlatformConfig
    from mlplat.registry import ActorRegistry

    config_json, actor_name = sys.argv[1], sys.argv[2]
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # a cluster of its own, whatever else runs on the machine
    other = ActorRegistry.connect(PlatformConfig.model_validate_json(config_json), actor_name=actor_name)
    seen = other.get_version("shared-two", 1)
    v = other.register_version("shared-two", extra={"cluster": "second"}, idempotency_key="second-cluster")
    print("GCS", ray.get_runtime_context().gcs_address, flush=True)
    print("SEEN", seen.extra["cluster"], "WROTE", v.version, "SEQ", other.last_seq(), flush=True)
    ray.kill(other.actor, no_restart=True)
    ray.shutdown()
""")


@pytest.mark.postgres
def test_two_ray_clusters_on_one_postgresql_see_one_registry(ray_session, postgres_server, tmp_path):
    """A second Ray cluster (its own ``ray.init`` in another process, its own registry actor) on
    the same PostgreSQL database reads what this cluster wrote, and this one reads its write."""
    url = postgres_server.create_database(f"two_{uuid.uuid4().hex[:8]}")
    suffix = uuid.uuid4().hex[:8]
    config = PlatformConfig(root=str(tmp_path / "root"), namespace=f"mlplat-two-{suffix}", registry={"url": url})
    here = ActorRegistry.connect(config, actor_name=f"registry-two-{suffix}")
    try:
        here.register_version("shared-two", extra={"cluster": "first"})
        script = tmp_path / "second_cluster.py"
        script.write_text(TWO_CLUSTERS_SCRIPT)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env["PYTHONPATH"] = str(REPO)
        out = subprocess.run([sys.executable, str(script), config.model_dump_json(), f"registry-two-{suffix}"],
                             capture_output=True, text=True, timeout=180, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        gcs = next(x for x in out.stdout.splitlines() if x.startswith("GCS")).split()[1]
        assert gcs != ray_session.get_runtime_context().gcs_address  # really another cluster
        line = next(x for x in out.stdout.splitlines() if x.startswith("SEEN"))
        assert line.split()[:4] == ["SEEN", "first", "WROTE", "2"], line
        second = here.get_version("shared-two", 2)
        assert second.extra == {"cluster": "second"}
        assert here.last_seq() == int(line.split()[-1])  # one event log, nothing since
        assert [e.seq for e in here.events_since(0, limit=1000)] == list(range(1, here.last_seq() + 1))
    finally:
        ray_session.kill(here.actor, no_restart=True)


@pytest.mark.postgres
def test_postgresql_restart_under_the_actor_applies_each_write_once(ray_session, tmp_path):
    """The database stops while the actor runs: a write made meanwhile waits (the transport
    resends it with the same key) and lands once when the server is back; a database that is down
    when a client connects is a clear error at once, not a 120 s wait."""
    from mlplat.errors import StorageError
    from tests.servers import start_postgres

    server = start_postgres(tmp_path / "pg")
    suffix = uuid.uuid4().hex[:8]
    config = PlatformConfig(root=str(tmp_path / "root"), namespace=f"mlplat-pgdown-{suffix}", registry={"url": server.url})
    client = ActorRegistry.connect(config, actor_name=f"registry-pgdown-{suffix}", retry_s=60)
    try:
        client.register_version("restart", idempotency_key="before")
        server.stop()
        started = time.monotonic()
        with pytest.raises(StorageError, match="cannot be reached"):
            ActorRegistry.connect(config.model_copy(update={"namespace": f"mlplat-pgdown2-{suffix}"}),
                                  actor_name=f"registry-pgdown2-{suffix}")
        assert time.monotonic() - started < 30
        restarter = threading.Timer(3.0, lambda: restarted.append(start_postgres(tmp_path / "pg")))
        restarted: list = []
        restarter.start()
        during = client.register_version("restart")  # sent while the database is down
        restarter.join()
        assert during.version == 2
        assert [v.version for v in client.list_versions("restart")] == [1, 2]  # applied once
        server = restarted[0]
    finally:
        ray_session.kill(client.actor, no_restart=True)
        for name in (f"registry-pgdown2-{suffix}",):
            try:
                ray_session.kill(ray_session.get_actor(name, namespace=f"mlplat-pgdown2-{suffix}"), no_restart=True)
            except ValueError:
                pass
        server.stop()
