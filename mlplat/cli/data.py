"""`mlplat data ...` commands."""

from __future__ import annotations

import click

__all__ = ["group"]


@click.group(name="data")
def group() -> None:
    """Data catalog: datasets, versions, partitions."""
