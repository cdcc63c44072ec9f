"""Output helpers shared by the CLI's command modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

__all__ = ["json_option", "table"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table with a dashed rule under the header."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
