"""The lineage graph's records (:mod:`mlplat.monitoring.lineage`, docs/lineage.md): the stages,
nodes, edges and graph, the JSON-safe value helpers every part uses, and the base of the builder
that adds nodes and edges to a graph while it is built."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplat.records import ModelVersion
from mlplat.registry.protocol import Registry

#: Node kinds, in their left-to-right order.
STAGES: tuple[str, ...] = ("dataset_partition", "feature_set", "run", "version", "validation", "deployment",
                           "drift", "alarm", "retrain", "next_version")


# -- the graph -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineageNode:
    """One box: ``id`` (unique in the graph), ``kind`` (one of :data:`STAGES`), a one-line
    ``label`` and JSON-safe ``attributes`` (``ts``: when it happened, if known)."""

    id: str
    kind: str
    label: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageEdge:
    """``source`` -> ``target``: ``materialized_into``, ``input_to``, ``produced``, ``validated_by``,
    ``deployed_as``, ``monitored``, ``raised``, ``triggered``."""

    source: str
    target: str
    kind: str


@dataclass
class LineageGraph:
    """The lineage of ``name`` v``version``; ``notes`` say what could not be read or was cut."""

    name: str
    version: int
    nodes: list[LineageNode] = field(default_factory=list)
    edges: list[LineageEdge] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def node(self, node_id: str) -> LineageNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def of_kind(self, kind: str) -> list[LineageNode]:
        return [n for n in self.nodes if n.kind == kind]

    def parents(self, node_id: str) -> list[str]:
        return [e.source for e in self.edges if e.target == node_id]

    def children(self, node_id: str) -> list[str]:
        return [e.target for e in self.edges if e.source == node_id]


# -- small helpers ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe copy (records and odd values become text)."""
    return json.loads(json.dumps(value, default=str))


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return ""
    try:
        return _dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""


def _short(text: str, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- building a graph ------------------------------------------------------------------------


class _GraphBuilder:
    """The base of the lineage builder: the registry, the version, the graph being built, and
    adding nodes and edges to it. The stages are added by :class:`~mlplat.monitoring.lineage_sources._RecordStages`
    and :class:`~mlplat.monitoring.lineage_monitor._MonitorStages`."""

    def __init__(self, registry: Registry, mv: ModelVersion, max_events: int):
        self.reg, self.mv, self.max_events = registry, mv, max(1, int(max_events))
        self.name, self.v = mv.name, mv.version
        self.g = LineageGraph(name=mv.name, version=mv.version)
        self._ids: set[str] = set()

    # graph construction
    def add(self, node_id: str, kind: str, label: str, /, **attrs: Any) -> str:
        if node_id not in self._ids:
            self._ids.add(node_id)
            self.g.nodes.append(LineageNode(node_id, kind, label, _plain({k: v for k, v in attrs.items() if v is not None})))
        return node_id

    def link(self, source: str | None, target: str, kind: str) -> None:
        if source is None or source == target:
            return
        edge = LineageEdge(source, target, kind)
        if edge not in self.g.edges:
            self.g.edges.append(edge)

    def note(self, text: str) -> None:
        if text not in self.g.notes:
            self.g.notes.append(text)

    def _replace(self, node: LineageNode, *, label: str | None = None, **attrs: Any) -> None:
        i = self.g.nodes.index(node)
        self.g.nodes[i] = LineageNode(node.id, node.kind, label if label is not None else node.label,
                                      {**node.attributes, **_plain(attrs)})

    def _attach(self, parent: str, child: str, kind: str) -> str:
        self.link(parent, child, kind)
        return child

    @staticmethod
    def _serving_at(serving: Sequence[tuple[float, str]], ts: float, fallback: str) -> str:
        if not serving:
            return fallback
        before = [nid for start, nid in serving if start <= ts]
        return before[-1] if before else serving[0][1]
