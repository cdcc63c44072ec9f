"""The family decisions: pure, table-driven (no Ray, no storage, no registry)."""

from __future__ import annotations

import pytest

from mlplat.errors import InvalidName
from mlplat.families.policy import (
    MemberEvaluation,
    StepAction,
    Verdict,
    decide_promotion,
    decide_rollback,
    decide_validation,
    entity_slug,
    fit_skip_reason,
    member_name,
    plan_members,
    validate_family_name,
)


@pytest.mark.parametrize("value,slug", [
    ("Store 17", "store-17"), ("us/East--1", "us-east-1"), (42, "42"), ("a_b", "a_b"), ("  x  ", "x"),
    ("Ünïcode", "n-code"), ("!!!", ""), (b"raw", "raw"), (3.5, "3-5"),
])
def test_entity_slug(value, slug):
    assert entity_slug(value) == slug


def test_member_names_are_model_names_and_say_why_not():
    assert member_name("sales", "Store 1") == "sales--store-1"
    with pytest.raises(InvalidName, match="no letter or digit"):
        member_name("sales", "!!")
    with pytest.raises(InvalidName, match="at most 63 characters"):
        member_name("sales", "x" * 80)


@pytest.mark.parametrize("name,ok", [("sales", True), ("store-sales_2", True), ("sales--eu", False), ("Sales", False),
                                     ("s" * 60, True), ("s" * 61, False), ("", False)])
def test_family_names(name, ok):
    if ok:
        assert validate_family_name(name) == name
    else:
        with pytest.raises(InvalidName):
            validate_family_name(name)


def test_plan_members_skips_what_cannot_be_named_and_both_sides_of_a_collision():
    plan = plan_members("f", ["A 1", "a-1", "b", None, float("nan"), "!!", "b", 7])
    assert plan.members == {"f--7": "7", "f--b": "b"}
    assert plan.skipped["None"] == "the entity value is null" and plan.skipped["nan"] == "the entity value is null"
    assert "no letter or digit" in plan.skipped["!!"]
    assert "map to member 'f--a-1'" in plan.skipped["A 1"] and "map to member 'f--a-1'" in plan.skipped["a-1"]


@pytest.mark.parametrize("rows,min_rows,skipped", [(0, 1, True), (19, 20, True), (20, 20, False), (500, 20, False)])
def test_fit_skip_reason(rows, min_rows, skipped):
    assert (fit_skip_reason(rows, min_rows) is not None) is skipped


def ev(rows=50, bad=0, champion=None, load_error=None, **metrics):
    return MemberEvaluation(rows=rows, non_finite_predictions=bad, metrics=metrics, champion=champion, load_error=load_error)


VALIDATION_CASES = [
    # (name, state, evaluation, guardrails, verdict, reason fragment)
    ("passes", "TRAINED", ev(rmse=0.5), ["rmse <= 1"], Verdict.VALIDATED, None),
    ("fails a guardrail", "TRAINED", ev(rmse=1.5), ["rmse <= 1"], Verdict.REJECTED, "rmse = 1.5, needs <= 1"),
    ("checksum", "TRAINED", ev(load_error="has sha256 ab..., expected cd..."), [], Verdict.REJECTED, "weights failed to load: has sha256"),
    ("missing shard", "TRAINED", ev(load_error="shard x does not exist"), ["rmse <= 1"], Verdict.REJECTED, "does not exist"),
    ("worse than champion", "TRAINED", ev(rmse=1.2, champion={"metrics": {"rmse": 1.0}}), ["rmse <= champion * 1.1"],
     Verdict.REJECTED, "(champion 1)"),
    ("no champion: relative skipped", "TRAINED", ev(rmse=9.0), ["rmse <= champion"], Verdict.VALIDATED, None),
    ("nan predictions", "TRAINED", ev(bad=2, rmse=0.1), [], Verdict.REJECTED, "NaN/Inf"),
    ("no validation rows", "TRAINED", None, ["rmse <= 1"], Verdict.UNCHANGED, "stays TRAINED"),
    ("already validated", "VALIDATED", ev(rmse=0.1), [], Verdict.UNCHANGED, "is VALIDATED"),
    ("failed fit", "FAILED", None, [], Verdict.UNCHANGED, "is FAILED"),
]


@pytest.mark.parametrize("name,state,evaluation,rails,verdict,fragment", VALIDATION_CASES,
                         ids=[c[0] for c in VALIDATION_CASES])
def test_decide_validation(name, state, evaluation, rails, verdict, fragment):
    out = decide_validation("f--a", 3, state, evaluation, rails)
    assert out.verdict == verdict and (out.member, out.version) == ("f--a", 3)
    if fragment:
        assert any(fragment in r for r in out.reasons), out.reasons
    else:
        assert not out.reasons


PROMOTION_CASES = [
    # (name, state, approval, aliases, action, expected_production, reason fragment)
    ("first promotion", "VALIDATED", "NOT_REQUIRED", {}, StepAction.PROMOTE, 0, ""),
    ("replaces production", "VALIDATED", "APPROVED", {"production": 1}, StepAction.PROMOTE, 1, ""),
    ("already production", "PRODUCTION", "NOT_REQUIRED", {"production": 2}, StepAction.DONE, None, "production already"),
    ("rejected", "REJECTED", "NOT_REQUIRED", {"production": 1}, StepAction.SKIP, None, "only VALIDATED"),
    ("awaiting approval", "VALIDATED", "PENDING", {}, StepAction.SKIP, None, "approval is PENDING"),
    ("canary running", "VALIDATED", "NOT_REQUIRED", {"production": 1, "canary": 3}, StepAction.SKIP, None, "in canary"),
    ("archived", "ARCHIVED", "NOT_REQUIRED", {"production": 3}, StepAction.SKIP, None, "is ARCHIVED"),
]


@pytest.mark.parametrize("name,state,approval,aliases,action,expected,fragment", PROMOTION_CASES,
                         ids=[c[0] for c in PROMOTION_CASES])
def test_decide_promotion(name, state, approval, aliases, action, expected, fragment):
    step = decide_promotion("f--a", 2, state, approval, aliases)
    assert step.action == action and step.expected_production == expected and fragment in step.reason


ROLLBACK_CASES = [
    ("serves, has previous", "PRODUCTION", {"production": 2, "previous": 1}, StepAction.ROLLBACK, ""),
    ("rolled back already", "ARCHIVED", {"production": 1, "previous": 2}, StepAction.DONE, "rolled back already"),
    ("never promoted", "REJECTED", {"production": 1}, StepAction.SKIP, "does not serve it"),
    ("no production at all", "VALIDATED", {}, StepAction.SKIP, "production is unset"),
    ("no previous", "PRODUCTION", {"production": 2}, StepAction.SKIP, "no previous version"),
    ("canary running", "PRODUCTION", {"production": 2, "previous": 1, "canary": 3}, StepAction.SKIP, "in canary"),
]


@pytest.mark.parametrize("name,state,aliases,action,fragment", ROLLBACK_CASES, ids=[c[0] for c in ROLLBACK_CASES])
def test_decide_rollback(name, state, aliases, action, fragment):
    step = decide_rollback("f--a", 2, state, aliases)
    assert step.action == action and fragment in step.reason
    assert step.expected_production == (2 if action == StepAction.ROLLBACK else None)


def test_doctests():
    import doctest

    from mlplat.families import fit, policy, report

    for module in (policy, fit, report):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
