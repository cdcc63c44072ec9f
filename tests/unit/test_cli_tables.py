"""Readable CLI tables (metrics as name/value columns, not a JSON blob) and ``--json`` on every
command that prints records. A local SQLite registry (MLPLAT_REGISTRY_MODE=local), no Ray."""

from __future__ import annotations

import doctest
import json

import click
import pytest
from click.testing import CliRunner

from mlplat.cli import _format, cli
from mlplat.registry import RegistryStore

TRAIN_METRICS = {"train_loss": 0.41234567, "val_loss": 0.4456789, "val_accuracy": 0.81234, "best_epoch": 4,
                 "epochs_run": 5, "metric": "val_loss", "stopped_early": False}
VALIDATION = {"auc": 0.912345678, "accuracy": 0.8, "logloss": 0.3333333, "slices": {"country": {"de": {"auc": 0.9001}}}}


@pytest.fixture
def reg(tmp_path, monkeypatch) -> RegistryStore:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")
    monkeypatch.setenv("MLPLAT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLPLAT_REGISTRY_URL", url)
    store = RegistryStore(url)
    store.create_model("churn", owner="ml", task_type="binary")
    return store


def _validated(reg: RegistryStore, *, require_approval: bool = False, scale: float = 1.0) -> int:
    v = reg.register_version("churn").version
    reg.transition("churn", v, "TRAINING")
    reg.transition("churn", v, "TRAINED", metrics={k: (x * scale if isinstance(x, float) else x)
                                                    for k, x in TRAIN_METRICS.items()})
    reg.transition("churn", v, "VALIDATING")
    reg.transition("churn", v, "VALIDATED", metrics={"validation": VALIDATION}, require_approval=require_approval)
    return v


def invoke(*argv: str) -> click.testing.Result:
    result = CliRunner().invoke(cli, list(argv), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _table_rows(text: str, first: str) -> dict[str, list[str]]:
    """Rows (split on runs of 2+ spaces) of the table whose header starts with ``first``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = [c for c in line.split("  ") if c]
        rows[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return rows


def test_doctests() -> None:
    result = doctest.testmod(_format)
    assert result.attempted >= 2 and result.failed == 0


def test_models_show_prints_metrics_as_name_value_columns(reg) -> None:
    v1 = _validated(reg)
    v2 = _validated(reg, scale=0.5)
    out = invoke("models", "show", "churn").output
    assert '{"' not in out  # no JSON blob
    assert max(len(line) for line in out.splitlines()) < 120
    metrics = _table_rows(out, "METRIC")
    assert metrics["train_loss"] == ["0.4123", "0.2062"]
    assert metrics["validation.auc"] == ["0.9123", "0.9123"]
    assert metrics["validation.slices.country.de.auc"] == ["0.9001", "0.9001"]
    assert metrics["best_epoch"] == ["4", "4"] and metrics["stopped_early"] == ["false", "false"]
    header = next(line for line in out.splitlines() if line.startswith("METRIC"))
    assert header.split() == ["METRIC", f"v{v1}", f"v{v2}"]
    versions = _table_rows(out, "VERSION")
    assert versions[str(v1)][0] == "VALIDATED"


def test_models_versions_caps_the_metric_columns_and_json_keeps_everything(reg) -> None:
    versions = [_validated(reg) for _ in range(_format.MAX_METRIC_VERSIONS + 2)]
    out = invoke("models", "versions", "churn").output
    header = next(line for line in out.splitlines() if line.startswith("METRIC"))
    assert header.split()[1:] == [f"v{v}" for v in versions[-_format.MAX_METRIC_VERSIONS:]]
    assert f"newest {_format.MAX_METRIC_VERSIONS} of {len(versions)} versions; all of them with --json" in out
    data = json.loads(invoke("models", "versions", "churn", "--json").output)
    assert [v["version"] for v in data] == versions
    assert data[0]["metrics"]["validation"]["auc"] == VALIDATION["auc"]
    shown = json.loads(invoke("models", "show", "churn", "--json").output)
    assert shown["versions"][0]["metrics"]["train_loss"] == TRAIN_METRICS["train_loss"]


def test_a_version_without_metrics_prints_no_metric_table(reg) -> None:
    reg.register_version("churn")
    out = invoke("models", "show", "churn").output
    assert "REGISTERED" in out and "METRIC" not in out


def test_approve_and_reject_print_the_version_as_json(reg) -> None:
    v1, v2 = _validated(reg, require_approval=True), _validated(reg, require_approval=True)
    approved = json.loads(invoke("approve", "churn", str(v1), "--by", "alice", "--json").output)
    assert approved["approval"]["state"] == "APPROVED" and approved["approval"]["by"] == "alice"
    rejected = json.loads(invoke("models", "reject", "churn", str(v2), "--by", "bob", "--note", "<slow>", "--json").output)
    assert rejected["state"] == "REJECTED" and rejected["approval"]["note"] == "<slow>"


def test_data_complete_json(reg, tmp_path) -> None:
    (tmp_path / "a.csv").write_text("uid,x\n1,1.5\n2,2.5\n")
    invoke("data", "register", "clicks", str(tmp_path / "a.csv"), "--partition", "date=2026-11-01")
    data = json.loads(invoke("data", "complete", "clicks", "date=2026-11-01", "--json").output)
    assert data["name"] == "clicks" and data["partitions"][0]["complete"] is True


#: Commands of the modules this test covers that print no record, and why they need no --json.
NO_RECORD = {
    "serve start": "prints the URL it serves at",
    "serve stop": "prints 'stopped'",
    "predict": "always prints the server's JSON answer (its --json names the input file)",
}
#: The modules whose commands must offer --json (mlplat/cli/training.py and `info` are another's).
MODULES = ("data", "features", "models", "monitor", "monitor_outcomes", "retrain", "rollout", "serving", "validation")


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} ")
        else:
            yield path, command


def test_every_command_that_prints_records_has_json() -> None:
    checked = []
    for path, command in _commands(cli):
        module = command.callback.__module__.rsplit(".", 1)[-1] if command.callback else ""
        if module not in MODULES or path in NO_RECORD:
            continue
        checked.append(path)
        flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert "--json" in flags, f"`mlplat {path}` prints records but has no --json"
    # the walk really saw the commands (a broken walk must not pass silently)
    for expected in ("models show", "models versions", "data complete", "approve", "models reject", "deploy",
                     "monitor drift", "monitor outcomes", "retrain list", "serve status", "features build", "validate"):
        assert expected in checked
    assert all(path in {p for p, _ in _commands(cli)} for path in NO_RECORD)


def test_validate_prints_its_metrics_as_a_table(capsys) -> None:
    from mlplat.cli.validation import _echo_outcome
    from mlplat.validation.gate import Decision
    from mlplat.validation.runner import ValidationOutcome

    out = ValidationOutcome(name="churn", version=2, state="VALIDATED", decision=Decision(passed=True),  # type: ignore[arg-type]
                            metrics={"auc": 0.912345, "per_class": {"0": {"recall": 0.5}}, "rows": 1200},
                            report_path="file:///r/reports/churn/v2")
    _echo_outcome(out, as_json=False)
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "churn v2: VALIDATED"
    lines = [line.removeprefix("  ") for line in text.splitlines() if not line.startswith("  report:")]
    rows = _table_rows("\n".join(lines), "METRIC")
    assert rows == {"auc": ["0.9123"], "per_class.0.recall": ["0.5"], "rows": ["1200"]}
    assert "report: file:///r/reports/churn/v2/index.html" in text


def test_models_show_prints_the_serving_policy_one_setting_per_line(reg) -> None:
    reg.create_model("ctr", serving_policy={"dedicated": True, "retrain": {"mode": "auto", "triggers": ["drift"],
                                                                             "cooldown_s": 0.5}})
    out = invoke("models", "show", "ctr").output
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("serving policy:"))
    assert lines[start:start + 4] == [
        "serving policy: dedicated           true",
        "                retrain.cooldown_s  0.5",
        "                retrain.mode        auto",
        "                retrain.triggers    drift",
    ]  # in the registry's (sorted) key order
    assert "serving policy: (none)" in invoke("models", "show", "churn").output
