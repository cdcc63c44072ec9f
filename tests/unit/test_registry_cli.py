"""`mlplat models ...` against a local registry database (MLPLAT_REGISTRY_MODE=local, no Ray),
SQLite and PostgreSQL chosen by MLPLAT_REGISTRY_URL."""

from __future__ import annotations

import json

import pytest

from mlplat.cli import main
from mlplat.registry import RegistryStore


@pytest.fixture
def reg(tmp_path, monkeypatch, registry_url):
    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")
    monkeypatch.setenv("MLPLAT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLPLAT_REGISTRY_URL", registry_url)
    client = RegistryStore(registry_url)
    client.create_model("churn", owner="ml", tags=["tab"], task_type="classification")
    for _ in range(2):
        v = client.register_version("churn", metrics={"auc": 0.9}).version
        for state in ("TRAINING", "TRAINED", "VALIDATING", "VALIDATED"):
            client.transition("churn", v, state)
    return client


def run(capsys, *argv):
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_show_versions(reg, capsys):
    code, out, _ = run(capsys, "models", "list")
    assert code == 0 and "NAME" in out and "churn" in out and "classification" in out
    code, out, _ = run(capsys, "models", "list", "--json", "--tag", "tab")
    assert [m["name"] for m in json.loads(out)] == ["churn"]
    code, out, _ = run(capsys, "models", "list", "--json", "--state", "production")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "models", "show", "churn")
    assert code == 0 and "owner:          ml" in out and "VALIDATED" in out
    code, out, _ = run(capsys, "models", "versions", "churn", "--json")
    assert [v["version"] for v in json.loads(out)] == [1, 2]


def test_promote_alias_rollback_events(reg, capsys):
    code, out, _ = run(capsys, "models", "promote", "churn", "1")
    assert code == 0 and "churn v1 is PRODUCTION" in out
    code, out, _ = run(capsys, "models", "promote", "churn", "2", "--json")
    assert json.loads(out)["state"] == "PRODUCTION"
    assert reg.aliases("churn") == {"production": 2, "previous": 1}
    code, out, _ = run(capsys, "models", "alias", "churn", "production.eu", "2")
    assert code == 0 and "churn:production.eu -> v2" in out
    code, out, _ = run(capsys, "models", "rollback", "churn")
    assert code == 0 and "rolled back to: churn v1 is PRODUCTION" in out
    code, out, _ = run(capsys, "models", "versions", "churn")
    assert "production" in out and "previous" in out
    code, out, _ = run(capsys, "models", "events", "--since", "0", "--kind", "promoted", "--json")
    assert [e["version"] for e in json.loads(out)] == [1, 2]
    assert all(e["payload"]["by"] for e in json.loads(out)), json.loads(out)  # who promoted is recorded
    seq = json.loads(out)[-1]["seq"]
    code, out, _ = run(capsys, "models", "events", "--since", str(seq))
    assert "alias_moved" in out and "rolled_back" in out and "promoted" not in out


def test_transition_and_errors(reg, capsys):
    v = reg.register_version("churn").version
    code, out, _ = run(capsys, "models", "transition", "churn", str(v), "training")
    assert code == 0 and f"churn v{v} is TRAINING" in out
    code, _, err = run(capsys, "models", "transition", "churn", str(v), "PRODUCTION")
    assert code == 2 and "illegal transition TRAINING -> PRODUCTION" in err and "Traceback" not in err
    code, _, err = run(capsys, "models", "transition", "churn", str(v), "TRAINED", "--expected-state", "REGISTERED")
    assert code == 2 and "not the expected REGISTERED" in err
    code, _, err = run(capsys, "models", "show", "nope")
    assert code == 2 and "not registered" in err
    code, _, err = run(capsys, "models", "show", "../etc")
    assert code == 2 and "invalid model name" in err
    code, _, err = run(capsys, "models", "rollback", "churn")
    assert code == 2 and "no 'production' alias" in err
    code, _, err = run(capsys, "models", "transition", "churn", str(v), "DEPLOYED")
    assert code == 2
