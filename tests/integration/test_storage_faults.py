"""F9: storage full, read-only, or the S3 server stopped mid-write (quality-bar.md).

Clean errors naming the path, nothing half-written visible, serving keeps answering from
memory, and work resumes when storage returns. Without root there is no tiny tmpfs: a full disk
is a process whose file-size limit (RLIMIT_FSIZE) the weights exceed (the write fails with
EFBIG, as on ENOSPC); read-only is a directory without write permission (as root, the writer
runs without CAP_DAC_OVERRIDE, since root ignores permissions otherwise); S3 is a SeaweedFS of this test's
own, killed while a large bundle is being uploaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from mlplat.config import PlatformConfig, PoolSettings, S3Settings, ServeSettings
from mlplat.errors import StorageError
from mlplat.models import BUNDLE_FILE, WEIGHTS_FILE, ModelSpec, build_model, load_bundle, save_bundle
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import TMP_PREFIX, open_root
from tests.integration.serving_support import RAW_ROW, register_servable
from tests.servers import start_seaweedfs

REPO = Path(__file__).resolve().parents[2]
RECOVER_WITHIN_S = 10.0


def _model(hidden: list[int]) -> tuple[ModelSpec, torch.nn.Module]:
    spec = ModelSpec(task="binary", hidden=hidden)
    return spec, build_model(spec, 32)


def _save(storage, name: str = "f9-model", hidden: tuple[int, ...] = (512, 512)):
    spec, model = _model(list(hidden))
    return save_bundle(storage, name, 1, model, spec=spec, input_columns=[f"x{i}" for i in range(32)])


def _drop_permission_override() -> None:
    """In the child, before exec: as root, give up CAP_DAC_OVERRIDE (Linux), so the directory's
    permissions bind it as they bind any user."""
    import ctypes

    pr_capbset_drop, cap_dac_override = 24, 1
    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_capbset_drop, cap_dac_override, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE) failed")


def _run_child(root: str, mode: str, *, as_root: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    preexec = _drop_permission_override if as_root else None
    out = subprocess.run([sys.executable, "-m", "tests.integration.storage_fault_child", root, mode], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120, preexec_fn=preexec)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _raw_names(directory: Path) -> list[str]:
    """Every name in a local directory tree, temporary ones included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


def _assert_nothing_visible(storage, name: str = "f9-model") -> None:
    assert not storage.exists("models", name, "v1", BUNDLE_FILE)
    assert not storage.exists("models", name, "v1", WEIGHTS_FILE)


def test_f9_full_disk_is_a_clean_error_and_leaves_nothing(tmp_path, record_property):
    root = tmp_path / "root"
    root.mkdir()
    result = _run_child(str(root), "full", as_root=False)
    assert result.get("type") == "StorageError", result
    assert "cannot write file://" in result["message"] and f"models/f9-model/v1/{WEIGHTS_FILE}" in result["message"]
    assert "File too large" in result["message"] or "No space" in result["message"], result
    storage = open_root(str(root))
    _assert_nothing_visible(storage)
    assert not [n for n in _raw_names(root) if Path(n).name.startswith(TMP_PREFIX)], _raw_names(root)
    # space again: the same write succeeds and verifies
    ref = _save(storage)
    assert load_bundle(storage, "f9-model", 1, expected_sha256=ref.sha256).meta["version"] == 1
    record_property("full", "StorageError '" + result["message"].split(": ", 1)[1] + "', nothing left; resumed")


def test_f9_read_only_directory_is_a_clean_error_and_leaves_nothing(tmp_path, record_property):
    root = tmp_path / "root"
    models = root / "models"
    models.mkdir(parents=True)
    models.chmod(0o555)
    try:
        result = _run_child(str(root), "readonly", as_root=os.geteuid() == 0)
    finally:
        models.chmod(0o755)  # writable again (and removable by pytest)
    assert result.get("type") == "StorageError", result
    assert "cannot write file://" in result["message"] and "models/f9-model/v1" in result["message"], result
    assert "ermission denied" in result["message"], result
    assert _raw_names(root) == ["models"]
    # writable again: work resumes
    storage = open_root(str(root))
    ref = _save(storage)
    assert load_bundle(storage, "f9-model", 1, expected_sha256=ref.sha256).meta["version"] == 1
    record_property("read-only", "StorageError 'Permission denied' naming the path, nothing left; resumed")


@pytest.mark.s3
def test_f9_s3_server_stopped_mid_write(tmp_path, record_property):
    workdir = tmp_path / "weed"
    server = start_seaweedfs(workdir)
    try:
        settings = S3Settings(endpoint_url=server.endpoint_url, access_key=server.access_key,
                              secret_key=server.secret_key)
        storage = open_root(f"s3://f9-bucket/{uuid.uuid4().hex[:8]}", settings)
        outcome: dict = {}

        def write_big() -> None:  # ~64 MB of weights: long enough to be cut
            try:
                outcome["ref"] = _save(storage, hidden=(4096, 4096))
            except Exception as exc:
                outcome["error"] = exc

        writer = threading.Thread(target=write_big)
        writer.start()
        time.sleep(0.3)
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        writer.join(timeout=120)
        gave_up_s = time.monotonic() - killed
        assert not writer.is_alive(), "the write did not give up within 120 s of the server stopping"
        error = outcome.get("error")
        assert isinstance(error, StorageError), outcome
        assert "s3://f9-bucket/" in str(error) and "models/f9-model/v1" in str(error)
        with pytest.raises(StorageError):  # reads while it is down: clean errors too
            storage.exists("models", "f9-model", "v1", BUNDLE_FILE)
    finally:
        server.stop()
    # storage returns (same data directory; SeaweedFS picks new ports)
    server = start_seaweedfs(workdir)
    try:
        settings = S3Settings(endpoint_url=server.endpoint_url, access_key=server.access_key,
                              secret_key=server.secret_key)
        storage = open_root(storage.uri, settings)
        _assert_nothing_visible(storage)
        ref = _save(storage)
        assert load_bundle(storage, "f9-model", 1, expected_sha256=ref.sha256).meta["version"] == 1
    finally:
        server.stop()
    record_property("S3 killed mid-upload", f"StorageError {gave_up_s:.1f} s after the kill, nothing visible; "
                                            "resumed on restart")


# -- serving while storage is gone --------------------------------------------------------------

@pytest.fixture(scope="module")
def storage_app(ray_session, serve_http_port, tmp_path_factory):
    from ray import serve

    base = tmp_path_factory.mktemp("f9-serving")
    root = base / "root"
    token = "f9-" + uuid.uuid4().hex
    config = PlatformConfig(root=str(root), namespace="mlplat-test", api_token=token,
                            serve=ServeSettings(port=serve_http_port, app_name="mlplat-f9", telemetry=False,
                                                pool=PoolSettings(min_replicas=1, max_replicas=1)))
    actor_name = f"registry-f9-{uuid.uuid4().hex[:6]}"
    # the registry database lives outside the root: only the model storage goes away
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(base / "registry.db"))
    storage = open_root(config.root)
    register_servable(registry, storage, "warm")
    register_servable(registry, storage, "inline", placement="ingress")
    register_servable(registry, storage, "cold")
    url = start_serving(config, registry_actor=actor_name)
    client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})
    for name in ("warm", "inline"):
        client.post(f"/v1/models/{name}:predict", json={"instances": [RAW_ROW]}).raise_for_status()
    yield {"client": client, "root": root}
    client.close()
    serve.delete(config.serve.app_name)
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=config.namespace))


def _predict(client, name: str) -> httpx.Response:
    return client.post(f"/v1/models/{name}:predict", json={"instances": [RAW_ROW]})


def test_f9_serving_answers_from_memory_while_storage_is_gone(storage_app, record_property):
    client, root = storage_app["client"], storage_app["root"]
    away = root.with_name(root.name + "-away")
    os.rename(root, away)  # the whole storage root is gone
    try:
        for _ in range(5):
            for name in ("warm", "inline"):  # loaded before: answered from memory
                response = _predict(client, name)
                assert response.status_code == 200, response.text
                assert np.isfinite(response.json()["predictions"][0])
        cold = _predict(client, "cold")  # never loaded: a clean error, not a 500
        assert cold.status_code == 503, cold.text
        body = cold.json()
        assert set(body) == {"error"} and "cold" in body["error"]
        assert cold.headers.get("retry-after") is not None
        assert client.get("/v2/health/live").status_code == 200
    finally:
        os.rename(away, root)
    # storage is back: the model that could not load now loads
    back = time.monotonic()
    while (status := _predict(client, "cold").status_code) != 200:
        assert time.monotonic() < back + RECOVER_WITHIN_S, f"cold still {status} {RECOVER_WITHIN_S} s after storage returned"
        time.sleep(0.5)
    record_property("root gone while serving", f"loaded models 10/10 200, unloaded one 503 + Retry-After; "
                                               f"it loads {time.monotonic() - back:.1f} s after storage returns")
