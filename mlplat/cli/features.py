"""`mlplat features ...` commands."""

from __future__ import annotations

import click

__all__ = ["group"]


@click.group(name="features")
def group() -> None:
    """Feature sets: build, list, show."""
