"""Rendering a lineage graph (:mod:`mlplat.monitoring.lineage`, docs/lineage.md), pure:
:func:`to_text` (one line per node, indented by depth), :func:`to_json` / :func:`from_json`,
:func:`to_svg` (a hand-written SVG, no dependency)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from mlplat.monitoring.lineage_graph import STAGES, LineageEdge, LineageGraph, LineageNode, _plain, _when

FORMAT = "mlplat.lineage/1"
_TITLES = {"dataset_partition": "partition", "feature_set": "feature set", "run": "run", "version": "version",
           "validation": "validation", "deployment": "deployment", "drift": "drift", "alarm": "alarm",
           "retrain": "retrain", "next_version": "next version"}


def _order(graph: LineageGraph) -> tuple[list[LineageNode], dict[str, int]]:
    """Nodes in reading order (a node after all its parents, depth first) and their depth
    (the longest path from a root)."""
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    parents: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    children: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for e in graph.edges:
        if e.source in index and e.target in index:
            parents[e.target].append(e.source)
            children[e.source].append(e.target)
    stage = {k: i for i, k in enumerate(STAGES)}

    def key(nid: str) -> tuple[int, float, int]:
        n = graph.nodes[index[nid]]
        ts = n.attributes.get("ts")
        return stage.get(n.kind, len(STAGES)), float(ts) if isinstance(ts, int | float) else 0.0, index[nid]

    for nid in children:
        children[nid].sort(key=key)
    done: set[str] = set()
    order: list[str] = []
    depth: dict[str, int] = {}
    stack = sorted((nid for nid, ps in parents.items() if not ps), key=key, reverse=True)
    while stack:
        nid = stack.pop()
        if nid in done:
            continue
        done.add(nid)
        order.append(nid)
        depth[nid] = max((depth.get(p, 0) + 1 for p in parents[nid]), default=0)
        stack.extend(reversed([c for c in children[nid] if c not in done and all(p in done for p in parents[c])]))
    for n in graph.nodes:  # never happens for a graph built here (no cycles); keep every node anyway
        if n.id not in done:
            order.append(n.id)
            depth[n.id] = 0
    return [graph.nodes[index[nid]] for nid in order], depth


def to_text(graph: LineageGraph) -> str:
    """An indented tree, one line per node (after a title line, before any notes)."""
    nodes, depth = _order(graph)
    lines = [f"lineage of {graph.name} v{graph.version}"]
    for n in nodes:
        d = depth[n.id]
        when = _when(n.attributes.get("ts"))
        prefix = "" if d == 0 else "   " * (d - 1) + "└─ "
        lines.append(f"{prefix}{_TITLES.get(n.kind, n.kind)}: {n.label}" + (f"  [{when}]" if when else ""))
    lines += [f"note: {text}" for text in graph.notes]
    return "\n".join(lines)


def to_json(graph: LineageGraph) -> dict[str, Any]:
    """The graph as plain JSON (``format`` ``mlplat.lineage/1``); :func:`from_json` reads it back."""
    return {
        "format": FORMAT,
        "model": graph.name,
        "version": graph.version,
        "stages": list(STAGES),
        "nodes": [{"id": n.id, "kind": n.kind, "label": n.label, "attributes": _plain(n.attributes)} for n in graph.nodes],
        "edges": [{"source": e.source, "target": e.target, "kind": e.kind} for e in graph.edges],
        "notes": list(graph.notes),
        "summary": _plain(graph.summary),
    }


def from_json(data: Mapping[str, Any]) -> LineageGraph:
    if data.get("format") != FORMAT:
        raise ValueError(f"not a lineage document (format {data.get('format')!r}, expected {FORMAT!r})")
    return LineageGraph(
        name=str(data["model"]), version=int(data["version"]),
        nodes=[LineageNode(str(n["id"]), str(n["kind"]), str(n["label"]), dict(n.get("attributes") or {}))
               for n in data.get("nodes") or []],
        edges=[LineageEdge(str(e["source"]), str(e["target"]), str(e["kind"])) for e in data.get("edges") or []],
        notes=[str(x) for x in data.get("notes") or []], summary=dict(data.get("summary") or {}),
    )


_COLORS = {"dataset_partition": "#e8f1fb", "feature_set": "#e3f4ea", "run": "#fdf3dc", "version": "#ffe4cc",
           "validation": "#eee6fa", "deployment": "#dff5f5", "drift": "#fde2e2", "alarm": "#fbd0d0",
           "retrain": "#fff1c9", "next_version": "#ffe4cc"}
_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN, _TOP = 190, 46, 46, 14, 16, 34


def to_svg(graph: LineageGraph) -> str:
    """A small standalone SVG: one column per stage present, left to right, a box per node
    (its kind, its label cut to fit; the whole label as a tooltip) and an arrow per edge."""
    nodes, _ = _order(graph)
    columns = [k for k in STAGES if any(n.kind == k for n in nodes)]
    columns += sorted({n.kind for n in nodes} - set(columns))
    pos: dict[str, tuple[int, int]] = {}
    rows = [0] * len(columns)
    for n in nodes:
        c = columns.index(n.kind)
        pos[n.id] = (_MARGIN + c * (_BOX_W + _GAP_X), _TOP + rows[c] * (_BOX_H + _GAP_Y))
        rows[c] += 1
    width = _MARGIN * 2 + max(1, len(columns)) * (_BOX_W + _GAP_X) - _GAP_X
    height = _TOP + max([1, *rows]) * (_BOX_H + _GAP_Y) + _MARGIN  # the last row's edge lane too
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif">',
        f"<title>{escape(f'lineage of {graph.name} v{graph.version}')}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_MARGIN}" y="22" font-size="14" font-weight="bold">{escape(f"lineage of {graph.name} v{graph.version}")}</text>',
    ]
    for e in graph.edges:
        if e.source not in pos or e.target not in pos:
            continue
        (x1, top1), (x2, top2) = pos[e.source], pos[e.target]
        x1, y1, y2 = x1 + _BOX_W, top1 + _BOX_H // 2, top2 + _BOX_H // 2
        if x2 - x1 <= _GAP_X:  # next column: one curve
            mid = (x1 + x2) // 2
            d = f"M {x1} {y1} C {mid} {y1}, {mid} {y2}, {x2} {y2}"
        else:  # skips columns: along the gap under the lower row, so it never crosses a box
            lane, a, b = max(top1, top2) + _BOX_H + _GAP_Y // 2, x1 + _GAP_X // 2, x2 - _GAP_X // 2
            d = (f"M {x1} {y1} C {a} {y1}, {x1} {lane}, {a} {lane} L {b} {lane} "
                 f"C {x2} {lane}, {b} {y2}, {x2} {y2}")
        out.append(f'<path class="edge" data-kind={quoteattr(e.kind)} d="{d}" '
                   'fill="none" stroke="#555" stroke-width="1.2" marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = pos[n.id]
        label = n.label if len(n.label) <= 30 else n.label[:29] + "…"
        out.append(
            f'<g class="node" data-id={quoteattr(n.id)} data-kind={quoteattr(n.kind)}>'
            f"<title>{escape(n.label)}</title>"
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="6" fill="{_COLORS.get(n.kind, "#f2f2f2")}" '
            'stroke="#777"/>'
            f'<text x="{x + 8}" y="{y + 17}" font-size="11" font-weight="bold">{escape(_TITLES.get(n.kind, n.kind))}</text>'
            f'<text x="{x + 8}" y="{y + 35}" font-size="10">{escape(label)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
