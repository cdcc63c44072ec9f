"""`ray job submit` against a real `ray start --head` cluster (token auth, loopback).

The cluster runs in subprocesses with a temp dir (and a temp HOME for its auth token) of its
own; it never shares the session Ray instance. A "laptop" registers the example data with the
`mlplat` CLI and MLPLAT_ROOT set, which publishes the platform's settings on the cluster. Then
each stage's job is submitted as a user would (`ray job submit --working-dir .`, and the
`JobSubmissionClient` SDK): some with no MLPLAT_* variables (they adopt the cluster's
settings), some with `--runtime-env-json` env vars (Ray merges the job's runtime env with the
driver's own `ray.init`). The registry database is read from the test to check the outcome.

Cost on the 2-core box, measured while other suites ran: the three cluster tests 3.5-4 minutes
(cluster start and data ~15-20 s, the training job ~60 s, every other job 10-35 s, a Serve app
~20 s); the in-process test ~1 s on the session's Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = "clicks-ctr"
JOB_TIMEOUT_S = 420  # generous: a loaded 2-core box; a job takes 5-60 s on an idle one
API_TOKEN = "job-test-token"
FEATURES = ["age", "spend", "sessions", "country", "device", "plan", "score"]


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(20000, 29000)
        if port not in ports:
            ports.append(port)
    return ports


class Cluster:
    """`ray start --head --block` in its own session; stopped by pid (and every descendant's)."""

    def __init__(self, base: Path):
        self.base = base
        self.home = base / "home"
        self.home.mkdir()
        self.repo = _snapshot(REPO, base / "repo")
        gcs, self.dashboard_port, client, agent, agent_grpc, metrics, runtime_env, self.serve_port = _ports(8)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MLPLAT_", "AWS_")) and k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        self.env.update(HOME=str(self.home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                        # Single-node mode: Ray keeps every address on loopback (else it swaps
                        # 127.0.0.1 for the host's IP when a driver connects).
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=self.env, check=True,
                       capture_output=True, timeout=60)
        self.token = (self.home / ".ray" / "auth_token").read_text().strip()
        self.log = (base / "ray-start.log").open("w")
        self.process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={runtime_env}", "--num-cpus=2", f"--object-store-memory={300 * 1024**2}",
             f"--temp-dir={base / 'ray'}", "--disable-usage-stats"],
            env=self.env, cwd=str(base), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.client = self._wait_for_dashboard(timeout_s=90)
        except BaseException:
            self.stop()
            raise

    def _wait_for_dashboard(self, timeout_s: float):
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}: {self.log_text()}")
            try:
                client = JobSubmissionClient(self.dashboard_url, headers={"Authorization": f"Bearer {self.token}"})
                client.list_jobs()
                return client
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the dashboard at {self.dashboard_url} did not answer: {exc}\n{self.log_text()}") from None
                time.sleep(1)

    def log_text(self) -> str:
        return (self.base / "ray-start.log").read_text()[-3000:]

    def stop(self) -> None:
        import psutil

        try:
            family = [self.process.pid] + [c.pid for c in psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = [self.process.pid]
        for pid in family:  # raylet, GCS, dashboard, workers, job drivers: each stops on SIGTERM
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                                                   for pid in family[1:]):
            time.sleep(0.2)
        for pid in family:  # whatever is still there
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        self.log.close()

    # -- the two ways in ------------------------------------------------------------------
    def cli_job(self, args: list[str], *, runtime_env_vars: dict[str, str] | None = None) -> tuple[int, str]:
        """`ray job submit --working-dir . [--runtime-env-json ...] -- python jobs/...` from the repo."""
        command = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard_url, "--working-dir", "."]
        if runtime_env_vars:
            command += ["--runtime-env-json", json.dumps({"env_vars": runtime_env_vars})]
        started = time.monotonic()
        done = subprocess.run([*command, "--", "python", *args], cwd=str(self.repo), env=self.env, capture_output=True,
                              text=True, timeout=JOB_TIMEOUT_S)
        print(f"ray job submit {args[0]}: exit {done.returncode} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return done.returncode, done.stdout + done.stderr

    def sdk_job(self, args: list[str], *, runtime_env_vars: dict[str, str] | None = None) -> tuple[str, str]:
        """JobSubmissionClient.submit_job, then wait; returns (status, logs)."""
        started = time.monotonic()
        runtime_env: dict[str, object] = {"working_dir": str(self.repo)}
        if runtime_env_vars:
            runtime_env["env_vars"] = runtime_env_vars
        job_id = self.client.submit_job(entrypoint=" ".join(["python", *args]), runtime_env=runtime_env,
                                        submission_id=f"mlplat-{uuid.uuid4().hex[:8]}")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (status := self.client.get_job_status(job_id)).is_terminal() is False:
            if time.monotonic() > deadline:
                self.client.stop_job(job_id)
                raise AssertionError(f"job {job_id} still {status} after {JOB_TIMEOUT_S} s:\n"
                                     f"{self.client.get_job_logs(job_id)[-3000:]}")
            time.sleep(1)
        print(f"JobSubmissionClient {args[0]}: {status.value} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return str(status.value), self.client.get_job_logs(job_id)

    def mlplat(self, args: list[str], root: Path) -> str:
        """The `mlplat` CLI on the "laptop": MLPLAT_ROOT (and the serving port and token) set,
        connected to the cluster."""
        env = {**self.env, "MLPLAT_ROOT": str(root), "MLPLAT_RAY_ADDRESS": self.gcs_address,
               "MLPLAT_SERVE_PORT": str(self.serve_port), "MLPLAT_API_TOKEN": API_TOKEN}
        done = subprocess.run([str(BIN / "mlplat"), *args], cwd=str(self.base), env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _snapshot(repo: Path, dest: Path) -> Path:
    """The working tree as a user's checkout would hold it (tracked and untracked files, not
    ignored ones), copied once: other processes may edit the shared tree while Ray packages
    `--working-dir` for a job, and a file that changes between hashing and zipping fails the
    job's runtime env."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=str(repo),
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = repo / name
        if source.is_file() and not name.endswith(".tmp"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _json_out(logs: str) -> dict:
    """The JSON object a job printed last (its result), out of the job's logs."""
    end = logs.rindex("}")
    depth, start = 0, end
    for i in range(end, -1, -1):
        depth += {"}": 1, "{": -1}.get(logs[i], 0)
        if depth == 0:
            start = i
            break
    return json.loads(logs[start:end + 1])


@pytest.fixture(scope="module")
def cluster():
    # A short path: Ray's Unix socket paths under --temp-dir must stay under ~100 characters.
    base = Path(tempfile.mkdtemp(prefix="mlplat-jobs-", dir="/tmp"))
    started = None
    try:
        started = Cluster(base)
        yield started
    finally:
        if started is not None:
            started.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(cluster):
    """The laptop side: example clicks registered with MLPLAT_ROOT set (which publishes the
    platform's settings on the cluster); returns the root."""
    from mlplat.demo import _write_clicks_csv

    root = cluster.base / "root"
    source = cluster.base / "clicks.csv"
    _write_clicks_csv(source, rows=3000)
    cluster.mlplat(["data", "register", "clicks", str(source), "--partition", "date=2026-11-01"], root)
    cluster.mlplat(["data", "complete", "clicks", "date=2026-11-01"], root)
    return root


def _registry(root: Path):
    from mlplat.registry import RegistryStore

    return RegistryStore(f"sqlite:///{root / 'registry.db'}")


def test_every_stage_runs_as_a_submitted_job(cluster, platform):
    root = platform
    registry = _registry(root)

    # CLI, no MLPLAT_* anywhere in the job: the driver adopts the cluster's settings.
    rc, out = cluster.cli_job(["jobs/build_features.py", "--config", "configs/features-example.yaml"])
    assert rc == 0, out
    assert _json_out(out)["feature_set"] == "clicks-features"
    assert registry.catalog_get("feature_set", "clicks-features", 1).payload["status"] == "ready"
    assert (root / "features" / "clicks-features" / "v1").is_dir()

    # SDK, with the root in the runtime env's env_vars (Ray merges it with the driver's ray.init).
    status, logs = cluster.sdk_job(["jobs/train.py", "--config", "configs/train-example.yaml", "--timeout", "400"],
                                   runtime_env_vars={"MLPLAT_ROOT": str(root)})
    assert status == "SUCCEEDED", logs[-3000:]
    run = _json_out(logs)
    assert run["state"] == "SUCCEEDED" and run["version"] == 1, run
    assert registry.get_version(MODEL, 1).state.value == "TRAINED"
    # a small model's weights go inline in its bundle.json (weights.packed_max_bytes): one file, one read
    assert (root / "models" / MODEL / "v1" / "bundle.json").is_file()
    assert registry.get_version(MODEL, 1).extra["weights"]["placement"] == "packed"
    assert not (root / "models" / MODEL / "v1" / "model.safetensors").exists()

    # CLI with --runtime-env-json env vars (the same root, as file:// URI).
    rc, out = cluster.cli_job(["jobs/validate.py", "--config", "configs/validate-clicks.yaml"],
                              runtime_env_vars={"MLPLAT_ROOT": f"file://{root}"})
    assert rc == 0, out
    assert _json_out(out)["state"] == "VALIDATED"
    assert registry.get_version(MODEL, 1).state.value == "VALIDATED"

    # SDK, no env: batch scoring registers an inference dataset.
    status, logs = cluster.sdk_job(["jobs/score.py", "--model", MODEL, "--dataset", "clicks", "--version", "1"])
    assert status == "SUCCEEDED", logs[-3000:]
    scored = _json_out(logs)
    assert scored["kind"] == "inference" and scored["rows"] == 3000, scored
    dv = registry.catalog_get("dataset", f"{MODEL}-scores", scored["version"]).payload
    assert dv["status"] == "ready" and dv["kind"] == "inference"

    # A manual retrain of a model without a retrain policy records a pending request.
    rc, out = cluster.cli_job(["jobs/retrain.py", "--model", MODEL])
    assert rc == 0, out
    assert _json_out(out)["request"]["status"] == "pending"



def test_rollout_and_drift_jobs_against_a_serving_app(cluster, platform):
    """deploy -> predictions over HTTP -> drift on their telemetry; jobs with no MLPLAT_* env
    (they never see the serving token: it is not published, and they do not need it)."""
    import csv
    import urllib.request

    root = platform
    registry = _registry(root)
    try:
        validated = registry.get_version(MODEL, 1).state.value == "VALIDATED"
    except Exception:
        validated = False
    if not validated:
        pytest.skip("needs the version that test_every_stage_runs_as_a_submitted_job validates")
    cluster.mlplat(["serve", "start"], root)

    rc, out = cluster.cli_job(["jobs/deploy.py", "deploy", "--model", MODEL, "--version", "1"])
    assert rc == 0, out
    assert _json_out(out)["state"] == "LIVE"
    assert registry.get_alias(MODEL, "production") == 1

    with (cluster.base / "clicks.csv").open() as handle:
        rows = [{k: row[k] for k in FEATURES} for row, _ in zip(csv.DictReader(handle), range(40), strict=False)]
    for row in rows:  # CSV strings: the ingress coerces them like any JSON client's values
        row.update(age=int(row["age"]), spend=float(row["spend"]), sessions=int(row["sessions"]),
                   score=float(row["score"]) if row["score"] else None)
    for i in range(0, len(rows), 10):
        request = urllib.request.Request(
            f"http://127.0.0.1:{cluster.serve_port}/v1/models/{MODEL}:predict", method="POST",
            data=json.dumps({"instances": rows[i:i + 10]}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {API_TOKEN}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert str(answer["model_version"]) == "1" and len(answer["predictions"]) == 10
    deadline = time.monotonic() + 60
    while not list((root / "telemetry" / MODEL).rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(1)  # the ingress flushes telemetry every serve.telemetry_flush_s

    status, logs = cluster.sdk_job(["jobs/drift.py", "--model", MODEL, "--window", "1h"])
    assert status == "SUCCEEDED", logs[-3000:]
    drift = _json_out(logs)
    assert drift["version"] == 1 and drift["rows"] == len(rows), drift

    # One version only: nothing to roll back to, said in one line.
    rc, out = cluster.cli_job(["jobs/deploy.py", "rollback", "--model", MODEL])
    assert rc == 1 and "error: cannot roll back" in out and "Traceback" not in out, out
    assert registry.get_alias(MODEL, "production") == 1


def test_a_job_whose_root_disagrees_with_the_cluster_is_refused(cluster, platform, tmp_path):
    status, logs = cluster.sdk_job(["jobs/build_features.py", "--config", "configs/features-example.yaml"],
                                   runtime_env_vars={"MLPLAT_ROOT": str(tmp_path / "elsewhere")})
    assert status == "FAILED", logs[-3000:]
    assert f"'file://{tmp_path / 'elsewhere'}'" in logs and f"'file://{platform}'" in logs, logs[-3000:]
    assert "MLPLAT_ROOT" in logs and "Traceback" not in logs
    assert not (tmp_path / "elsewhere" / "registry.db").exists()


@pytest.mark.ray
def test_platforms_on_one_cluster_agree_on_settings(ray_session, tmp_path):
    """In-process, on the session's Ray: the first platform of a namespace publishes, a later
    one without settings adopts (no secrets travel), one that disagrees is refused."""
    from ray.experimental import internal_kv

    from mlplat.api import SETTINGS_KV_NAMESPACE, Platform
    from mlplat.config import platform_config
    from mlplat.errors import ConfigError

    ns = f"t-settings-{uuid.uuid4().hex[:6]}"
    first = Platform(platform_config(env={}, root=str(tmp_path / "root"), namespace=ns, api_token="tok-secret",
                                     serve__port=9123))
    assert first.storage.uri == f"file://{tmp_path / 'root'}"  # joining a running Ray: settled before storage
    published = internal_kv._internal_kv_get(f"settings/{ns}", namespace=SETTINGS_KV_NAMESPACE)
    assert published is not None and b"tok-secret" not in published

    second = Platform(platform_config(env={}, namespace=ns))
    assert second.storage.uri == first.storage.uri and second.config.serve.port == 9123
    assert second.config.registry_url() == first.config.registry_url() and second.config.api_token is None

    third = Platform(platform_config(env={}, root=str(tmp_path / "other"), namespace=ns))
    with pytest.raises(ConfigError, match="MLPLAT_ROOT"):
        third.storage  # noqa: B018
    assert not (tmp_path / "other").exists()
