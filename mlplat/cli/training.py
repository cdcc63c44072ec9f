"""`mlplat train|publish|tune` and `mlplat runs list|show|cancel|wait` (docs/training.md)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from mlplat.records import Run, RunState

__all__ = ["register", "train", "publish", "tune", "runs"]


def _embedded(p: Any) -> bool:
    return not p.config.ray_address


def _must_wait(p: Any, wait: bool) -> bool:
    if not wait and _embedded(p):
        click.echo("note: no Ray address (embedded Ray lives only as long as this command): waiting for the run; "
                   "set MLPLAT_RAY_ADDRESS to submit and return at once", err=True)
        return True
    return wait


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _follow(p: Any, run: Run, wait: bool, timeout: float | None, as_json: bool) -> Run:
    """The run as it is now, or (``wait``) at its end; while waiting, a line per state change
    and per epoch from its reported progress (none with ``--json``: stdout stays one document)."""
    from mlplat.console import EpochLines, follow_run

    if not wait:
        return run
    try:
        if as_json:
            from mlplat.training.queue import wait_for_run

            wait_for_run(p.registry, run.run_id, timeout_s=timeout)
        else:
            follow_run(p.run_status, run.run_id, EpochLines(click.echo), timeout_s=timeout)
    except TimeoutError as exc:
        after = ("the embedded Ray stops with this command, and the run with it" if _embedded(p) else
                 f"it goes on (nothing was cancelled): `mlplat runs wait {run.run_id}` to follow it")
        click.echo(f"error: {exc}; {after}", err=True)
        sys.exit(1)
    return p.run_status(run.run_id)


def _emit(run: Run, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(run.model_dump(mode="json"), indent=2, default=str))
        return
    line = f"run {run.run_id}  {run.kind}  model={run.model}  version={run.version or '-'}  state={run.state.value}"
    if run.queue_position:
        line += f"  queue_position={run.queue_position}"
    click.echo(line)
    progress = run.progress
    last = progress.get("last")
    if last:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float))
        epoch = progress.get("epoch")
        shown = epoch + 1 if isinstance(epoch, int) else "?"  # 1-based, like the progress lines
        click.echo(f"  epoch {shown}/{progress.get('epochs')} ({progress.get('status')}): {metrics}")
    for resume in progress.get("resumes") or []:
        click.echo(f"  resumed from epoch {resume.get('from_epoch')} -> {resume.get('next_epoch')}")
    if run.metrics:
        click.echo("  metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in run.metrics.items()))
    if run.error:
        click.echo(f"  error: {run.error}")
    result = run.result or {}
    if result.get("bundle"):
        click.echo(f"  bundle: {result['bundle']['path']} (sha256 {result['bundle']['sha256'][:12]}...)")


def _exit_for(run: Run) -> None:
    if run.state in (RunState.FAILED, RunState.CANCELLED):
        sys.exit(1)


@click.command(name="train")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="configs/train-<x>.yaml")
@click.option("--wait/--no-wait", default=False, help="Block until the run ends (exit 1 if it fails).")
@click.option("--timeout", type=float, default=None, help="Seconds to wait at most.")
@click.option("--priority", type=int, default=0)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def train(lazy: Any, config: str, wait: bool, timeout: float | None, priority: int, as_json: bool) -> None:
    """Queue a training run from a YAML config; prints its run id."""
    p = lazy.get()
    wait = _must_wait(p, wait)
    run = _follow(p, p.train(config, priority=priority), wait, timeout, as_json)
    _emit(run, as_json)
    _exit_for(run)


@click.command(name="tune")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False))
@click.option("--wait/--no-wait", default=False)
@click.option("--timeout", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tune(lazy: Any, config: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Queue a Ray Tune sweep over the config's `search` space (best trial -> the version)."""
    p = lazy.get()
    wait = _must_wait(p, wait)
    run = _follow(p, p.tune(config), wait, timeout, as_json)
    _emit(run, as_json)
    _exit_for(run)


@click.command(name="publish")
@click.argument("model")
@click.option("--code-version", required=True, help="The code version (git SHA) to train.")
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="Training config; default: the recipe of the model's latest version.")
@click.option("--wait/--no-wait", default=False)
@click.option("--timeout", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def publish(lazy: Any, model: str, code_version: str, config: str | None, wait: bool, timeout: float | None,
            as_json: bool) -> None:
    """Register a new version of MODEL at --code-version and queue its training (the CI hook)."""
    p = lazy.get()
    wait = _must_wait(p, wait)
    run = _follow(p, p.publish(model, code_version, config=config), wait, timeout, as_json)
    _emit(run, as_json)
    _exit_for(run)


@click.group(name="runs")
def runs() -> None:
    """Training runs: queue position, progress, outcome, cancel."""


@runs.command(name="list")
@click.option("--state", default=None, help="QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED")
@click.option("--model", default=None)
@click.option("--limit", type=int, default=50)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_list(lazy: Any, state: str | None, model: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    items = lazy.get().runs(state=state, model=model, limit=limit)
    if as_json:
        click.echo(json.dumps([run.model_dump(mode="json") for run in items], indent=2, default=str))
        return
    if not items:
        click.echo("no runs")
    for run in items:
        where = f"#{run.queue_position} in queue" if run.queue_position else ""
        epoch = run.progress.get("epoch")
        if run.state == RunState.RUNNING and epoch is not None:
            where = f"epoch {epoch}"
        metric = run.metrics.get("metric")
        if run.state == RunState.SUCCEEDED and metric in run.metrics:
            where = f"{metric}={_fmt(run.metrics[metric])}"
        click.echo(f"{run.run_id:<44} {run.kind:<6} {run.model:<20} v{run.version or '-':<4} "
                   f"{run.state.value:<10} {where}")


@runs.command(name="show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_show(lazy: Any, run_id: str, as_json: bool) -> None:
    """One run: queue position or progress (epoch, metrics), and the outcome."""
    _emit(lazy.get().run_status(run_id), as_json)


@runs.command(name="cancel")
@click.argument("run_id")
@click.pass_obj
def runs_cancel(lazy: Any, run_id: str) -> None:
    """Cancel a queued run, or stop a running one (its version ends FAILED)."""
    _emit(lazy.get().cancel_run(run_id), False)


@runs.command(name="wait")
@click.argument("run_id")
@click.option("--timeout", type=float, default=None)
@click.pass_obj
def runs_wait(lazy: Any, run_id: str, timeout: float | None) -> None:
    """Block until a run ends, a line per epoch meanwhile; exit 1 if it failed or was cancelled."""
    p = lazy.get()
    run = _follow(p, p.run_status(run_id), True, timeout, False)
    _emit(run, False)
    _exit_for(run)


def register(cli: click.Group) -> None:
    for command in (train, publish, tune, runs):
        cli.add_command(command)
