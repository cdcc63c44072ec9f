"""The CLI prints its own lines, not Ray's INFO logs; ``--verbose`` brings them back (issue 15).

A real ``mlplat features build`` in a subprocess (the console script), connected to the
session's Ray instance: it connects to Ray and runs a Ray Data pipeline in its driver, the two
main sources of INFO lines (ray.init's banner, Ray Data's execution plan and stats)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: A log record at INFO as Ray's handlers print it ("2026-11-30 10:00:00,123\tINFO worker.py:1 -- ...",
#: "INFO 2026-11-30 ... serve ...", "(pid=12) ... INFO ...").
INFO_LINE = re.compile(r"(^|[\s)])INFO\s")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "mlplat"  # the installed entry point, as a user runs it
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mlplat.cli import main; main()"]


@pytest.fixture(scope="module")
def cli_env(ray_session, tmp_path_factory):
    """A storage root holding a small `clicks` dataset, and the environment of a CLI that uses
    the session's Ray (registry in-process: no actor left behind)."""
    from mlplat.api import connect
    from mlplat.demo import _write_clicks_csv

    root = tmp_path_factory.mktemp("cli-output") / "root"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_DATA_", "MLPLAT_", "RAY_LOGGER_LEVEL", "RAY_LOG_TO_DRIVER"))}
    env.update({"MLPLAT_ROOT": str(root), "MLPLAT_REGISTRY_MODE": "local",
                "MLPLAT_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
                "MLPLAT_NAMESPACE": f"t-cli-{uuid.uuid4().hex[:6]}"})
    saved = {"MLPLAT_REGISTRY_MODE": os.environ.get("MLPLAT_REGISTRY_MODE")}
    os.environ.update({k: env[k] for k in saved})
    try:
        p = connect(root=str(root))
        csv_path = root.parent / "clicks.csv"
        _write_clicks_csv(csv_path, rows=400)
        p.register_dataset("clicks", str(csv_path), partition="date=2026-11-01")
        p.complete_partition("clicks", "date=2026-11-01")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return env


def _build(env: dict[str, str], *flags: str) -> tuple[str, list[str]]:
    proc = subprocess.run([*_cli(), *flags, "features", "build", "--config", str(CONFIGS / "features-example.yaml")],
                          capture_output=True, text=True, env=env, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return proc.stdout, [line for line in output.splitlines() if INFO_LINE.search(line)]


def test_default_output_has_no_ray_info_lines(cli_env):
    stdout, info = _build(cli_env)
    assert "clicks-features" in stdout  # the CLI's own line
    assert info == [], "\n".join(info[:20])
    assert "tqdm is not installed" not in stdout


def test_verbose_brings_ray_logs_back(cli_env):
    """(MLPLAT_VERBOSE=1 is the same switch: tests/unit/test_console.py.)"""
    _, info = _build(cli_env, "--verbose")
    assert info, "no Ray INFO line with --verbose"
