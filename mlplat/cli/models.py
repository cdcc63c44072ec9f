"""`mlplat models ...` commands."""

from __future__ import annotations

import click

__all__ = ["group"]


@click.group(name="models")
def group() -> None:
    """Model registry: models, versions, states, aliases, events."""
