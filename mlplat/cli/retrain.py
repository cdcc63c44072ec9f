"""`mlplat retrain approve|dismiss|list`: the retrain requests of ``manual`` models
(docs/monitoring.md, "Retraining")."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NoReturn

import click

from mlplat.cli._format import json_option, table
from mlplat.config import acting_user
from mlplat.records import RunState

__all__ = ["group"]


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@click.group(name="retrain")
def group() -> None:
    """Retrain requests: approve (starts the retrain), dismiss, list."""


@group.command(name="approve")
@click.argument("name")
@click.option("--request", "request_id", type=int, default=None, help="The request id (default: the one pending).")
@click.option("--note", default="", help="Why (recorded with the decision).")
@click.option("--wait/--no-wait", default=False, help="Wait for the run, then validate its version.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait at most.")
@json_option
@click.pass_obj
def approve(lazy: Any, name: str, request_id: int | None, note: str, wait: bool, timeout: float | None,
            as_json: bool) -> None:
    """Approve NAME's pending retrain request and start the retrain (latest data, same recipe)."""
    from mlplat.lifecycle.retrain import approve_and_start, driver_hooks

    p = lazy.get()
    if not wait and not p.config.ray_address:
        click.echo("note: no Ray address (embedded Ray lives only as long as this command): waiting for the run; "
                   "set MLPLAT_RAY_ADDRESS to queue it and return at once", err=True)
        wait = True
    build, wake = driver_hooks(p.ensure_ray, p.config)
    req, run = approve_and_start(p.registry, p.storage, name, request_id=request_id, by=acting_user(), note=note,
                                 build_features=build, wake=wake)
    result: dict[str, Any] = {"request": req.model_dump(mode="json"), "run": run.model_dump(mode="json")}
    if wait:
        from mlplat.lifecycle.retrain_finish import finish_retrain
        from mlplat.training.queue import wait_for_run

        try:
            run = wait_for_run(p.registry, run.run_id, timeout_s=timeout)
        except TimeoutError:
            _still_running(p, name, req.id, run.run_id, run.version, timeout, result, as_json)
        result["run"] = run.model_dump(mode="json")
        result["outcome"] = finish_retrain(p.registry, p.storage, run.run_id)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(f"{name}: request {req.id} approved; run {run.run_id} (v{run.version}) {run.state.value}")
        if result.get("outcome"):
            click.echo(f"  {result['outcome']}")
    if run.state in (RunState.FAILED, RunState.CANCELLED):
        sys.exit(1)


def _still_running(p: Any, name: str, request_id: int, run_id: str, version: int | None, timeout: float | None,
                   result: dict[str, Any], as_json: bool) -> NoReturn:
    """The wait ran out after the approval: say so in one line (the request is approved and the
    run goes on; nothing was cancelled) and exit 1."""
    state = p.registry.get_run(run_id).state.value
    message = (f"{name}: request {request_id} approved; run {run_id} (v{version}) is still {state} after "
               f"{timeout or 0:g} s and goes on (nothing was cancelled): `mlplat runs wait {run_id}` to follow it; "
               "the retrain controller validates its version when it ends")
    if as_json:
        click.echo(json.dumps({**result, "waited": "timed out", "state": state, "message": message}, indent=2,
                              default=str))
    else:
        click.echo(message, err=True)
    sys.exit(1)


@group.command(name="dismiss")
@click.argument("name")
@click.option("--request", "request_id", type=int, default=None, help="The request id (default: the one pending).")
@click.option("--note", default="", help="Why (recorded with the decision).")
@json_option
@click.pass_obj
def dismiss(lazy: Any, name: str, request_id: int | None, note: str, as_json: bool) -> None:
    """Dismiss NAME's pending retrain request: nothing is trained."""
    from mlplat.monitoring.retrain_requests import dismiss as dismiss_request

    req = dismiss_request(lazy.get().registry, name, request_id=request_id, by=acting_user(), note=note)
    if as_json:
        click.echo(json.dumps(req.model_dump(mode="json"), indent=2, default=str))
    else:
        click.echo(f"{name}: request {req.id} dismissed by {req.decided_by}" + (f" ({note})" if note else ""))


@group.command(name="list")
@click.argument("name", required=False)
@click.option("--pending", "only_pending", is_flag=True, help="Only requests waiting for a decision.")
@json_option
@click.pass_obj
def list_requests(lazy: Any, name: str | None, only_pending: bool, as_json: bool) -> None:
    """Retrain requests (of NAME, or every model), oldest first: pending and decided."""
    from mlplat.monitoring.retrain_requests import requests

    items = requests(lazy.get().registry, name, status="pending" if only_pending else None)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in items], indent=2, default=str))
        return
    if not items:
        click.echo("no retrain requests" + (" pending" if only_pending else ""))
        return
    rows = [(r.model, r.id, r.status, r.trigger, _when(r.requested_at), r.requested_by, r.decided_by or "",
             r.run_id or "", r.note or r.error or r.reason) for r in items]
    click.echo(table(["MODEL", "ID", "STATUS", "TRIGGER", "REQUESTED", "BY", "DECIDED BY", "RUN", "NOTE / REASON"], rows))
