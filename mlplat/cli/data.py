"""`mlplat data ...` commands: the data catalog from the shell (tables, or ``--json``)."""

from __future__ import annotations

import json
from typing import Any

import click

from mlplat.cli._format import json_option as _json_option
from mlplat.cli._format import table as _table

__all__ = ["group"]


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


def _list(datasets: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_dump(datasets), indent=2))
        return
    rows = [[d.name, f"v{d.version}", d.kind.value, d.num_rows, len(d.partitions), ",".join(d.tags),
             ",".join(d.column_names)[:60]] for d in datasets]
    click.echo(_table(["name", "version", "kind", "rows", "partitions", "tags", "columns"], rows))


@click.group(name="data")
def group() -> None:
    """Data catalog: datasets, versions, partitions."""


@group.command()
@click.argument("name")
@click.argument("sources", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(["facts", "inference"]), default="facts", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "json"]), default=None,
              help="Input format (default: from the file extension).")
@click.option("--partition", default=None, help="Put all files in this hive partition, e.g. date=2026-11-27.")
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option("--description", default="")
@_json_option
@click.pass_obj
def register(lazy: Any, name: str, sources: tuple[str, ...], kind: str, fmt: str | None, partition: str | None,
             tags: tuple[str, ...], description: str, as_json: bool) -> None:
    """Register a new version of dataset NAME from files or directories (local or s3://)."""
    dv = lazy.get().register_dataset(name, list(sources), kind=kind, format=fmt, partition=partition, tags=tags,
                                     description=description)
    _list([dv], as_json)


@group.command()
@click.argument("name")
@click.argument("partition")
@click.argument("sources", nargs=-1, required=True)
@click.option("--version", type=int, default=None, help="Dataset version (default: latest ready).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "json"]), default=None)
@_json_option
@click.pass_obj
def append(lazy: Any, name: str, partition: str, sources: tuple[str, ...], version: int | None, fmt: str | None,
           as_json: bool) -> None:
    """Append PARTITION (e.g. date=2026-11-27) to dataset NAME; the schema must match."""
    _list([lazy.get().append_partition(name, partition, list(sources), version=version, format=fmt)], as_json)


@group.command()
@click.argument("name")
@click.argument("partition")
@click.option("--version", type=int, default=None)
@_json_option
@click.pass_obj
def complete(lazy: Any, name: str, partition: str, version: int | None, as_json: bool) -> None:
    """Mark PARTITION of dataset NAME finished (emits a partition_completed event)."""
    dv = lazy.get().complete_partition(name, partition, version=version)
    if as_json:
        click.echo(json.dumps(_dump(dv), indent=2))
        return
    click.echo(f"{name} v{dv.version} {partition}: complete")


@group.command(name="list")
@click.option("--prefix", default=None)
@click.option("--tag", default=None)
@click.option("--column", default=None, help="Only datasets with this column.")
@click.option("--kind", type=click.Choice(["facts", "inference"]), default=None)
@_json_option
@click.pass_obj
def list_(lazy: Any, prefix: str | None, tag: str | None, column: str | None, kind: str | None, as_json: bool) -> None:
    """List datasets (latest ready version of each)."""
    _list(lazy.get().list_datasets(prefix=prefix, tag=tag, column=column, kind=kind), as_json)


@group.command()
@click.argument("query")
@_json_option
@click.pass_obj
def search(lazy: Any, query: str, as_json: bool) -> None:
    """Find datasets whose name, tag, column or description contains QUERY."""
    _list(lazy.get().search_datasets(query), as_json)


@group.command()
@click.argument("name")
@click.option("--version", type=int, default=None)
@_json_option
@click.pass_obj
def show(lazy: Any, name: str, version: int | None, as_json: bool) -> None:
    """Schema, row counts and partitions of a dataset version."""
    dv = lazy.get().dataset(name, version)
    if as_json:
        click.echo(json.dumps(_dump(dv), indent=2))
        return
    click.echo(f"{dv.name} v{dv.version}  kind={dv.kind.value}  rows={dv.num_rows}  path={dv.path}")
    if dv.tags:
        click.echo(f"tags: {', '.join(dv.tags)}")
    if dv.description:
        click.echo(dv.description)
    click.echo("\n" + _table(["column", "type"], [[c.name, c.type] for c in dv.columns]
                             + [[k, "string (partition)"] for k in dv.partition_keys]))
    if dv.partitions:
        click.echo("\n" + _table(["partition", "rows", "files", "complete"],
                                 [[p.key, p.num_rows, len(p.files), "yes" if p.complete else "no"] for p in dv.partitions]))
