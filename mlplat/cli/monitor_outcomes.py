"""`mlplat monitor outcomes NAME FILES...`: ingest delayed labels (a command of the ``monitor``
group, added to it in ``mlplat/cli/monitor.py``)."""

from __future__ import annotations

import json
from typing import Any

import click

from mlplat.cli._format import json_option, table

__all__ = ["outcomes"]


@click.command(name="outcomes")
@click.argument("name")
@click.argument("files", nargs=-1, required=True)
@click.option("--label", "label_column", required=True, help="The outcome (label) column.")
@click.option("--request-id-column", default=None,
              help="Join by request id (the x-request-id the ingress answered); default: request_id.")
@click.option("--entity", "entity_column", default=None,
              help="Point-in-time join: the entity column (matched to telemetry feature.<entity> or context.<entity>).")
@click.option("--time", "time_column", default=None,
              help="Point-in-time join: the outcome time column (timestamp, epoch seconds or ISO-8601).")
@click.option("--batch", default=None, help="Batch id (default: UTC time + random suffix).")
@json_option
@click.pass_obj
def outcomes(lazy: Any, name: str, files: tuple[str, ...], label_column: str, request_id_column: str | None,
             entity_column: str | None, time_column: str | None, batch: str | None, as_json: bool) -> None:
    """Join outcome FILES (Parquet, CSV, JSON; local or s3://) to model NAME's predictions and
    register the matched rows as dataset outcomes-NAME."""
    if (entity_column is None) != (time_column is None):
        raise click.UsageError("--entity and --time go together (a point-in-time join)")
    if entity_column is not None and request_id_column is not None:
        raise click.UsageError("--request-id-column and --entity/--time are two different joins: give one")
    result = lazy.get().ingest_outcomes(
        name, list(files), label_column=label_column,
        request_id_column=None if entity_column else (request_id_column or "request_id"),
        entity_column=entity_column, time_column=time_column, batch=batch)
    data = result.to_json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(table(["model", "batch", "rows", "matched", "unmatched", "ambiguous", "path"],
                     [[data["model"], data["batch"], data["rows"], data["matched"], data["unmatched"],
                       data["ambiguous"], data["path"] or "-"]]))
