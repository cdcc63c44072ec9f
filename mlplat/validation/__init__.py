"""Validation (layer 3): batch inference over a feature set's validation split, metrics, the
guardrail gate, reports, and batch scoring."""

from mlplat.validation.gate import Check, Decision, Guardrail, ValidationPolicy, gate, parse_guardrail
from mlplat.validation.metrics import METRICS_BY_TASK, make_accumulator

__all__ = [
    "gate",
    "parse_guardrail",
    "Guardrail",
    "Check",
    "Decision",
    "ValidationPolicy",
    "METRICS_BY_TASK",
    "make_accumulator",
]
