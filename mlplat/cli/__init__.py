"""The ``mlplat`` command line: the same verbs as the Python API."""

from __future__ import annotations

import json
import sys

import click

from mlplat.errors import MlplatError

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="MLPLAT_ROOT", default=None, help="Storage root (local path or s3://bucket/prefix).")
@click.option("--address", envvar="MLPLAT_RAY_ADDRESS", default=None, help="Ray address; default: embedded local Ray.")
@click.option("--config", "config_path", envvar="MLPLAT_CONFIG", default=None, help="Platform settings YAML.")
@click.option("--verbose", "-v", is_flag=True, default=False,
              help="Show Ray's own logs (INFO lines, worker output, Ray Data progress bars); also MLPLAT_VERBOSE=1.")
@click.pass_context
def cli(ctx: click.Context, root: str | None, address: str | None, config_path: str | None, verbose: bool) -> None:
    """mlplat: data, training, validation, registry and serving on Ray."""
    from mlplat.api import connect
    from mlplat.console import quiet_ray, verbose_requested

    quiet_ray(verbose_requested(verbose))  # before anything starts Ray
    ctx.obj = _Lazy(lambda: connect(root=root, address=address, config_path=config_path))


class _Lazy:
    """Builds the Platform on first use so ``--help`` never touches storage or Ray."""

    def __init__(self, factory):
        self._factory, self._value = factory, None

    def get(self):
        if self._value is None:
            self._value = self._factory()
        return self._value


@cli.command()
@click.pass_obj
def info(lazy: _Lazy) -> None:
    """Show the effective settings (secrets hidden)."""
    p = lazy.get()
    data = p.config.model_dump(mode="json")
    data["root_uri"] = p.storage.uri
    click.echo(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point: MlplatError becomes one clear line and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MlplatError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _register_groups() -> None:
    from mlplat.cli import data, features, models, serving, training

    for module in (models, data, features, serving):
        cli.add_command(module.group)
    cli.add_command(serving.predict)
    training.register(cli)  # train, publish, tune, runs
    from mlplat.cli import rollout, validation
    validation.register(cli)
    rollout.register(cli)  # deploy, rollback, deployments  # validate, score, report, approve, reject (+ models report|approve|reject)
    from mlplat.cli import monitor
    cli.add_command(monitor.group)  # monitor drift (docs/monitoring.md)
    cli.add_command(__import__("mlplat.cli.retrain", fromlist=["group"]).group)  # retrain approve|dismiss|list
    from mlplat.cli import families
    cli.add_command(families.group)  # family train|validate|promote|rollback|show|list


_register_groups()
