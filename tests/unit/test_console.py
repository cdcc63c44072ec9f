"""mlplat.console without Ray: verbosity, epoch lines, following a run's progress, and what
quiet_ray sets (in a fresh interpreter, so this process's environment and loggers stay as they are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlplat.console import EpochBar, EpochLines, follow_run, format_epoch, verbose_requested
from mlplat.records import Run, RunState


def _run(state: str, history: list[dict] | None = None, epochs: int = 3, **extra) -> Run:
    progress = {"epoch": history[-1]["epoch"], "epochs": epochs, "history": history} if history else {}
    return Run(run_id="r-1", kind="train", model="m", version=1, state=RunState(state), progress=progress,
               created_at=0.0, updated_at=0.0, **extra)


def _epoch(i: int, loss: float) -> dict:
    return {"epoch": i, "train_loss": loss, "train_rows": 100, "epoch_s": 0.5, "val_loss": loss + 0.1}


def test_verbose_flag_and_env():
    assert verbose_requested(True, {}) is True
    assert verbose_requested(False, {"MLPLAT_VERBOSE": "1"}) is True
    assert verbose_requested(False, {"MLPLAT_VERBOSE": "yes"}) is True
    assert verbose_requested(False, {"MLPLAT_VERBOSE": ""}) is False  # empty counts as unset
    assert verbose_requested(False, {"MLPLAT_VERBOSE": "0"}) is False


def test_format_epoch_is_one_based_with_losses_rows_and_seconds():
    line = format_epoch(_epoch(0, 0.5), 5)
    assert line == "epoch 1/5  train_loss 0.5000  val_loss 0.6000  (100 rows, 0.5 s)"
    assert format_epoch({"epoch": 4, "val_accuracy": 0.91234}, None) == "epoch 5  val_accuracy 0.9123"
    assert "train_loss nan" in format_epoch({"epoch": 1, "train_loss": "nan"}, 2)  # strict-JSON NaN from the record


def test_follow_run_tells_each_state_and_epoch_once():
    states = iter([
        _run("QUEUED", queue_position=2),
        _run("RUNNING"),
        _run("RUNNING", [_epoch(0, 0.7)]),
        _run("RUNNING", [_epoch(0, 0.7)]),  # same progress again: no new line
        _run("RUNNING", [_epoch(0, 0.7), _epoch(1, 0.6)]),
        _run("SUCCEEDED", [_epoch(0, 0.7), _epoch(1, 0.6), _epoch(2, 0.5)], metrics={"val_loss": 0.6}),
    ])
    lines: list[str] = []
    run = follow_run(lambda run_id: next(states), "r-1", EpochLines(lines.append), poll_s=0)
    assert run.state is RunState.SUCCEEDED and run.metrics == {"val_loss": 0.6}
    assert lines == [
        "  run r-1 QUEUED (#2 in queue)",
        "  run r-1 RUNNING",
        "  epoch 1/3  train_loss 0.7000  val_loss 0.8000  (100 rows, 0.5 s)",
        "  epoch 2/3  train_loss 0.6000  val_loss 0.7000  (100 rows, 0.5 s)",
        "  epoch 3/3  train_loss 0.5000  val_loss 0.6000  (100 rows, 0.5 s)",
    ]


def test_follow_run_after_a_resume_shows_only_new_epochs():
    states = iter([
        _run("RUNNING", [_epoch(0, 0.7), _epoch(1, 0.6)]),
        _run("RUNNING", [_epoch(0, 0.7)]),  # restored from the epoch-0 checkpoint
        _run("FAILED", [_epoch(0, 0.7), _epoch(1, 0.65)], error="boom"),
    ])
    lines: list[str] = []
    run = follow_run(lambda run_id: next(states), "r-1", EpochLines(lines.append), poll_s=0)
    assert run.state is RunState.FAILED
    assert [line.split()[1] for line in lines if "epoch" in line] == ["1/3", "2/3"]


def test_follow_run_times_out_and_says_where_the_run_is():
    with pytest.raises(TimeoutError, match="r-1 is still RUNNING after 0.05 s"):
        follow_run(lambda run_id: _run("RUNNING"), "r-1", EpochLines(lambda line: None), timeout_s=0.05, poll_s=0.01)


def test_epoch_bar_counts_epochs(tmp_path):
    with (tmp_path / "bar.txt").open("w") as out:
        bar = EpochBar(file=out)
        states = iter([_run("RUNNING", [_epoch(0, 0.7)]), _run("SUCCEEDED", [_epoch(0, 0.7), _epoch(1, 0.6)])])
        follow_run(lambda run_id: next(states), "r-1", bar, poll_s=0)
    text = (tmp_path / "bar.txt").read_text()
    assert "2/3" in text and "train_loss=0.6000" in text


_PROBE = """
import json, logging, os, sys
from mlplat.console import quiet_ray, ray_init_options
quiet_ray(sys.argv[1] == "verbose")
serve = logging.getLogger("ray.serve")
serve.setLevel(logging.INFO)  # as Serve does when it is imported, after quiet_ray
seen = []
handler = logging.Handler()
handler.emit = lambda record: seen.append(record.levelname)
serve.addHandler(handler)
serve.info("Started Serve")
serve.warning("a warning")
print(json.dumps({"options": ray_init_options(), "ray_imported": "ray" in sys.modules, "serve": seen,
                  "env": {k: os.environ.get(k) for k in ("RAY_DATA_LOG_LEVEL", "RAY_DATA_DISABLE_PROGRESS_BARS")}}))
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_quiet_ray_settings_in_a_fresh_process(mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_DATA_", "MLPLAT_VERBOSE"))}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, timeout=60,
                         check=True).stdout
    probe = json.loads(out)
    assert probe["ray_imported"] is False  # cheap: a CLI call that never needs Ray never imports it
    if mode == "quiet":
        assert probe["options"] == {"logging_level": 30, "log_to_driver": False}
        assert probe["env"] == {"RAY_DATA_LOG_LEVEL": "WARNING", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        assert probe["serve"] == ["WARNING"]  # Serve's INFO lines dropped even though it reset its level
    else:
        assert probe["options"] == {} and probe["env"] == {"RAY_DATA_LOG_LEVEL": None, "RAY_DATA_DISABLE_PROGRESS_BARS": None}
        assert probe["serve"] == ["INFO", "WARNING"]
