"""Secrets never reach logs, error messages or command output: a Serve app on an S3 root
(SeaweedFS keys) with an API and an admin token answers right, wrong and missing tokens, bad
bodies and unknown models; the CLI prints and refuses configs holding them; then every file
under the Ray session's log directory and everything captured is searched for each secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from mlplat.config import PlatformConfig, PoolSettings, S3Settings, ServeSettings
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

pytestmark = [pytest.mark.ray, pytest.mark.s3]

API_TOKEN = "api-" + uuid.uuid4().hex
ADMIN_TOKEN = "adm-" + uuid.uuid4().hex
#: What a client sent as its token: another system's secret, maybe; never logged either.
WRONG_TOKEN = "wrong-" + uuid.uuid4().hex


def _session_logs_dir() -> Path:
    import ray

    return Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"


def _files_holding(folder: Path, secrets: dict[str, str]) -> list[str]:
    """``file: secret name`` for each log file that contains a secret's value."""
    needles = {name: value.encode() for name, value in secrets.items()}
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except OSError:  # a socket or a file removed meanwhile
            continue
        hits += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
    return hits


@pytest.fixture(scope="module")
def secrets(s3_settings) -> dict[str, str]:
    return {"api_token": API_TOKEN, "admin_token": ADMIN_TOKEN, "wrong token": WRONG_TOKEN,
            "s3 secret key": s3_settings.secret_key.get_secret_value()}


@pytest.fixture(scope="module")
def served(ray_session, serve_http_port, s3_settings, tmp_path_factory):
    from ray import serve

    config = PlatformConfig(
        root=f"s3://mlplat-test/secrets-{uuid.uuid4().hex[:8]}", s3=s3_settings, namespace="mlplat-test",
        api_token=API_TOKEN, admin_token=ADMIN_TOKEN,
        serve=ServeSettings(port=serve_http_port, telemetry_flush_s=3600,
                            pool=PoolSettings(memory_budget_mb=8, model_memory_mb=4, max_replicas=1)),
    )
    actor_name = f"registry-secrets-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name,
                                     url=str(tmp_path_factory.mktemp("secrets-registry") / "registry.db"))
    register_servable(registry, open_root(config.root, config.s3), "churn", task="binary", placement="ingress")
    url = start_serving(config, registry_actor=actor_name)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield {"client": client, "config": config}
    serve.delete(config.serve.app_name)
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


def test_serving_answers_and_logs_hold_no_secret(served, secrets, capfd):
    client = served["client"]
    good, wrong = {"Authorization": f"Bearer {API_TOKEN}"}, {"Authorization": f"Bearer {WRONG_TOKEN}"}
    answers = [
        client.post("/v1/models/churn:predict", json={"instances": [RAW_ROW]}, headers=good),
        client.post("/v1/models/churn:predict", json={"instances": [RAW_ROW]}, headers=wrong),
        client.post("/v1/models/churn:predict", json={"instances": [RAW_ROW]}),
        client.get("/openapi.json", headers=wrong),
        client.get("/admin/deployments", headers=good),  # the API token is not the admin token
        client.get("/admin/deployments", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        client.post("/admin/models/churn/rollback", headers=wrong),
        client.post("/v1/models/churn:predict", content=b'{"instances": [', headers=good),
        client.post("/v2/models/nope/infer", json={"inputs": []}, headers=good),
        client.post("/v1/models/nope:predict", json={"instances": [RAW_ROW]}, headers=good),
    ]
    assert [a.status_code for a in answers] == [200, 401, 401, 401, 401, 200, 401, 400, 404, 404], \
        [(a.status_code, a.text) for a in answers]
    for answer in answers:
        assert not any(value in answer.text or value in str(answer.headers) for value in secrets.values())
        if answer.status_code >= 400:
            assert set(answer.json()) <= {"error", "field"}
    captured = capfd.readouterr()
    assert not any(value in captured.out + captured.err for value in secrets.values())
    logs = _session_logs_dir()
    # the search reads Serve's own logs (a control: the deployment's name is in them)
    assert any("/serve/" in hit for hit in _files_holding(logs, {"control": "ingress"}))
    assert _files_holding(logs, secrets) == []


def test_the_cli_prints_and_refuses_configs_without_echoing_secrets(secrets, s3_settings, tmp_path):
    settings = {"root": f"s3://mlplat-test/cli-{uuid.uuid4().hex[:8]}", "api_token": API_TOKEN,
                "admin_token": ADMIN_TOKEN,
                "s3": {"endpoint_url": s3_settings.endpoint_url, "access_key": s3_settings.access_key.get_secret_value(),
                       "secret_key": s3_settings.secret_key.get_secret_value()}}
    good, bad = tmp_path / "platform.yaml", tmp_path / "bad.yaml"
    good.write_text(json.dumps(settings))  # JSON is YAML
    bad.write_text(json.dumps({**settings, "api_token": {"value": API_TOKEN}, "admin_token": [ADMIN_TOKEN],
                               "s3": {**settings["s3"], "secret_key": {"k": settings["s3"]["secret_key"]}}}))
    mlplat = str(Path(sys.executable).parent / "mlplat")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPLAT_", "AWS_", "RAY_ADDRESS"))}
    shown = subprocess.run([mlplat, "--config", str(good), "info"], capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["api_token"] == "**********"
    refused = subprocess.run([mlplat, "--config", str(bad), "info"], capture_output=True, text=True, timeout=120,
                             env=env)
    assert refused.returncode != 0 and "api_token" in refused.stdout + refused.stderr
    for run in (shown, refused):
        assert "Traceback" not in run.stderr
        assert not [name for name, value in secrets.items() if value in run.stdout + run.stderr]


def test_a_storage_error_does_not_show_the_keys(s3_settings, secrets):
    from mlplat.errors import MlplatError

    wrong = S3Settings(endpoint_url=s3_settings.endpoint_url, access_key="nobody",
                       secret_key=secrets["s3 secret key"][::-1] + "x")
    with pytest.raises(MlplatError) as info:
        open_root(f"s3://mlplat-test/denied-{uuid.uuid4().hex[:6]}", wrong).write_bytes(b"x", "probe")
    assert secrets["s3 secret key"][::-1] + "x" not in str(info.value)
    assert secrets["s3 secret key"] not in str(info.value)
