"""`mlplat models ...` commands: the model registry from the shell.

Tables for people, ``--json`` for scripts. The registry is reached through ``Platform.registry``
(the ``mlplat-registry`` actor; ``MLPLAT_REGISTRY_MODE=local`` opens the database in-process).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from typing import Any

import click

from mlplat.cli._format import MAX_METRIC_VERSIONS, metrics_table
from mlplat.cli._format import echo_json as _echo_json
from mlplat.cli._format import json_option as _json_option
from mlplat.cli._format import table as _table
from mlplat.records import ApprovalState, ModelState, ModelVersion
from mlplat.records._html import flatten, format_value
from mlplat.registry import Registry

__all__ = ["group"]

_STATES = click.Choice([s.value for s in ModelState], case_sensitive=False)


def _registry(lazy: Any) -> Registry:
    registry: Registry = lazy.get().registry
    return registry


def _when(ts: float | None) -> str:
    return "" if ts is None else _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _approval(v: ModelVersion) -> str:
    return "" if v.approval.state == ApprovalState.NOT_REQUIRED else v.approval.describe(with_note=False)


def _version_rows(versions: Sequence[ModelVersion], aliases: dict[str, int]) -> list[list[Any]]:
    by_version: dict[int, list[str]] = {}
    for alias, v in sorted(aliases.items()):
        by_version.setdefault(v, []).append(alias)
    return [
        [v.version, v.state.value, ",".join(by_version.get(v.version, [])), _approval(v), _when(v.created_at),
         _when(v.updated_at), v.run_id or "", _short(v.error or "", 60)]
        for v in versions
    ]


_VERSION_HEADERS = ("VERSION", "STATE", "ALIASES", "APPROVAL", "CREATED", "UPDATED", "RUN", "ERROR")


def _policy_text(policy: dict[str, Any]) -> str:
    """A serving policy one dotted setting per line (aligned under the first), not one JSON line."""
    pairs = flatten(policy)
    if not pairs:
        return "(none)"
    width = max(len(name) for name, _ in pairs)
    return ("\n" + " " * 16).join(f"{name.ljust(width)}  {format_value(value)}" for name, value in pairs)


def _versions_text(versions: Sequence[ModelVersion], aliases: dict[str, int]) -> str:
    """The versions table, then their metrics side by side (the newest few versions that have any)."""
    text = _table(_VERSION_HEADERS, _version_rows(versions, aliases))
    measured = [v for v in versions if v.metrics]
    if not measured:
        return text
    shown = sorted(measured, key=lambda v: v.version)[-MAX_METRIC_VERSIONS:]
    text += "\n\n" + metrics_table([(f"v{v.version}", v.metrics) for v in shown])
    if len(measured) > len(shown):
        text += f"\n(metrics of the newest {len(shown)} of {len(measured)} versions; all of them with --json)"
    return text


@click.group(name="models")
def group() -> None:
    """Model registry: models, versions, states, aliases, events."""


@group.command(name="list")
@click.option("--prefix", default=None, help="Only models whose name starts with this.")
@click.option("--tag", default=None, help="Only models with this tag.")
@click.option("--state", type=_STATES, default=None, help="Only models with a version in this state.")
@_json_option
@click.pass_obj
def list_models(lazy: Any, prefix: str | None, tag: str | None, state: str | None, as_json: bool) -> None:
    """List models."""
    models = _registry(lazy).list_models(prefix=prefix, tag=tag, state=state)
    if as_json:
        return _echo_json(models)
    click.echo(_table(("NAME", "LATEST", "TASK", "OWNER", "TAGS", "UPDATED"),
                      [[m.name, m.latest_version or "-", m.task_type or "", m.owner, ",".join(m.tags), _when(m.updated_at)]
                       for m in models]))


@group.command()
@click.argument("name")
@_json_option
@click.pass_obj
def show(lazy: Any, name: str, as_json: bool) -> None:
    """Show one model: its fields, aliases and versions."""
    reg = _registry(lazy)
    model, aliases, versions = reg.get_model(name), reg.aliases(name), reg.list_versions(name)
    if as_json:
        return _echo_json({"model": model, "aliases": aliases, "versions": versions})
    click.echo(f"model:          {model.name}")
    click.echo(f"description:    {model.description}")
    click.echo(f"owner:          {model.owner}")
    click.echo(f"task type:      {model.task_type or ''}")
    click.echo(f"tags:           {', '.join(model.tags)}")
    click.echo(f"serving policy: {_policy_text(model.serving_policy)}")
    click.echo(f"aliases:        {', '.join(f'{a}=v{v}' for a, v in aliases.items()) or '(none)'}")
    click.echo("")
    click.echo(_versions_text(versions, aliases))


@group.command()
@click.argument("name")
@click.option("--state", type=_STATES, default=None, help="Only versions in this state.")
@_json_option
@click.pass_obj
def versions(lazy: Any, name: str, state: str | None, as_json: bool) -> None:
    """List the versions of a model."""
    reg = _registry(lazy)
    found = reg.list_versions(name, state=state)
    if as_json:
        return _echo_json(found)
    click.echo(_versions_text(found, reg.aliases(name)))


@group.command()
@click.option("--since", type=int, default=0, show_default=True, help="Only events with a sequence number above this.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--subject", default=None, help="e.g. model:churn or dataset:clicks")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable).")
@_json_option
@click.pass_obj
def events(lazy: Any, since: int, limit: int, subject: str | None, kinds: tuple[str, ...], as_json: bool) -> None:
    """Read the registry's event log from a sequence number."""
    found = _registry(lazy).events_since(since, limit=limit, subject=subject, kinds=kinds or None)
    if as_json:
        return _echo_json(found)
    click.echo(_table(("SEQ", "TIME", "KIND", "SUBJECT", "VERSION", "PAYLOAD"),
                      [[e.seq, _when(e.ts), e.kind, e.subject, e.version or "", _short(json.dumps(e.payload, sort_keys=True))]
                       for e in found]))


def _echo_version(v: ModelVersion, as_json: bool, what: str) -> None:
    if as_json:
        return _echo_json(v)
    click.echo(f"{what}: {v.name} v{v.version} is {v.state.value}")


@group.command()
@click.argument("name")
@click.argument("version", type=int)
@click.argument("state", type=_STATES)
@click.option("--expected-state", type=_STATES, default=None, help="Fail with a conflict unless the version is in this state.")
@click.option("--error", default=None, help="Error text to record (e.g. with FAILED).")
@click.option("--idempotency-key", default=None)
@_json_option
@click.pass_obj
def transition(lazy: Any, name: str, version: int, state: str, expected_state: str | None, error: str | None,
               idempotency_key: str | None, as_json: bool) -> None:
    """Move a version to STATE (the state machine rejects illegal moves)."""
    v = _registry(lazy).transition(name, version, state.upper(), expected_state=expected_state, error=error,
                                   idempotency_key=idempotency_key)
    _echo_version(v, as_json, "transitioned")


@group.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.option("--expected-version", type=int, default=None, help="Fail unless the alias points here now (0 = unset).")
@click.option("--idempotency-key", default=None)
@_json_option
@click.pass_obj
def alias(lazy: Any, name: str, alias: str, version: int, expected_version: int | None, idempotency_key: str | None,
          as_json: bool) -> None:
    """Point ALIAS (production, canary, production.<region>, ...) at VERSION."""
    reg = _registry(lazy)
    reg.set_alias(name, alias, version, expected_version=expected_version, idempotency_key=idempotency_key)
    if as_json:
        return _echo_json({"name": name, "aliases": reg.aliases(name)})
    click.echo(f"{name}:{alias} -> v{version}")


@group.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--idempotency-key", default=None)
@_json_option
@click.pass_obj
def promote(lazy: Any, name: str, version: int, idempotency_key: str | None, as_json: bool) -> None:
    """Make VERSION production; the old production version is archived and becomes 'previous'."""
    from mlplat.config import acting_user

    v = _registry(lazy).promote(name, version, idempotency_key=idempotency_key, by=acting_user())
    _echo_version(v, as_json, "promoted")


@group.command()
@click.argument("name")
@click.option("--region", default=None, help="Roll back one regional cell only.")
@click.option("--idempotency-key", default=None)
@_json_option
@click.pass_obj
def rollback(lazy: Any, name: str, region: str | None, idempotency_key: str | None, as_json: bool) -> None:
    """End a running canary, else swap production back to the 'previous' version (see also `mlplat rollback`)."""
    from mlplat.config import acting_user

    v = _registry(lazy).rollback(name, region=lazy.get().config.check_region(region), by=acting_user(),
                                 idempotency_key=idempotency_key)
    _echo_version(v, as_json, "rolled back to")


@group.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the graph as JSON (nodes, edges, notes).")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the graph as an SVG file here.")
@click.pass_obj
def lineage(lazy: Any, name: str, version: int, as_json: bool, svg_path: str | None) -> None:
    """VERSION's lineage: partitions -> feature set -> run -> version -> validation -> deployments
    -> drift -> alarms -> retrain -> next version (docs/lineage.md)."""
    from mlplat.monitoring.lineage import build_lineage, to_json, to_svg, to_text

    graph = build_lineage(_registry(lazy), name, version)
    if svg_path:
        try:
            with open(svg_path, "w", encoding="utf-8") as fh:
                fh.write(to_svg(graph))
        except OSError as exc:
            raise click.ClickException(f"cannot write {svg_path}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(to_json(graph), indent=2, sort_keys=True))
    else:
        click.echo(to_text(graph))
    if svg_path:
        click.echo(f"svg: {svg_path}", err=True)
