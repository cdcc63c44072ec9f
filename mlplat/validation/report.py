"""The validation report: ``reports/<name>/v<N>/{validation.json, *.png, index.html}``.

Plots and HTML are written first, ``validation.json`` last: a report directory without it is
an unfinished write. The JSON is what tools read; the HTML is what people read.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from mlplat.errors import NotFound
from mlplat.names import validate_name
from mlplat.records import ApprovalState, ArtifactRef
from mlplat.storage import Storage
from mlplat.validation import plots
from mlplat.validation.metrics import HIGHER_IS_BETTER, METRICS_BY_TASK

__all__ = ["REPORT_FILE", "HTML_FILE", "REPORT_FORMAT", "report_dir", "write_report", "load_report", "summary_text",
           "approval_of"]

REPORT_FILE = "validation.json"
HTML_FILE = "index.html"
REPORT_FORMAT = "mlplat.validation-report/1"


def report_dir(name: str, version: int) -> tuple[str, str, str]:
    return ("reports", validate_name(name, "model name"), f"v{int(version)}")


def approval_of(report: Mapping[str, Any]) -> ApprovalState:
    """The report's ``approval`` (an :class:`ApprovalState` value, e.g. ``"PENDING"``); reports
    written before approvals were typed hold ``"pending"`` or null, read the same way."""
    value = report.get("approval")
    if not value:
        return ApprovalState.NOT_REQUIRED
    try:
        return ApprovalState(str(value).upper())
    except ValueError:
        return ApprovalState.NOT_REQUIRED


def _plots(report: Mapping[str, Any], curves: Mapping[str, Any], champion_curves: Mapping[str, Any] | None) -> dict[str, bytes]:
    task = report["task"]
    metrics = report["metrics"]
    champ = report.get("champion") or {}
    title = f"— {report['model']} v{report['version']}"
    out: dict[str, bytes] = {}
    if report.get("rows_scored", 0) > 0:
        if task == "binary":
            out["roc.png"] = plots.roc_png(curves, metrics.get("auc"), champion_curves, (champ.get("metrics") or {}).get("auc"),
                                           title)
            out["calibration.png"] = plots.calibration_png(curves, metrics.get("ece"), title)
        elif task == "regression":
            out["predicted_vs_actual.png"] = plots.predicted_vs_actual_png(curves, title)
            out["residuals.png"] = plots.residuals_png(curves, title)
        elif task == "multiclass":
            out["confusion.png"] = plots.confusion_png(curves, title)
        out["metrics.png"] = plots.metrics_vs_champion_png(metrics, champ.get("metrics"), title)
        primary = METRICS_BY_TASK[task][0]
        for column, values in (report.get("slices") or {}).items():
            out[f"slice_{column}.png"] = plots.slices_png(column, values, primary, metrics.get(primary))
    return out


def write_report(storage: Storage, report: dict[str, Any], curves: Mapping[str, Any],
                 champion_curves: Mapping[str, Any] | None = None) -> ArtifactRef:
    """Write plots, index.html, then validation.json; return the ref of validation.json."""
    parts = report_dir(report["model"], report["version"])
    images = _plots(report, curves, champion_curves)
    for filename, data in images.items():
        storage.write_bytes(data, *parts, filename)
    report = {**report, "plots": list(images)}
    storage.write_bytes(render_html(report).encode(), *parts, HTML_FILE)
    return storage.write_json(report, *parts, REPORT_FILE)


def load_report(storage: Storage, name: str, version: int) -> dict[str, Any]:
    parts = report_dir(name, version)
    try:
        return storage.read_json(*parts, REPORT_FILE)
    except NotFound:
        raise NotFound(f"model {name} v{version} has no validation report at {storage.uri_of(*parts)}/; "
                       f"run `mlplat validate {name} {version}`") from None


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 1e4 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _delta(metric: str, value: Any, champ: Any) -> str:
    if value is None or champ is None:
        return ""
    d = float(value) - float(champ)
    better = (d > 0) == HIGHER_IS_BETTER.get(metric, True) or d == 0
    return f'<span class="{"good" if better else "bad"}">{d:+.4f}</span>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.badge{display:inline-block;padding:.25rem .7rem;border-radius:1rem;color:#fff;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.pending{background:#ef6c00}
table{border-collapse:collapse;margin:.8rem 0 1.5rem}td,th{border-bottom:1px solid #ddd;padding:.35rem .8rem;text-align:right}
th:first-child,td:first-child{text-align:left} .good{color:#2e7d32}.bad{color:#c62828}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots img{max-width:100%;border:1px solid #eee}
ul.reasons li{color:#c62828} code{background:#f4f4f4;padding:0 .25rem}
"""


def render_html(report: Mapping[str, Any]) -> str:
    e = html.escape
    decision = report.get("decision") or {}
    passed = bool(decision.get("passed"))
    champ = report.get("champion") or {}
    champ_metrics = champ.get("metrics") or {}
    rows = []
    for m, v in (report.get("metrics") or {}).items():
        c = champ_metrics.get(m) if champ else None
        rows.append(f"<tr><td>{e(m)}</td><td>{_num(v)}</td><td>{_num(c) if champ else ''}</td>"
                    f"<td>{_delta(m, v, c) if champ else ''}</td></tr>")
    checks = "".join(
        f"<tr><td><code>{e(c['guardrail'])}</code></td><td>{_num(c['value'])}</td><td>{_num(c['threshold'])}</td>"
        f"<td class=\"{'good' if c['passed'] else 'bad'}\">{'pass' if c['passed'] else 'FAIL'}</td><td>{e(c.get('note') or '')}</td></tr>"
        for c in decision.get("checks") or [])
    reasons = "".join(f"<li>{e(r)}</li>" for r in decision.get("reasons") or [])
    notes = "".join(f"<li>{e(n)}</li>" for n in [*(decision.get("notes") or []), *(report.get("notes") or [])])
    slices = []
    for column, values in (report.get("slices") or {}).items():
        names = METRICS_BY_TASK[report["task"]]
        head = "".join(f"<th>{e(n)}</th>" for n in names)
        body = "".join(f"<tr><td>{e(str(k))}</td><td>{_num(v.get('rows'))}</td>" + "".join(f"<td>{_num(v.get(n))}</td>" for n in names)
                       + "</tr>" for k, v in values.items())
        slices.append(f"<h3>By {e(column)}</h3><table><tr><th>{e(column)}</th><th>rows</th>{head}</tr>{body}</table>")
    images = "".join(f'<figure><img src="{e(p)}" alt="{e(p)}"></figure>' for p in report.get("plots") or [])
    badge = ('<span class="badge pass">PASSED</span>' if passed else '<span class="badge fail">REJECTED</span>')
    if approval_of(report) == ApprovalState.PENDING:
        badge += ' <span class="badge pending">awaiting approval</span>'
    fs = report.get("feature_set") or {}
    champ_head = f"champion v{champ.get('version')}" if champ else ""
    inference = report.get("inference") or {}
    where = (f" · inference: {e(str(inference.get('executor')))} on {e(str(inference.get('device')))}"
             if inference else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(report['model'])} v{report['version']} — validation</title>
<style>{_CSS}</style></head><body>
<h1>{e(report['model'])} v{report['version']} {badge}</h1>
<p class="sub">{e(report['task'])} · feature set {e(str(fs.get('name')))} v{e(str(fs.get('version')))}, split
<code>{e(str((report.get('split') or {}).get('value')))}</code> · {_num(report.get('rows'))} rows
({_num(report.get('non_finite_predictions'))} non-finite predictions) · outcome <b>{e(str(report.get('outcome')))}</b>{where}</p>
{f'<h2>Why it failed</h2><ul class="reasons">{reasons}</ul>' if reasons else ''}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
{f'<p class="bad">Error: {e(str(report["error"]))}</p>' if report.get('error') else ''}
<h2>Metrics</h2>
<table><tr><th>metric</th><th>candidate</th><th>{e(champ_head)}</th><th>{'delta' if champ else ''}</th></tr>{''.join(rows)}</table>
<h2>Guardrails</h2>
<table><tr><th>guardrail</th><th>value</th><th>threshold</th><th>result</th><th>note</th></tr>{checks or '<tr><td>none configured</td></tr>'}</table>
<h2>Plots</h2><div class="plots">{images}</div>
{'<h2>Slices</h2>' + ''.join(slices) if slices else ''}
<p class="sub">Raw numbers: <a href="validation.json">validation.json</a></p>
</body></html>
"""


def summary_text(report: Mapping[str, Any], location: str) -> str:
    """What ``mlplat report NAME VERSION`` prints."""
    decision = report.get("decision") or {}
    champ = report.get("champion") or {}
    lines = [
        f"{report['model']} v{report['version']} ({report['task']}): {report.get('outcome')}"
        + (" — awaiting approval" if approval_of(report) == ApprovalState.PENDING else ""),
        f"  split: feature set {report['feature_set']['name']} v{report['feature_set']['version']}, "
        f"{report.get('rows', 0):,} rows, {report.get('non_finite_predictions', 0)} non-finite predictions",
    ]
    where = report.get("inference") or {}
    if where:
        lines.append(f"  inference: {where.get('executor')} on {where.get('device')}"
                     + (f" (up to {where['actors']} actors)" if where.get("actors") else ""))
    for m, v in (report.get("metrics") or {}).items():
        c = (champ.get("metrics") or {}).get(m) if champ else None
        lines.append(f"  {m:<10} {_num(v):>10}" + (f"   champion v{champ['version']}: {_num(c)}" if champ else ""))
    for c in decision.get("checks") or []:
        lines.append(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['guardrail']}" + (f"  ({c['note']})" if c.get("note") else ""))
    for r in decision.get("reasons") or []:
        lines.append(f"  reason: {r}")
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    lines.append(f"  report: {location}")
    return "\n".join(lines)


def dumps(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str)
