"""Output helpers shared by the CLI's command modules: fixed-width tables for people, ``--json``
for scripts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from mlplat.records._html import flatten, format_value

__all__ = ["json_option", "table", "echo_json", "jsonable", "metrics_table", "MAX_METRIC_VERSIONS"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

#: Versions side by side in a metrics table at most (the newest); --json has them all.
MAX_METRIC_VERSIONS = 6


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table with a dashed rule under the header."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """Records (pydantic models) and containers of them as JSON-ready data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` (records included) as indented JSON with sorted keys."""
    click.echo(json.dumps(jsonable(value), indent=2, sort_keys=True, default=str))


def metrics_table(columns: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Metrics in readable columns: one row per metric (nested names dotted, numbers to 4
    significant digits), one value column per ``(heading, metrics)``; "" where none.

    >>> print(metrics_table([("VALUE", {"loss": 0.412345, "validation": {"auc": 0.9}})]))
    METRIC          VALUE
    --------------  ------
    loss            0.4123
    validation.auc  0.9
    >>> print(metrics_table([("v1", {"auc": 0.8}), ("v2", {"auc": 0.85, "f1": 0.5})]))
    METRIC  v1   v2
    ------  ---  ----
    auc     0.8  0.85
    f1           0.5
    """
    flat = [dict(flatten(metrics)) for _, metrics in columns]
    names: list[str] = []
    for values in flat:
        names.extend(n for n in values if n not in names)
    rows = [[name, *(format_value(values[name]) if name in values else "" for values in flat)] for name in names]
    return table(["METRIC", *(heading for heading, _ in columns)], rows)
