"""`mlplat serve start|status|stop` and `mlplat predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["group", "predict"]


@click.group(name="serve")
def group() -> None:
    """Online serving on Ray Serve (HTTP: OIP v2 + v1 predict)."""


@group.command("start")
@click.option("--blocking/--no-blocking", default=None,
              help="Keep this process in the foreground (default: yes on an embedded local Ray, "
                   "which would stop with this process; no with --address).")
@click.pass_obj
def start(lazy, blocking: bool | None) -> None:
    """Deploy the ingress, the model pool and the dedicated deployments."""
    p = lazy.get()
    if blocking is None:
        blocking = not p.config.ray_address
    if blocking:
        click.echo(f"serving on http://{p.config.serve.host}:{p.config.serve.port} (Ctrl-C stops it)")
    url = p.serve_start(blocking=blocking)
    click.echo(f"serving at {url}")


@group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(lazy, as_json: bool) -> None:
    """Show the app's and each deployment's status."""
    info = lazy.get().serve_status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['app']}: {info['status']}  {info.get('url', '')}")
    for name, dep in info["deployments"].items():
        replicas = ", ".join(f"{k}={v}" for k, v in dep["replicas"].items())
        click.echo(f"  {name:24s} {dep['status']:12s} {replicas}")


@group.command("stop")
@click.pass_obj
def stop(lazy) -> None:
    """Delete the Serve app (the Ray cluster keeps running)."""
    lazy.get().serve_stop()
    click.echo("stopped")


@click.command("predict")
@click.argument("name")
@click.option("--json", "json_path", required=True, help="A file with a JSON list of rows ({feature: value}), or - for stdin.")
@click.option("--version", type=int, default=None, help="A specific version (default: production).")
@click.option("--url", default=None, help="Server base URL (default from settings).")
@click.pass_obj
def predict(lazy, name: str, json_path: str, version: int | None, url: str | None) -> None:
    """Predict rows with the served model NAME."""
    text = sys.stdin.read() if json_path == "-" else Path(json_path).read_text()
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{json_path} is not valid JSON: {exc}", param_hint="--json") from None
    if isinstance(rows, dict) and "instances" in rows:
        rows = rows["instances"]
    if not isinstance(rows, list):
        raise click.BadParameter("expected a JSON list of rows or {\"instances\": [...]}", param_hint="--json")
    click.echo(json.dumps(lazy.get().predict(name, rows, version=version, url=url), indent=2))
