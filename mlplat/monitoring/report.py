"""The drift report: ``reports/<name>/drift/<stamp>/{feature-*.png, prediction.png,
scores-over-time.png, index.html, drift.json}``; ``drift.json`` is written last, so a directory
without it is an interrupted write and is ignored by the history."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlplat.errors import MlplatError
from mlplat.storage import Storage

if TYPE_CHECKING:
    from mlplat.monitoring.drift import FeatureStats, FeatureVerdict, PerformanceStats, PerformanceVerdict
    from mlplat.monitoring.job import DriftResult

__all__ = ["write_report", "drift_history", "RESULT_FILE", "HTML_FILE", "HISTORY_LIMIT"]

RESULT_FILE = "drift.json"
HTML_FILE = "index.html"
#: Previous checks drawn in "scores over time".
HISTORY_LIMIT = 50
_STAMP = re.compile(r"^\d{8}T\d{6}Z-\d+[smhd]$")
REFERENCE, LIVE = "#1f77b4", "#ff7f0e"


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=90)


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def histogram_png(s: FeatureStats, drifted: bool | None) -> bytes:
    """Reference vs live fraction per bin, side by side."""
    import numpy as np

    plt, fig = _figure(max(5.0, 0.45 * len(s.bins) + 2.0), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(s.bins))
    ax.bar(x - 0.2, s.reference_fractions, width=0.4, color=REFERENCE, label="reference")
    if s.live_fractions:
        ax.bar(x + 0.2, s.live_fractions, width=0.4, color=LIVE, label="live")
    ax.set_xticks(x, [b if len(b) <= 18 else b[:17] + "…" for b in s.bins], rotation=45, ha="right", fontsize=7)
    verdict = {True: "DRIFT", False: "ok", None: "not judged"}[drifted]
    ax.set(ylabel="fraction of non-null values", title=f"{s.name} ({s.kind}): {verdict}, PSI {_num(s.psi)}")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(plt, fig)


def history_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """PSI per feature (and of the predictions) at each check's window end."""
    import datetime as dt

    plt, fig = _figure(8.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[tuple[Any, float]]] = {}
    for h in history:
        when = dt.datetime.fromtimestamp(h["end_s"], dt.timezone.utc)
        for name, value in h["psi"].items():
            if value is not None:
                series.setdefault(name, []).append((when, value))
    for name, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    drifts = [dt.datetime.fromtimestamp(h["end_s"], dt.timezone.utc) for h in history if h["status"] == "drift"]
    for when in drifts:
        ax.axvline(when, color="#c62828", alpha=0.25)
    if history and history[-1].get("psi_max") is not None:
        ax.axhline(history[-1]["psi_max"], color="grey", linestyle="--", linewidth=1, label="psi_max")
    ax.set(ylabel="PSI", xlabel="window end (UTC); red lines: drift", title="Drift scores over time")
    if series:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(plt, fig)


def _summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    stats = doc["stats"]
    psi = {f["name"]: f.get("psi") for f in stats.get("features", [])}
    if stats.get("prediction"):
        psi["(prediction)"] = stats["prediction"].get("psi")
    return {"end_s": doc["end_s"], "status": doc["verdict"]["status"], "psi": psi,
            "psi_max": (doc.get("policy") or {}).get("psi_max")}


def drift_history(storage: Storage, name: str, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    """Summaries (window end, status, PSI per feature) of the last ``limit`` completed checks
    of ``name``, oldest first; unreadable ones are skipped."""
    out = []
    for stamp in [s for s in storage.list_dir("reports", name, "drift") if _STAMP.match(s)][-limit:]:
        try:
            out.append(_summary(storage.read_json("reports", name, "drift", stamp, RESULT_FILE)))
        except (MlplatError, KeyError, TypeError):
            continue  # interrupted or foreign directory
    return sorted(out, key=lambda h: h["end_s"])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60].lstrip(".") or "feature"


def write_report(storage: Storage, result: DriftResult) -> str:
    """Write the report of ``result``; returns the URI of its directory."""
    parts = ("reports", result.model, "drift", result.stamp)
    uri = storage.uri_of(*parts)
    result = result.model_copy(update={"report": uri})
    verdicts = {v.name: v for v in result.verdict.features}
    entries = [(s, verdicts.get(s.name), f"feature-{i:02d}-{_slug(s.name)}.png", s.name)
               for i, s in enumerate(result.stats.features)]
    if result.stats.prediction is not None:
        entries.append((result.stats.prediction, result.verdict.prediction, "prediction.png", "(prediction)"))
    plots: dict[str, str] = {}
    for s, verdict, file, key in entries:
        if s.bins:
            storage.write_bytes(histogram_png(s, verdict.drifted if verdict else None), *parts, file)
            plots[key] = file
    history = [h for h in drift_history(storage, result.model) if h["end_s"] != result.end_s]
    history.append(_summary(result.model_dump(mode="json")))
    storage.write_bytes(history_png(history), *parts, "scores-over-time.png")
    storage.write_bytes(render_html(result, plots, len(history)).encode(), *parts, HTML_FILE)
    storage.write_bytes(result.model_dump_json(indent=2).encode(), *parts, RESULT_FILE)
    return uri


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
.sub{color:#666}.badge{padding:.15rem .6rem;border-radius:.8rem;color:#fff;font-size:.9rem}
.drift{background:#c62828}.no_drift{background:#2e7d32}.not_judged{background:#777}
table{border-collapse:collapse;margin:.8rem 0 1.5rem}td,th{border-bottom:1px solid #ddd;padding:.35rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}td.why{text-align:left;color:#555}.bad{color:#c62828;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots img{max-width:100%;border:1px solid #eee}"""


def _row(s: FeatureStats, v: FeatureVerdict | None, plot: str | None) -> str:
    e = html.escape
    test = (f"KS D {_num(s.ks_statistic)}", s.ks_pvalue) if s.kind == "numeric" else (
        f"chi2 w {_num(s.chi2_effect)}", s.chi2_pvalue) if s.kind == "categorical" else ("", None)
    drifted = None if v is None else v.drifted
    mark = {True: '<span class="bad">DRIFT</span>', False: "ok", None: "not judged"}[drifted]
    name = f'<a href="{e(plot)}">{e(s.name)}</a>' if plot else e(s.name)
    null = "n/a" if s.null_rate is None else f"{s.null_rate:.1%}"
    ref_null = "n/a" if s.reference_null_rate is None else f"{s.reference_null_rate:.1%}"
    why = "; ".join(v.reasons) if v is not None else (s.note or "")
    return (f"<tr><td>{name}</td><td>{e(s.kind or '')}</td><td>{s.values:,}</td><td>{null} / {ref_null}</td>"
            f"<td>{_num(s.psi)}</td><td>{e(test[0])}</td><td>{_num(test[1])}</td><td>{mark}</td>"
            f"<td class=\"why\">{e(why)}</td></tr>")


def performance_html(s: PerformanceStats | None, v: PerformanceVerdict | None) -> str:
    """The "Performance" section: the judged metric on the window's outcomes against its
    validation value, and every metric of the task on the outcomes; empty without outcomes."""
    if s is None:
        return ""
    e = html.escape
    drifted = None if v is None else v.drifted
    mark = {True: '<span class="bad">DRIFT</span>', False: "ok", None: "not judged"}[drifted]
    why = "; ".join(v.reasons) if v is not None else (s.note or "")
    direction = "" if s.higher_is_better is None else (" (higher is better)" if s.higher_is_better else " (lower is better)")
    drop = None if v is None else v.drop
    limit = "n/a" if v is None else _num(v.threshold)
    others = ", ".join(f"{e(k)} {_num(val)}" for k, val in s.live_metrics.items())
    return (f"<h2>Performance</h2><p class=\"sub\">{e(s.task or 'unknown task')} · {s.rows:,} outcome rows scored"
            f"{f' ({s.skipped:,} without a numeric label and prediction left out)' if s.skipped else ''} · "
            f"{s.files} outcome batch file{'s' if s.files != 1 else ''} · the live metric against the version's "
            f"validation value (metrics.validation)</p>"
            f"<table><tr><th>metric</th><th>outcomes</th><th>live</th><th>validation</th><th>worse by</th>"
            f"<th>max drop</th><th>verdict</th><th>why</th></tr>"
            f"<tr><td>{e(s.metric or 'n/a')}{e(direction)}</td><td>{s.rows:,}</td><td>{_num(s.live)}</td>"
            f"<td>{_num(s.reference)}</td><td>{_num(drop)}</td><td>{limit}</td><td>{mark}</td>"
            f"<td class=\"why\">{e(why)}</td></tr></table>"
            + (f"<p class=\"sub\">All metrics on the outcomes: {others}</p>" if others else ""))


def render_html(result: DriftResult, plots: Mapping[str, str], checks: int) -> str:
    import datetime as dt

    e = html.escape
    v = result.verdict
    verdicts = {f.name: f for f in v.features}
    rows = "".join(_row(s, verdicts.get(s.name), plots.get(s.name)) for s in result.stats.features)
    if result.stats.prediction is not None:
        rows += _row(result.stats.prediction, v.prediction, plots.get("(prediction)"))
    when = [dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for t in (result.start_s, result.end_s)]
    images = "".join(f'<figure><img src="{e(p)}" alt="{e(n)}"></figure>' for n, p in plots.items())
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    fs = result.feature_set
    ref = result.prediction_reference
    ref_text = "" if not ref else (
        f" · prediction reference: first {e(str(ref.get('length')))} of v{result.version}'s telemetry from "
        f"{dt.datetime.fromtimestamp(ref['start_s'], dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S')} UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(result.model)} v{result.version} — drift {e(result.stamp)}</title>
<style>{_CSS}</style></head><body>
<h1>{e(result.model)} v{result.version} drift <span class="badge {v.status.value}">{e(v.status.value.replace('_', ' ').upper())}</span></h1>
<p class="sub">window {e(result.window)}: {when[0]} → {when[1]} UTC · {result.rows:,} rows from {result.files} telemetry files ·
reference: feature set {e(str(fs.get('name')))} v{e(str(fs.get('version')))}{ref_text}</p>
<ul>{''.join(f'<li>{e(r)}</li>' for r in v.reasons)}</ul>
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<h2>Features</h2>
<table><tr><th>feature</th><th>kind</th><th>values</th><th>null live / ref</th><th>PSI</th><th>test</th><th>p-value</th>
<th>verdict</th><th>why</th></tr>{rows}</table>
{performance_html(result.stats.performance, v.performance)}
<h2>Drift scores over time</h2><p class="sub">PSI of this check and the {checks - 1} before it.</p>
<img src="scores-over-time.png" alt="PSI over time">
<h2>Reference vs live</h2><div class="plots">{images}</div>
<p class="sub">Thresholds: {e(', '.join(f'{k}={val}' for k, val in result.policy.items() if k != 'features'))} ·
raw numbers: <a href="{RESULT_FILE}">{RESULT_FILE}</a></p>
</body></html>
"""
