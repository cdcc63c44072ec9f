"""`mlplat family train|validate|promote|rollback|show|list` (docs/families.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from mlplat.cli._format import json_option, table

__all__ = ["group"]

_ORDER = {"REJECTED": 0, "SKIP": 0, "UNCHANGED": 1, "VALIDATED": 2, "PROMOTE": 2, "ROLLBACK": 2, "DONE": 3}


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _capped(rows: Sequence[Sequence[Any]], show: int) -> tuple[list[Sequence[Any]], int]:
    return list(rows[:show]), max(0, len(rows) - show)


def _echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], show: int) -> None:
    shown, more = _capped(rows, show)
    if shown:
        click.echo(table(headers, shown))
    if more:
        click.echo(f"... and {more} more (--show N, or --json for all)")


@click.group(name="family")
def group() -> None:
    """Model families: one small model per entity, trained, validated, promoted as one job."""


@group.command(name="train")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="configs/family.yaml")
@click.option("--show", type=int, default=20, show_default=True, help="Skipped or failed entities to list.")
@json_option
@click.pass_obj
def train(lazy: Any, config: str, show: int, as_json: bool) -> None:
    """Fit one model per entity of a feature set (Ray), pack their weights, register every member."""
    result = lazy.get().train_family(config)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    click.echo(f"family {result.family} v{result.version}: {result.trained} members trained, {len(result.failed)} failed, "
               f"{len(result.skipped)} entities skipped in {result.duration_s:.1f} s ({result.models_per_s:.1f} models/s)")
    click.echo(f"  pack: {result.pack}/ ({result.shards} shard{'s' if result.shards != 1 else ''})  run: {result.run_id}")
    rows = [[m, "FAILED", _short(r)] for m, r in sorted(result.failed.items())]
    rows += [[e, "SKIPPED", _short(r)] for e, r in sorted(result.skipped.items())]
    _echo_table(["MEMBER/ENTITY", "OUTCOME", "REASON"], rows, show)


@group.command(name="validate")
@click.argument("name")
@click.argument("version", type=int, required=False)
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Validation policy YAML (guardrails...); default: the family's own.")
@click.option("--show", type=int, default=20, show_default=True, help="Members to list (rejected first).")
@json_option
@click.pass_obj
def validate(lazy: Any, name: str, version: int | None, config_path: str | None, show: int, as_json: bool) -> None:
    """Validate every TRAINED member of a family version (latest by default) in one pass."""
    policy = None
    if config_path:
        from mlplat.config import load_config
        from mlplat.validation import ValidationPolicy

        policy = load_config(config_path, ValidationPolicy)
    out = lazy.get().validate_family(name, version, policy=policy)
    if as_json:
        click.echo(json.dumps(out.to_dict(), indent=2, default=str))
        return
    counts = ", ".join(f"{k} {v}" for k, v in out.counts.items())
    click.echo(f"family {out.family} v{out.version}: {counts}")
    rows = sorted(out.rows, key=lambda r: (_ORDER.get(r["verdict"], 9), r["member"]))
    metric = next((m for r in rows for m in r["metrics"]), None)
    table_rows = [[r["member"], f"v{r['version']}", r["rows"], _fmt(r["metrics"].get(metric) if metric else None),
                   _fmt(((r.get("champion") or {}).get("metrics") or {}).get(metric) if metric else None),
                   r["verdict"], _short("; ".join(r["reasons"]))] for r in rows]
    label = (metric or "METRIC").upper()
    _echo_table(["MEMBER", "VERSION", "ROWS", label, f"CHAMPION {label}", "VERDICT", "REASON"], table_rows, show)
    if out.report_path:
        click.echo(f"  report: {out.report_path}/index.html")


def _bulk(kind: str):
    @group.command(name=kind)
    @click.argument("name")
    @click.argument("version", type=int, required=False)
    @click.option("--member", "members", multiple=True, help="Only these members (repeatable).")
    @click.option("--by", default=None, help="Who (recorded in the events; default: MLPLAT_USER or login name).")
    @click.option("--show", type=int, default=20, show_default=True, help="Members to list (skipped first).")
    @json_option
    @click.pass_obj
    def command(lazy: Any, name: str, version: int | None, members: tuple[str, ...], by: str | None, show: int,
                as_json: bool) -> None:
        p = lazy.get()
        fn = p.promote_family if kind == "promote" else p.rollback_family
        out = fn(name, version, members=list(members) or None, by=by)
        if as_json:
            click.echo(json.dumps(out.to_dict(), indent=2))
            return
        counts = ", ".join(f"{k} {v}" for k, v in out.counts.items())
        click.echo(f"family {out.family} v{out.version} {kind}: {counts}")
        rows = sorted(([s.member, f"v{s.version}", s.action.value, _short(s.reason)] for s in out.steps),
                      key=lambda r: (_ORDER.get(str(r[2]), 9), str(r[0])))
        _echo_table(["MEMBER", "VERSION", "STEP", "REASON"], rows, show)

    command.help = ("Promote every VALIDATED member of a family version (latest by default) in one transaction."
                    if kind == "promote" else
                    "Roll back every member a family version serves to its previous version, in one transaction.")
    return command


promote = _bulk("promote")
rollback = _bulk("rollback")


@group.command(name="show")
@click.argument("name")
@click.argument("version", type=int, required=False)
@click.option("--show", type=int, default=50, show_default=True, help="Members to list.")
@json_option
@click.pass_obj
def show(lazy: Any, name: str, version: int | None, show: int, as_json: bool) -> None:
    """A family version: recipe, pack, members with their live state, skipped entities."""
    from mlplat.families import family_versions, get_family, member_states

    p = lazy.get()
    fv = get_family(p.registry, name, version)
    states = member_states(p.registry, fv)
    if as_json:
        click.echo(json.dumps({**fv.model_dump(mode="json"), "member_states": states}, indent=2, default=str))
        return
    versions = [v.version for v in family_versions(p.registry, name)]
    by_state: dict[str, int] = {}
    for s in states:
        by_state[s["state"]] = by_state.get(s["state"], 0) + 1
    click.echo(f"family {fv.name} v{fv.version} (versions: {', '.join(map(str, versions))})")
    click.echo(f"  feature set: {fv.feature_set.name} v{fv.feature_set.version}  entity: {fv.entity_column}  "
               f"label: {fv.label}  model: {fv.spec.get('task')} {fv.spec.get('architecture')} {fv.spec.get('hidden', '')}")
    click.echo(f"  pack: {fv.pack}/  run: {fv.run_id}")
    click.echo(f"  members: {len(fv.members)} ({', '.join(f'{k} {v}' for k, v in sorted(by_state.items()))}); "
               f"skipped entities: {len(fv.skipped)}")
    rows = [[s["member"], s["entity"], f"v{s['version']}", s["state"],
             "" if s["production"] is None else f"v{s['production']}", _short(s["error"] or "", 60)] for s in states]
    _echo_table(["MEMBER", "ENTITY", "VERSION", "STATE", "PRODUCTION", "ERROR"], rows, show)
    if fv.skipped:
        _echo_table(["SKIPPED ENTITY", "REASON"], [[e, _short(r)] for e, r in sorted(fv.skipped.items())], show)


@group.command(name="list")
@json_option
@click.pass_obj
def list_(lazy: Any, as_json: bool) -> None:
    """Every family: latest version, members, feature set."""
    from mlplat.families import list_families

    families = list_families(lazy.get().registry)
    if as_json:
        click.echo(json.dumps([f.model_dump(mode="json") for f in families], indent=2, default=str))
        return
    click.echo(table(["FAMILY", "VERSION", "MEMBERS", "SKIPPED", "FEATURE SET", "ENTITY"],
                     [[f.name, f.version, len(f.members), len(f.skipped), f"{f.feature_set.name} v{f.feature_set.version}",
                       f.entity_column] for f in families]))
