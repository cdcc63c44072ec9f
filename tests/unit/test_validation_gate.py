"""The guardrail gate: pure, table-driven (no Ray, no storage)."""

from __future__ import annotations

import pytest

from mlplat.errors import ConfigError
from mlplat.validation import ValidationPolicy, gate, parse_guardrail


def rep(rows=100, bad=0, **metrics):
    return {"rows": rows, "non_finite_predictions": bad, "metrics": metrics}


CASES = [
    # (name, report, champion, guardrails, passed, reason fragment)
    ("abs pass", rep(rmse=2.5), None, ["rmse <= 3.0"], True, None),
    ("abs fail", rep(rmse=3.5), None, ["rmse <= 3.0"], False, "rmse = 3.5, needs <= 3"),
    ("abs boundary", rep(auc=0.8), None, ["auc >= 0.8"], True, None),
    ("strict boundary", rep(auc=0.8), None, ["auc > 0.8"], False, "needs > 0.8"),
    ("champion within tolerance", rep(auc=0.897), rep(auc=0.9), ["auc >= champion - 0.005"], True, None),
    ("champion regression", rep(auc=0.89), rep(auc=0.9), ["auc >= champion - 0.005"], False, "(champion 0.9)"),
    ("champion scaled", rep(rmse=1.04), rep(rmse=1.0), ["rmse <= champion * 1.05"], True, None),
    ("champion scaled fail", rep(rmse=1.06), rep(rmse=1.0), ["rmse <= champion * 1.05"], False, "rmse = 1.06"),
    ("no champion skips relative", rep(auc=0.5), None, ["auc >= champion - 0.005"], True, None),
    ("champion lacks metric", rep(auc=0.5), rep(), ["auc >= champion"], True, None),
    ("nan predictions fail", rep(bad=3, rmse=1.0), None, ["rmse <= 3.0"], False, "NaN/Inf predictions for 3 of 100"),
    ("nan fails even without rails", rep(bad=1), None, [], False, "NaN/Inf"),
    ("empty split fails", rep(rows=0), None, [], False, "no rows"),
    ("undefined metric fails", rep(auc=None), None, ["auc >= 0.8"], False, "could not be computed"),
    ("missing metric fails", rep(rmse=1.0), None, ["auc >= 0.8"], False, "auc could not be computed"),
    ("all must pass", rep(auc=0.9, ece=0.2), None, ["auc >= 0.8", "ece <= 0.1"], False, "ece = 0.2"),
    ("no rails pass", rep(rmse=100.0), None, [], True, None),
]


@pytest.mark.parametrize("name,report,champion,rails,passed,fragment", CASES, ids=[c[0] for c in CASES])
def test_gate_table(name, report, champion, rails, passed, fragment):
    decision = gate(report, champion, rails)
    assert decision.passed is passed
    assert len(decision.checks) == len(rails)
    if fragment:
        assert any(fragment in r for r in decision.reasons), decision.reasons
    else:
        assert decision.reasons == ()


def test_gate_reports_every_failure():
    decision = gate(rep(bad=2, auc=0.7, f1=0.1), rep(auc=0.9), ["auc >= 0.8", "f1 >= 0.5", "auc >= champion - 0.01"])
    assert len(decision.reasons) == 4
    assert decision.to_json()["checks"][0]["threshold"] == 0.8


def test_relative_skip_is_noted():
    decision = gate(rep(auc=0.9), None, ["auc >= champion - 0.005"])
    assert decision.notes and "no production version" in decision.notes[0]


@pytest.mark.parametrize("text,metric,op,value,relative,sign,delta", [
    ("rmse <= 3.0", "rmse", "<=", 3.0, False, "+", 0.0),
    ("auc>=0.8", "auc", ">=", 0.8, False, "+", 0.0),
    ("auc >= champion - 0.005", "auc", ">=", None, True, "-", 0.005),
    ("log_loss <= champion", "log_loss", "<=", None, True, "+", 0.0),
    ("rmse < champion * 1.1", "rmse", "<", None, True, "*", 1.1),
    ("r2 > -1e-3", "r2", ">", -1e-3, False, "+", 0.0),
])
def test_parse(text, metric, op, value, relative, sign, delta):
    g = parse_guardrail(text)
    assert (g.metric, g.op, g.value, g.relative, g.sign, g.delta) == (metric, op, value, relative, sign, delta)


@pytest.mark.parametrize("text", ["auc", "auc == 0.8", "auc >= high", "auc >= champion - x", "AUC >= 0.8", "", "auc >= 0.8; rm"])
def test_parse_rejects(text):
    with pytest.raises(ConfigError, match="does not parse"):
        parse_guardrail(text)


def test_policy_is_strict_and_checks_metrics():
    from mlplat.config import parse_config

    with pytest.raises(ConfigError, match="unknown key 'guardrail'"):
        parse_config({"guardrail": ["auc >= 0.8"]}, ValidationPolicy)
    with pytest.raises(ConfigError, match="does not parse"):
        parse_config({"guardrails": ["auc => 0.8"]}, ValidationPolicy)
    policy = parse_config({"guardrails": ["auc >= 0.8"], "require_approval": True}, ValidationPolicy)
    policy.check_task("binary")
    with pytest.raises(ConfigError, match="not computed for task 'regression'"):
        policy.check_task("regression")
