"""The bulk validation report of a family version: one row per member.

``reports/<family>/family-v<N>/<validation-id>/{index.html, validation.json}``: HTML first,
JSON last (a directory without it is an unfinished write), like a single model's report. One
report per bulk pass, so a member's ``validation_report`` artifact (path and sha256) stays
valid when a later pass validates other members.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from mlplat.families.policy import MemberEvaluation, MemberVerdict, Verdict
from mlplat.models.metrics import METRICS_BY_TASK
from mlplat.records import ArtifactRef
from mlplat.storage import Storage

__all__ = ["FAMILY_REPORT_FORMAT", "family_report_dir", "member_rows", "write_family_report", "summary_counts"]

FAMILY_REPORT_FORMAT = "mlplat.family-validation-report/1"
REPORT_FILE, HTML_FILE = "validation.json", "index.html"


def family_report_dir(family: str, version: int, validation_id: str) -> tuple[str, ...]:
    return ("reports", family, f"family-v{int(version)}", validation_id)


def summary_counts(verdicts: Sequence[MemberVerdict]) -> dict[str, int]:
    """``{"VALIDATED": n, "REJECTED": n, "UNCHANGED": n}``.

    >>> summary_counts([MemberVerdict("a", 1, Verdict.REJECTED)])
    {'VALIDATED': 0, 'REJECTED': 1, 'UNCHANGED': 0}
    """
    return {v.value: sum(1 for x in verdicts if x.verdict == v) for v in Verdict}


def member_rows(verdicts: Sequence[MemberVerdict], evaluations: Mapping[str, MemberEvaluation],
                entities: Mapping[str, str]) -> list[dict[str, Any]]:
    """The report's table: member, entity, rows, metrics, champion metrics, verdict, reasons."""
    rows = []
    for v in verdicts:
        ev = evaluations.get(v.member)
        rows.append({"member": v.member, "version": v.version, "entity": entities.get(v.member), "verdict": v.verdict.value,
                     "reasons": list(v.reasons), "notes": list(v.notes), "rows": ev.rows if ev else 0,
                     "non_finite_predictions": ev.non_finite_predictions if ev else 0,
                     "metrics": dict(ev.metrics) if ev else {}, "champion": dict(ev.champion) if ev and ev.champion else None,
                     "load_error": ev.load_error if ev else None, "decision": v.decision})
    return rows


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def render_html(report: Mapping[str, Any]) -> str:
    task = report.get("task") or "regression"
    metrics = METRICS_BY_TASK.get(task, ())[:3]
    head = "".join(f"<th>{m}</th><th>champion {m}</th>" for m in metrics)
    lines = []
    for r in report["members"]:
        champ = (r.get("champion") or {}).get("metrics") or {}
        cells = "".join(f"<td>{_num(r['metrics'].get(m))}</td><td>{_num(champ.get(m))}</td>" for m in metrics)
        reason = "; ".join(r["reasons"]) or ""
        lines.append(f"<tr class='{r['verdict'].lower()}'><td>{html.escape(r['member'])}</td><td>v{r['version']}</td>"
                     f"<td>{r['rows']}</td>{cells}<td>{r['verdict']}</td><td>{html.escape(reason)}</td></tr>")
    counts = ", ".join(f"{k}: {v}" for k, v in report["counts"].items())
    title = f"{report['family']} family v{report['family_version']} — validation {report['validation_id']}"
    rails = html.escape(", ".join(report.get("guardrails") or []) or "none")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}.rejected{background:#fde}"
            ".unchanged{color:#888}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{counts}. Guardrails: {rails}.</p>"
            f"<table><tr><th>member</th><th>version</th><th>rows</th>{head}<th>verdict</th><th>reason</th></tr>"
            + "".join(lines) + "</table></body></html>")


def write_family_report(storage: Storage, report: dict[str, Any]) -> ArtifactRef:
    """Write index.html, then validation.json; return the ref of validation.json."""
    parts = family_report_dir(report["family"], report["family_version"], report["validation_id"])
    storage.write_bytes(render_html(report).encode(), *parts, HTML_FILE)
    return storage.write_json(report, *parts, REPORT_FILE)
