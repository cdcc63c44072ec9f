"""Validation (layer 3): batch inference over a feature set's validation split, metrics, the
guardrail gate, reports, and batch scoring."""

from mlplat.validation.gate import Check, Decision, Guardrail, ValidationJobConfig, ValidationPolicy, gate, parse_guardrail
from mlplat.validation.metrics import METRICS_BY_TASK, make_accumulator
from mlplat.validation.report import load_report, summary_text
from mlplat.validation.runner import (
    ValidationOutcome,
    approve,
    policy_for,
    reject,
    report_of,
    validate,
)
from mlplat.validation.scoring import score

__all__ = [
    "validate",
    "approve",
    "reject",
    "score",
    "report_of",
    "load_report",
    "summary_text",
    "policy_for",
    "gate",
    "parse_guardrail",
    "Guardrail",
    "Check",
    "Decision",
    "ValidationPolicy",
    "ValidationJobConfig",
    "ValidationOutcome",
    "METRICS_BY_TASK",
    "make_accumulator",
]
