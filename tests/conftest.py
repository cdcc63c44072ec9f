"""Shared fixtures: one Ray instance and one SeaweedFS server per test session.

Ray is never started per test (ray-2.60-notes.md: ~4 s each on 2 cores)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.servers import PostgresServer, S3Server, start_postgres, start_seaweedfs

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Train's controller polls its workers every 2 s, and a tiny test model's every report waits
# for a poll (as in `make demo`, mlplat/demo.py): 0.5 s for every Ray this session starts, the
# `ray start` clusters and the notebook's kernel included (they inherit this environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def _state_api_address() -> str:
    """The state API's address for the session's own Ray. Without one, ray.util.state dials the
    cluster named in /tmp/ray/ray_current_cluster: the newest `ray start` on the machine (a
    multi-node or job-submission test's, long stopped), and waits 40 s for its GCS."""
    import ray

    return ray.get_runtime_context().gcs_address


def _ray_cluster_state() -> str:
    """What holds the test cluster's resources: a hung Ray Data pipeline is usually waiting for
    a CPU somebody else holds, and this names who."""
    import ray
    from ray.util.state import list_actors, list_placement_groups, list_tasks

    lines = [f"available: {ray.available_resources()}", f"total: {ray.cluster_resources()}"]
    for title, rows in (
        ("actors", lambda: [(a.class_name, a.state, a.pid, a.required_resources)
                            for a in list_actors(address=_state_api_address(), filters=[("state", "!=", "DEAD")],
                                                       limit=200, detail=True, timeout=10)]),
        ("placement groups", lambda: [(g.name, g.state, g.bundles)
                                      for g in list_placement_groups(address=_state_api_address(),
                                                                     filters=[("state", "!=", "REMOVED")], limit=100,
                                                                     detail=True, timeout=10)]),
        ("unfinished tasks", lambda: [(t.name, t.state, t.type)
                                      for t in list_tasks(address=_state_api_address(),
                                                                 filters=[("state", "!=", "FINISHED")], limit=100, timeout=10)]),
    ):
        try:
            lines += [f"{title}:", *(f"  {row}" for row in rows())]
        except Exception as exc:  # diagnostics only
            lines.append(f"{title}: could not list ({type(exc).__name__}: {exc})")
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed (or timed-out) test that used Ray gets the cluster's resource state in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    try:
        import ray

        if ray.is_initialized():
            report.sections.append(("ray cluster state", _ray_cluster_state()))
    except Exception as exc:  # never hide the test's own failure
        report.sections.append(("ray cluster state", f"unavailable: {exc}"))


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlplat-session")


@pytest.fixture(scope="session")
def s3_server(session_tmp) -> S3Server:
    server = start_seaweedfs(session_tmp / "seaweedfs")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(s3_server):
    from mlplat.config import S3Settings

    return S3Settings(endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key, secret_key=s3_server.secret_key)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> PostgresServer:
    """One PostgreSQL per session (the registry's shared backend); each test takes a fresh database."""
    server = start_postgres(tmp_path_factory.mktemp("pg") / "data")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_url(request, tmp_path) -> str:
    """A fresh, empty registry database per test: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request, tmp_path):
    """A fresh storage root per test, on local disk and on SeaweedFS S3."""
    from mlplat.storage import open_root

    if request.param == "local":
        return open_root(str(tmp_path / "root"))
    settings = request.getfixturevalue("s3_settings")
    return open_root(f"s3://mlplat-test/{uuid.uuid4().hex[:10]}", settings)


@pytest.fixture(scope="session")
def ray_session(session_tmp):
    """One local Ray instance for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        # address="local": our own instance; with no address ray.init joins the newest Ray running on
        # the machine (a `ray start` of the job-submission test, another checkout's session).
        # Workers get the state API's address of this instance (mlplat.api.Platform.ensure_ray
        # says why): Train's PlacementGroupCleaner otherwise waits 12 s per training for the
        # dead GCS named in /tmp/ray/ray_current_cluster by an earlier `ray start`.
        from mlplat.api import dashboard_port

        port = dashboard_port()
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 namespace="mlplat-test", log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1",
                                           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"],
                                           "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    yield ray
    ray.shutdown()


def stop_leftover_trainers(timeout_s: float = 60.0) -> list[str]:
    """Stop Ray Train actors that outlived their test (e.g. a controller still retrying a worker
    group after its run was killed or re-queued) and wait until no placement group holds CPUs, so
    the next module does not wait forever for a CPU. Never raises: a cleanup that fails must not
    leave the next module to hang. Returns what was stopped."""
    import signal
    import subprocess
    import time

    import ray

    pids: dict[int, str] = {}
    try:
        from ray.util.state import list_actors

        for actor in list_actors(address=_state_api_address(), filters=[("state", "=", "ALIVE")], limit=1000,
                                 timeout=20):
            if actor.class_name in ("TrainController", "RayTrainWorker") and actor.pid:
                pids[int(actor.pid)] = actor.class_name
    except Exception as exc:  # the state API can time out on a loaded box: the process titles say the same
        print(f"stop_leftover_trainers: list_actors failed ({type(exc).__name__}: {exc}); using process titles")
    try:
        found = subprocess.run(["pgrep", "-f", "^ray::(TrainController|RayTrainWorker)"], capture_output=True,
                               text=True, timeout=10).stdout.split()
        pids.update({int(pid): "ray::Train" for pid in found if int(pid) not in pids})
    except Exception as exc:
        print(f"stop_leftover_trainers: pgrep failed ({exc})")
    stopped = []
    for pid, what in pids.items():
        try:
            os.kill(pid, signal.SIGKILL)  # one machine: the actor's process is ours to stop
            stopped.append(f"{what} pid {pid}")
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while stopped and time.monotonic() < deadline:
        try:
            reserved = [pg for pg in ray.util.placement_group_table().values() if pg.get("state") == "CREATED"
                        and any(b.get("CPU") for b in (pg.get("bundles") or {}).values())]
        except Exception as exc:
            print(f"stop_leftover_trainers: placement_group_table failed ({exc})")
            reserved = []
        if not reserved:
            break
        for pg in reserved:  # their owners are gone: remove what is left
            try:
                from ray.util.placement_group import PlacementGroup, PlacementGroupID

                ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg["placement_group_id"]))))
            except Exception:
                pass
        time.sleep(0.5)
    return stopped


@pytest.fixture(autouse=True, scope="module")
def _no_trainer_outlives_its_module(request):
    """After every integration module that used Ray: no Train actor may keep holding CPUs (a
    leftover controller starves the next module's Serve replicas until their timeout)."""
    yield
    if "integration" not in str(getattr(request.node, "path", "")):
        return
    import ray

    if ray.is_initialized():
        stopped = stop_leftover_trainers(timeout_s=30.0)
        if stopped:
            print(f"stopped after {request.node.name}: {stopped}")


@pytest.fixture(scope="session")
def serve_http_port() -> int:
    """Serve's HTTP proxy binds once per Ray instance: every Serve app in the session shares it
    (a later serve.start with other http_options is ignored)."""
    from tests.servers import free_port

    return free_port()
