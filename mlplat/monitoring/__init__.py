"""Monitoring (layer 3): drift of live telemetry against a feature set's reference statistics,
judged by a model's monitoring policy, with reports (docs/monitoring.md)."""

from mlplat.monitoring.drift import (
    DriftStats,
    DriftStatus,
    DriftVerdict,
    FeatureStats,
    FeatureVerdict,
    chi2_vs_reference,
    judge_drift,
    ks_vs_reference,
    psi,
)
from mlplat.monitoring.job import DRIFT_CHECKED, DriftResult, check_drift, compute_drift
from mlplat.monitoring.policy import MonitoringPolicy, parse_window
from mlplat.monitoring.report import write_report

__all__ = [
    "DRIFT_CHECKED",
    "DriftResult",
    "DriftStats",
    "DriftStatus",
    "DriftVerdict",
    "FeatureStats",
    "FeatureVerdict",
    "MonitoringPolicy",
    "check_drift",
    "chi2_vs_reference",
    "compute_drift",
    "judge_drift",
    "ks_vs_reference",
    "parse_window",
    "psi",
    "write_report",
]
