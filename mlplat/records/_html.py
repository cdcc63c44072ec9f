"""Records as tables: ``_repr_html_`` for Jupyter, and the flattening the CLI's metric tables share.

One row per field; nested mappings by dotted name (``validation.auc``); lists of mappings
(a dataset's columns, a run's epoch history) as a table inside the cell; floats to 4
significant digits; ``*_at`` / ``ts`` timestamps as UTC times. Every value is escaped with
:func:`html.escape`, so a record can hold any text (an error message, a user's tag).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

__all__ = ["format_value", "flatten", "html_table", "record_html", "MAX_CELL_CHARS", "MAX_NESTED_ROWS"]

#: A longer value is cut (with "...") so that one error message does not fill the screen.
MAX_CELL_CHARS = 400
#: Rows shown of a list inside a cell (a run's history, a dataset's partitions); the rest are counted.
MAX_NESTED_ROWS = 50

_STYLE = "border-collapse:collapse"
_CELL = 'style="text-align:left;vertical-align:top;padding:2px 8px"'


def format_value(value: Any) -> str:
    """A value as short text: floats to 4 significant digits, ints whole, booleans lower case,
    None empty, lists comma-separated, mappings as compact JSON.

    >>> format_value(0.912345), format_value(123456), format_value(1234.5678), format_value(True)
    ('0.9123', '123456', '1235', 'true')
    >>> format_value(None), format_value(["a", 0.5]), format_value({"b": 1})
    ('', 'a, 0.5', '{"b": 1}')
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(_plain(value), sort_keys=True, default=str)
    return str(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``(dotted name, value)`` pairs, in the mapping's order; an empty
    nested mapping keeps its name (value ``{}``).

    >>> flatten({"auc": 0.9, "validation": {"auc": 0.8, "slices": {"de": 0.7}}})
    [('auc', 0.9), ('validation.auc', 0.8), ('validation.slices.de', 0.7)]
    """
    pairs: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten(value, f"{name}."))
        else:
            pairs.append((name, value))
    return pairs


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    """An HTML table of plain values (each formatted with :func:`format_value`, then escaped).

    >>> "<td" in html_table(["name"], [["<b>"]]), "&lt;b&gt;" in html_table(["name"], [["<b>"]])
    (True, True)
    """
    return _table([html.escape(str(h)) for h in headers], [[_text(format_value(c)) for c in row] for row in rows],
                  None if caption is None else html.escape(caption))


def record_html(obj: Any, title: str | None = None) -> str:
    """A pydantic model or a dataclass as a two-column table (field, value), empty fields left
    out, captioned with its type, name, version and state where it has them."""
    data = _plain(obj)
    if not isinstance(data, dict):
        return html_table(["value"], [[data]], title)
    rows: list[list[str]] = []
    for key, value in data.items():
        if _empty(value):
            continue
        if isinstance(value, dict):
            rows.extend([html.escape(name), _cell(name, v)] for name, v in flatten(value, f"{key}.") if not _empty(v))
        else:
            rows.append([html.escape(key), _cell(key, value)])
    return _table(["field", "value"], rows, html.escape(title or _caption(obj, data)))


def _plain(value: Any) -> Any:
    """JSON-like data: models dumped (secrets stay masked), dataclasses to dicts, enums to values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | dict) and len(value) == 0)


def _caption(obj: Any, data: dict[str, Any]) -> str:
    parts = [type(obj).__name__]
    name = data.get("name") or data.get("model") or data.get("run_id")
    if isinstance(name, str):
        parts.append(name)
    if isinstance(data.get("version"), int):
        parts.append(f"v{data['version']}")
    state = data.get("state")
    if isinstance(state, str):
        parts.append(f"· {state}")
    return " ".join(parts)


def _cell(name: str, value: Any) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if (leaf == "ts" or leaf.endswith("_at")) and isinstance(value, int | float) and not isinstance(value, bool):
        return _text(_utc(float(value)))
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _nested(value)
    return _text(format_value(value))


def _nested(items: list[dict[str, Any]]) -> str:
    """A list of mappings (columns, partitions, epochs) as a table: one row each."""
    headers: list[str] = []
    for item in items[:MAX_NESTED_ROWS]:
        headers.extend(k for k in item if k not in headers)
    rows = [[_text(format_value(item.get(h))) for h in headers] for item in items[:MAX_NESTED_ROWS]]
    if len(items) > MAX_NESTED_ROWS:
        rows.append([_text(f"... {len(items) - MAX_NESTED_ROWS} more")] + [""] * (len(headers) - 1))
    return _table([html.escape(h) for h in headers], rows)


def _utc(ts_s: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(ts_s, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return format_value(ts_s)


def _text(text: str) -> str:
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 3] + "..."
    return html.escape(text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> str:
    """Headers and cells are HTML already (escaped by the callers)."""
    head = "".join(f"<th {_CELL}>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td {_CELL}>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f'<caption style="text-align:left;font-weight:bold">{caption}</caption>' if caption else ""
    return f'<table class="mlplat" style="{_STYLE}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
