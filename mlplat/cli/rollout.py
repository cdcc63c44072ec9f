"""`mlplat deploy`, `mlplat rollback`, `mlplat deployments`: safe rollout from the shell.

``rollback`` takes the fast path when an admin token is set (``MLPLAT_ADMIN_TOKEN``): one HTTP
call to the serving app's ``/admin`` route, which writes through the registry -- no Ray driver,
so the command finishes in well under a second. Without a token (or when the app does not
answer) it goes through the registry actor like every other command.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from mlplat.cli._format import json_option, table
from mlplat.config import acting_user
from mlplat.errors import MlplatError

__all__ = ["register", "admin_rollback"]


class AdminCallError(MlplatError):
    """The serving app refused an admin call (its message says why)."""




class AppUnreachable(Exception):
    """Nothing listens at the serving app's address: the rollback was certainly not applied."""


def admin_rollback(base_url: str, token: str, name: str, *, region: str | None = None,
                   timeout_s: float = 10.0) -> dict[str, Any]:
    """POST /admin/models/NAME/rollback; returns the JSON answer. Raises AppUnreachable when the
    connection is refused (nothing happened: another path may be tried), AdminCallError on a
    refusal, and AdminCallError saying the outcome is unknown on a timeout or a broken answer
    (never retried elsewhere: a second rollback would undo the first)."""
    query = "?" + urllib.parse.urlencode({"region": region}) if region else ""
    user = acting_user().encode("ascii", "replace").decode()[:128]
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/admin/models/{urllib.parse.quote(name, safe='')}/rollback{query}", method="POST",
        data=b"", headers={"Authorization": f"Bearer {token}", "x-mlplat-user": user})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except Exception:
            message = exc.reason
        raise AdminCallError(f"rollback refused ({exc.code}): {message}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError | socket.gaierror):
            raise AppUnreachable(str(exc.reason)) from None
        raise AdminCallError(_unknown(name, exc.reason)) from None
    except (TimeoutError, OSError) as exc:
        raise AdminCallError(_unknown(name, exc)) from None
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise AdminCallError(_unknown(name, f"the answer is not JSON: {raw[:80]!r}")) from None
    return answer


def _unknown(name: str, why: object) -> str:
    return (f"the rollback of {name} may or may not have been applied ({why}); check with "
            f"`mlplat deployments {name}` before trying again")


def _base_url(config: Any) -> str:
    import os

    explicit = os.environ.get("MLPLAT_SERVE_URL", "").strip()
    if explicit:
        return explicit
    host = "127.0.0.1" if config.serve.host in ("0.0.0.0", "") else config.serve.host
    return f"http://{host}:{config.serve.port}{config.serve.route_prefix.rstrip('/')}"


@click.command()
@click.argument("name")
@click.argument("version", type=int, required=False)
@click.option("--canary", "canary_percent", type=float, default=None,
              help="Send this percent (0-100) of the model's traffic to the version first; 100 promotes a running canary.")
@click.option("--region", default=None, help="Deploy to one regional cell only (production.<region>).")
@click.option("--force", is_flag=True, help="Redeploy an ARCHIVED/PRODUCTION version (recorded as an event).")
@json_option
@click.pass_obj
def deploy(lazy: Any, name: str, version: int | None, canary_percent: float | None, region: str | None, force: bool,
           as_json: bool) -> None:
    """Pre-warm VERSION (default: the latest VALIDATED) on every replica, then move traffic."""
    d = lazy.get().deploy(name, version, canary_percent=canary_percent, region=region, force=force)
    if as_json:
        click.echo(json.dumps(d.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        split = f", {d.canary_percent:g}% canary" if d.state.value == "CANARY" else ""
        click.echo(f"{name} v{d.version}: {d.state.value}{split} ({d.scope}; deployment {d.id})")
        if d.reason:
            click.echo(f"  reason: {d.reason}")
    if d.state.value == "FAILED":
        raise SystemExit(1)


@click.command()
@click.argument("name")
@click.option("--region", default=None, help="Roll back one regional cell only.")
@click.option("--via-ray", is_flag=True, help="Go through the registry actor even when an admin token is set.")
@json_option
@click.pass_obj
def rollback(lazy: Any, name: str, region: str | None, via_ray: bool, as_json: bool) -> None:
    """End a running canary, else put the previous version back in production."""
    platform = lazy.get()
    config = platform.config
    answer: dict[str, Any] | None = None
    if config.admin_token is not None and not via_ray:
        try:
            answer = admin_rollback(_base_url(config), config.admin_token.get_secret_value(), name, region=region)
        except AppUnreachable as exc:
            click.echo(f"note: no serving app at {_base_url(config)} ({exc}); rolling back through the registry", err=True)
    if answer is None:
        v = platform.rollback(name, region=region)
        answer = {"name": name, "region": region, "production": v.version, "state": v.state.value}
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
    else:
        where = f" in region {region}" if region else ""
        click.echo(f"{name}{where}: v{answer['production']} serves now")


@click.command()
@click.argument("name", required=False)
@json_option
@click.pass_obj
def deployments(lazy: Any, name: str | None, as_json: bool) -> None:
    """Per model: production (per region), the canary split, and recent deployments."""
    views = lazy.get().deployments(name)
    if as_json:
        click.echo(json.dumps(views, indent=2, sort_keys=True))
        return
    for view in views:
        regions = ", ".join(f"{r}=v{v}" for r, v in sorted(view["regions"].items())) or "-"
        canary = f"v{view['canary']} at {view['canary_percent']:g}%" if view["canary"] else "-"
        click.echo(f"{view['name']}: production v{view['production']}  previous v{view['previous']}  "
                   f"regions {regions}  canary {canary}")
        for version, where in view.get("loaded", {}).items():
            click.echo(f"  {version} pre-warmed on: " + (", ".join(f"{t} ({n})" for t, n in where.items()) or "-"))
        ctl = view.get("controller") or {}
        if ctl:
            click.echo(f"  controller: {ctl.get('state')}" + (f" -> {ctl['action']}: {'; '.join(ctl.get('reasons', []))[:160]}"
                                                           if ctl.get("action") else ""))
        rows = [[d["id"], f"v{d['version']}", d["region"] or "all", d["state"], f"{d['canary_percent']:g}",
                 d["by"], (d["reason"] or "")[:60]] for d in view["deployments"]]
        if rows:
            click.echo(table(["deployment", "version", "region", "state", "canary %", "by", "reason"], rows))
        click.echo("")
    if not views:
        click.echo("no deployments yet; start one with `mlplat deploy NAME [VERSION]`")


def register(cli: click.Group) -> None:
    for command in (deploy, rollback, deployments):
        cli.add_command(command)
