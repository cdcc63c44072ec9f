"""`mlplat features ...` commands: build, list and show feature sets."""

from __future__ import annotations

import json
from typing import Any

import click

from mlplat.cli._format import json_option as _json_option
from mlplat.cli._format import table as _table

__all__ = ["group"]


def _rows(sets: list[Any]) -> list[list[Any]]:
    return [[f.name, f"v{f.version}", f"{f.source.name}@v{f.source.version}", f.num_rows, len(f.feature_columns),
             ",".join(f.label_columns), json.dumps(f.split.get("counts", {}), sort_keys=True)] for f in sets]


_HEADERS = ["name", "version", "source", "rows", "features", "labels", "split"]


@click.group(name="features")
def group() -> None:
    """Feature sets: build, list, show."""


@group.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Feature-set spec YAML (see configs/features-example.yaml).")
@_json_option
@click.pass_obj
def build(lazy: Any, config_path: str, as_json: bool) -> None:
    """Fit encoders on Ray Data, materialize and register a new feature-set version."""
    fsv = lazy.get().build_features(config_path)
    click.echo(json.dumps(fsv.model_dump(mode="json"), indent=2) if as_json else _table(_HEADERS, _rows([fsv])))


@group.command(name="list")
@click.option("--prefix", default=None)
@click.option("--tag", default=None)
@_json_option
@click.pass_obj
def list_(lazy: Any, prefix: str | None, tag: str | None, as_json: bool) -> None:
    """List feature sets (latest ready version of each)."""
    sets = lazy.get().list_feature_sets(prefix=prefix, tag=tag)
    click.echo(json.dumps([f.model_dump(mode="json") for f in sets], indent=2) if as_json else _table(_HEADERS, _rows(sets)))


@group.command()
@click.argument("name")
@click.option("--version", type=int, default=None)
@_json_option
@click.pass_obj
def show(lazy: Any, name: str, version: int | None, as_json: bool) -> None:
    """Spec, source, output columns and encoders of a feature-set version."""
    p = lazy.get()
    fsv = p.feature_set(name, version)
    if as_json:
        click.echo(json.dumps(fsv.model_dump(mode="json"), indent=2))
        return
    click.echo(_table(_HEADERS, _rows([fsv])))
    enc = p.feature_encoder(name, fsv.version)
    click.echo("\n" + _table(["column", "encoder", "outputs", "fitted"],
                             [[e.column, e.type_name(), ",".join(e.output_columns())[:50], json.dumps(e.fitted)[:60]]
                              for e in enc.encoders]))
