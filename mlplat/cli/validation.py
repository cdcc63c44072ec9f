"""Validation commands: ``mlplat validate|score|report|approve|reject``, and the same
``report|approve|reject`` under ``mlplat models``."""

from __future__ import annotations

import json
from typing import Any

import click

from mlplat.cli._format import echo_json, json_option, metrics_table
from mlplat.records import Approval, ApprovalState

__all__ = ["register", "validate", "score", "report", "approve", "reject"]


def _echo_outcome(out: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"model": out.name, "version": out.version, "state": out.state.value, "passed": out.passed,
                               "reasons": list(out.decision.reasons), "notes": list(out.decision.notes),
                               "metrics": out.metrics, "approval": out.approval.value, "report": out.report_path}, indent=2))
        return
    verdict = "VALIDATED" if out.passed else "REJECTED"
    click.echo(f"{out.name} v{out.version}: {verdict}" + (" (awaiting approval)" if out.approval == ApprovalState.PENDING else ""))
    if out.metrics:
        click.echo("\n".join("  " + line for line in metrics_table([("VALUE", out.metrics)]).splitlines()))
    for r in out.decision.reasons:
        click.echo(f"  reason: {r}")
    for n in out.decision.notes:
        click.echo(f"  note: {n}")
    click.echo(f"  report: {out.report_path}/index.html")


@click.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--feature-set", default=None, help="NAME@vN to validate on (default: the version's own feature set).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Validation policy YAML (guardrails, require_approval, slices); default: the model's.")
@json_option
@click.pass_obj
def validate(lazy: Any, name: str, version: int, feature_set: str | None, config_path: str | None, as_json: bool) -> None:
    """Validate a TRAINED version: batch inference on the validation split, metrics, guardrails."""
    policy = None
    if config_path:
        from mlplat.config import load_config
        from mlplat.validation import ValidationPolicy

        policy = load_config(config_path, ValidationPolicy)
    out = lazy.get().validate(name, version, feature_set=feature_set, policy=policy)
    _echo_outcome(out, as_json)
    if not out.passed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("model")
@click.option("--dataset", required=True, help="Dataset to score (latest ready version unless --dataset-version).")
@click.option("--dataset-version", type=int, default=None)
@click.option("--version", "model_version", default=None, help="Model version or alias (default: production).")
@click.option("--output", default=None, help="Name of the inference dataset (default: MODEL-scores).")
@click.option("--key", "keys", multiple=True, help="Input key column(s) to carry (default: the feature set's entity key).")
@json_option
@click.pass_obj
def score(lazy: Any, model: str, dataset: str, dataset_version: int | None, model_version: str | None, output: str | None,
          keys: tuple[str, ...], as_json: bool) -> None:
    """Batch scoring: write predictions to Parquet and register them as an inference dataset."""
    version: int | str | None = int(model_version) if model_version and model_version.isdigit() else model_version
    dv = lazy.get().score(model, dataset, version=version, dataset_version=dataset_version, output=output,
                          keys=list(keys) or None)
    if as_json:
        click.echo(json.dumps(dv.model_dump(mode="json"), indent=2))
    else:
        click.echo(f"{dv.name} v{dv.version}: {dv.num_rows:,} predictions ({dv.description})")
        click.echo(f"  path: {lazy.get().storage.uri_of(dv.path)}")


@click.command()
@click.argument("name")
@click.argument("version", type=int)
@json_option
@click.pass_obj
def report(lazy: Any, name: str, version: int, as_json: bool) -> None:
    """Print a version's validation summary and where its report lives."""
    from mlplat.validation import summary_text

    p = lazy.get()
    data, location = p.report(name, version)
    if as_json:
        click.echo(json.dumps({**data, "location": location}, indent=2, default=str))
        return
    approval: Approval | None = None
    try:  # the approval may have changed since the report was written
        approval = p.registry.get_version(name, version).approval
        data = {**data, "approval": approval.state.value}
    except Exception:  # the report alone is still worth printing
        pass
    click.echo(summary_text(data, f"{location}/index.html"))
    if approval is not None and approval.state in (ApprovalState.APPROVED, ApprovalState.REJECTED):
        click.echo(f"  approval: {approval.describe()}")


def _approval_command(verdict: str):
    @click.command(name=verdict)
    @click.argument("name")
    @click.argument("version", type=int)
    @click.option("--by", default=None, help="Who decides (recorded in the version's approval; default: login name).")
    @click.option("--note", default=None, help="Why (recorded in the version's approval).")
    @json_option
    @click.pass_obj
    def command(lazy: Any, name: str, version: int, by: str | None, note: str | None, as_json: bool) -> None:
        p = lazy.get()
        mv = (p.approve if verdict == "approve" else p.reject)(name, version, by=by, note=note)
        if as_json:
            echo_json(mv)
        else:
            click.echo(f"{mv.name} v{mv.version}: {mv.state.value}, approval {mv.approval.describe()}")

    command.help = ("Approve a VALIDATED version that waits for human approval." if verdict == "approve" else
                    "Reject a VALIDATED version that waits for human approval: it moves to REJECTED (final).")
    return command


approve = _approval_command("approve")
reject = _approval_command("reject")


def register(cli: click.Group) -> None:
    """Add the commands at top level and ``report|approve|reject`` under ``mlplat models``."""
    for command in (validate, score, report, approve, reject):
        cli.add_command(command)
    models = cli.commands.get("models")
    if isinstance(models, click.Group):
        for command in (report, approve, reject):
            if command.name not in models.commands:
                models.add_command(command)
