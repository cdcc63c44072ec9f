"""The CLI prints its own lines, not Ray's INFO logs; ``--verbose`` brings them back; a training
run waited on prints a line per epoch (issue 15).

Real ``mlplat`` commands in a subprocess (the console script), connected to the session's Ray
instance, in a namespace of their own: ``features build`` (ray.init's banner and Ray Data's
execution logs are the main sources of INFO lines) and ``train --wait`` (the training queue,
Ray Train in actors, the run's reported progress)."""

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
    the session's Ray in a namespace of its own (its actors are stopped afterwards)."""
    import ray

    from mlplat.api import connect
    from mlplat.demo import _write_clicks_csv
    from mlplat.registry import REGISTRY_ACTOR_NAME
    from mlplat.training.actors import SCHEDULER_NAME

    root = tmp_path_factory.mktemp("cli-output") / "root"
    namespace = f"t-cli-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_DATA_", "MLPLAT_", "RAY_LOGGER_LEVEL", "RAY_LOG_TO_DRIVER"))}
    env.update({"MLPLAT_ROOT": str(root), "MLPLAT_NAMESPACE": namespace,
                "MLPLAT_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address})
    p = connect(root=str(root), namespace=namespace)
    csv_path = root.parent / "clicks.csv"
    _write_clicks_csv(csv_path, rows=600)
    p.register_dataset("clicks", str(csv_path), partition="date=2026-11-01")
    p.complete_partition("clicks", "date=2026-11-01")
    yield env
    for name in (SCHEDULER_NAME, REGISTRY_ACTOR_NAME):
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except ValueError:
            pass


def _cli_run(env: dict[str, str], *args: str, timeout_s: float = 240) -> tuple[str, list[str]]:
    proc = subprocess.run([*_cli(), *args], capture_output=True, text=True, env=env, timeout=timeout_s)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return proc.stdout, [line for line in output.splitlines() if INFO_LINE.search(line)]


def _build(env: dict[str, str], *flags: str) -> tuple[str, list[str]]:
    return _cli_run(env, *flags, "features", "build", "--config", str(CONFIGS / "features-example.yaml"))


def test_default_output_has_no_ray_info_lines(cli_env):
    stdout, info = _build(cli_env)
    assert "clicks-features" in stdout  # the CLI's own line
    assert info == [], "\n".join(info[:20])
    assert "tqdm is not installed" not in stdout


def test_verbose_brings_ray_logs_back(cli_env):
    """(MLPLAT_VERBOSE=1 is the same switch: tests/unit/test_console.py.)"""
    _, info = _build(cli_env, "--verbose")
    assert info, "no Ray INFO line with --verbose"


def test_train_wait_prints_each_epoch_and_no_ray_info(cli_env):
    _build(cli_env)  # the feature set the config trains on (this test runs alone too)
    stdout, info = _cli_run(cli_env, "train", "--config", str(CONFIGS / "train-example.yaml"), "--wait",
                            "--timeout", "400", timeout_s=480)
    # the progress lines ("  epoch 2/5  train_loss 0.64  val_loss ..."), not the final summary's "epoch 5/5 (...):"
    epochs = [int(n) for n in re.findall(r"^\s*epoch (\d+)/5  \w+ ", stdout, re.MULTILINE)]
    assert len(epochs) >= 3 and epochs == list(range(1, len(epochs) + 1)), stdout  # early stopping: patience 2
    assert "state=SUCCEEDED" in stdout, stdout
    assert info == [], "\n".join(info[:20])
