"""Monitoring commands: ``mlplat monitor drift NAME [--window 1h] [--version N] [--end T] [--json]``."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import click

from mlplat.cli._format import json_option, table
from mlplat.errors import ValidationError

__all__ = ["group", "drift", "parse_end"]


#: Unix seconds of 3000-01-01T00:00:00Z: a later ``--end`` is a unit mistake (milliseconds), not a time.
MAX_END_S = 32_503_680_000.0


def _plausible(text: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValidationError(f"--end {text!r}: not a finite number; expected unix seconds or an ISO 8601 time such "
                              "as 2026-11-30T12:00:00Z")
    if value > MAX_END_S:
        hint = (f"; it looks like milliseconds: divide by 1000 ({value / 1000:.0f})" if value / 1000 <= MAX_END_S
                else "; it looks like micro- or nanoseconds: give unix seconds")
        raise ValidationError(f"--end {text!r}: {value:.0f} is after the year 3000{hint}")
    if value < 0:
        raise ValidationError(f"--end {text!r}: {value:g} is before 1970-01-01; expected unix seconds or an ISO 8601 time")
    return value


def parse_end(text: str | None) -> float | None:
    """``--end``: unix seconds, or an ISO 8601 time (UTC when it names no zone). Not finite,
    before 1970 or after the year 3000 (epoch milliseconds, say) is a ValidationError naming the
    value.

    >>> parse_end("1700000000"), parse_end("2023-11-14T22:13:20Z")
    (1700000000.0, 1700000000.0)
    >>> parse_end("1700000000000")
    Traceback (most recent call last):
    ...
    mlplat.errors.ValidationError: --end '1700000000000': 1700000000000 is after the year 3000; it looks like milliseconds: divide by 1000 (1700000000)
    """
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return _plausible(text, value)
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"--end {text!r}: expected unix seconds or an ISO 8601 time such as 2026-11-30T12:00:00Z") from None
    try:
        value = (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()
    except (OverflowError, ValueError, OSError):
        raise ValidationError(f"--end {text!r}: not a representable time") from None
    return _plausible(text, value)


@click.group("monitor")
def group() -> None:
    """Monitoring: drift of live traffic against the training reference."""


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _iso(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _performance_lines(s: Any, pv: Any) -> list[str]:
    """The performance table (one row: the metric on the window's outcomes against its
    validation value) and why it was not judged; nothing without outcomes."""
    if s is None:
        return []
    drifted = "-" if pv is None or pv.drifted is None else ("YES" if pv.drifted else "no")
    row = [s.metric or "-", f"{s.rows:,}", _num(s.live), _num(s.reference), _num(None if pv is None else pv.drop),
           _num(None if pv is None else pv.threshold), drifted]
    out = [table(["PERFORMANCE", "OUTCOMES", "LIVE", "VALIDATION", "WORSE BY", "MAX DROP", "DRIFTED"], [row]), ""]
    reasons = pv.reasons if pv is not None else ((s.note,) if s.note else ())
    if reasons and (pv is None or pv.drifted is None):  # a judged one is among the verdict's reasons
        out.append(f"  performance: not judged: {'; '.join(reasons)}")
    return out


def render(result: Any) -> str:
    """What ``mlplat monitor drift`` prints: a header, the verdict, one row per feature, the
    reasons of drifted and unjudged features, the performance on the window's outcomes (where
    there are outcomes), and the report."""
    v = result.verdict
    lines = [f"{result.model} v{result.version} · window {result.window}: {_iso(result.start_s)} -> {_iso(result.end_s)} "
             f"· {result.rows:,} rows · {v.status.value.replace('_', ' ').upper()}"]
    lines += [f"  {r}" for r in v.reasons]
    verdicts = {f.name: f for f in v.features}
    pairs = [(s, verdicts.get(s.name)) for s in result.stats.features]
    if result.stats.prediction is not None:
        pairs.append((result.stats.prediction, v.prediction))
    rows = []
    for s, fv in pairs:
        test, score, p = (("KS D", s.ks_statistic, s.ks_pvalue) if s.kind == "numeric"
                          else ("chi2 w", s.chi2_effect, s.chi2_pvalue) if s.kind == "categorical" else ("-", None, None))
        drifted = "-" if fv is None or fv.drifted is None else ("YES" if fv.drifted else "no")
        name = "(prediction)" if s is result.stats.prediction else s.name
        rows.append([name, s.kind or "-", f"{s.values:,}", "-" if s.null_rate is None else f"{s.null_rate:.1%}",
                     _num(s.psi), test, _num(score), _num(p), drifted])
    lines += ["", table(["FEATURE", "KIND", "VALUES", "NULL", "PSI", "TEST", "SCORE", "P-VALUE", "DRIFTED"], rows), ""]
    for s, fv in pairs:
        if fv is not None and fv.drifted is not False and fv.reasons:
            label = "(prediction)" if s is result.stats.prediction else s.name
            lines.append(f"  {label}: {'not judged: ' if fv.drifted is None else ''}{'; '.join(fv.reasons)}")
    lines += _performance_lines(result.stats.performance, v.performance)
    lines += [f"  note: {n}" for n in result.notes]
    lines.append(f"report: {result.report}/index.html")
    return "\n".join(lines)


@group.command("drift")
@click.argument("name")
@click.option("--window", default=None, help="Window length: 15m, 1h, 24h, 7d (default: the model's monitoring policy, 1h).")
@click.option("--version", type=int, default=None, help="Model version (default: production, else the latest).")
@click.option("--end", default=None, help="Window end: unix seconds or ISO 8601 (UTC unless zoned); default now.")
@json_option
@click.pass_obj
def drift(lazy: Any, name: str, window: str | None, version: int | None, end: str | None, as_json: bool) -> None:
    """Drift of NAME's live traffic over a window, with a report."""
    result = lazy.get().drift(name, window=window, version=version, end=parse_end(end))
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        click.echo(render(result))


def _register_outcomes() -> None:
    from mlplat.cli.monitor_outcomes import outcomes

    group.add_command(outcomes)


_register_outcomes()
