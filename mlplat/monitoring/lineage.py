"""The lineage of one model version as one graph (docs/lineage.md).

``build_lineage(registry, name, version)`` reads the registry only, and returns a
:class:`LineageGraph` that goes from left to right:

    dataset partitions -> feature set -> run -> version -> validation -> deployments
        -> drift checks -> alarms -> the retrain they caused -> the next version

Every stage comes from a registry record or event:

- **dataset_partition**: the catalog entry (``catalog_get("dataset", ...)``) of the feature
  set's ``source``, narrowed to the feature set's ``spec.partitions`` range (the same rule as
  ``mlplat.data.dataset_files``), plus any other ``ModelVersion.datasets``;
- **feature_set**: ``ModelVersion.feature_set`` and its catalog entry (``feature_set``);
- **run**: ``ModelVersion.run_id`` and ``get_run`` (a run trained in-process without the
  queue has no run record: the node says so);
- **version**: ``get_version`` (NotFound for an unknown model or version) and ``aliases``;
- **validation**: the version's ``state_changed`` events (``to`` VALIDATING, then VALIDATED or
  REJECTED), ``version_reviewed`` events, ``extra.validation``, ``metrics.validation`` and
  ``artifacts.validation_report``;
- **deployment**: ``list_deployments(name=...)`` (plus ``get_deployment`` for an older one
  named by an event) and the events ``deployment_started``, ``deployment_forced``,
  ``canary_started``, ``promoted``, ``rolled_back``, ``canary_rolled_back``,
  ``deployment_failed`` (payload ``deployment``, ``from_version``/``to_version``); a
  ``promoted`` event without a deployment (``mlplat models promote``) is a manual deployment;
- **drift**: ``drift_checked`` events (payload ``drifted``, the features in
  ``drifted_features``/``features``, ``window``, ``start_s``/``end_s``, ``rows``, ``status``,
  ``prediction_drifted``, ``report``/``report_path``): one node per check that drifted, or one
  summary node when none did;
- **alarm**: ``alarm_raised`` events (payload ``alarm`` -- else ``name``/``rule``/``metric`` --,
  ``severity``, ``message``/``reason``, and the cause, below);
- **retrain**: ``retrain_requested``, ``retrain_approved``/``retrain_dismissed``,
  ``retrain_started``, ``retrain_failed`` (``stage``, ``error``), ``retrain_skipped``,
  ``retrain_validated`` (``state``) and ``retrain_rejected``, grouped into one node per retrain:
  by ``request_id`` (the seq of its ``retrain_requested``) or ``retrain_id``, else
  ``request_seq``, else the same ``run_id``, else the same cause while the retrain is open,
  else (no link at all) the open request before it. Also read: ``trigger``, ``reason``,
  ``by``;
- **next_version**: the version the retrain's run produced (``get_run(run_id).version``, else
  the version whose ``run_id`` is that run). A run whose ``request`` carries ``cause`` or
  ``caused_by`` naming a drift, alarm or retrain event of this graph is a retrain too, even
  without retrain events. The run node of a version shows what caused it: its request's
  ``cause``, else the version's ``extra.retrain.cause``.

**Causes.** An event names the event that caused it by seq in any of ``cause_seq``,
``caused_by_seq``, ``trigger_seq``, ``drift_seq``, ``alarm_seq``, ``event_seq``, or in
``cause``/``caused_by``/``trigger`` (an int, ``"seq:42"``/``"42"``, or a dict with ``seq``
and ``kind``); the kind also in ``cause_kind``/``caused_by_kind``/``trigger_kind``. A payload's
``details`` mapping (``raise_alarm`` puts the caller's facts there) is read too. Every key is
read with ``.get``: a missing one just leaves a link out. An ``alarm_raised`` whose ``alarm``
is ``retrain_*`` (or whose cause is a retrain event) is shown on that retrain's node.

**Which version a monitoring event belongs to.** A drift check, an alarm or a retrain is this
version's when its cause is a drift check or alarm of this version; else by ``Event.version``,
payload ``version`` or ``model_version`` (``from_version``/``source_version`` too for a retrain,
whose ``version`` names the version it produced and is skipped); else the version that held the
global ``production`` alias when the event was written, replayed from ``promoted``,
``rolled_back``, ``alias_moved`` and ``alias_removed``. An alarm about a retrain is shown only on
its retrain's node.

Work is bounded: the model's events are paged (1,000 a call) with ``kinds=`` filtering, up to
``max_events``; at most :data:`MAX_NODES_PER_STAGE` drift checks, alarms and retrains, and
:data:`MAX_PARTITIONS` partitions per dataset, are drawn (the rest are counted).

Rendering is pure: :func:`to_text` (one line per node, indented by depth), :func:`to_json` /
:func:`from_json`, :func:`to_svg` (a hand-written SVG, no dependency).

The code: :mod:`mlplat.monitoring.lineage_graph` (the records: nodes, edges, the graph, and the
base of the builder), :mod:`mlplat.monitoring.lineage_sources` (the event kinds, keys and bounds,
reading payloads and causes, and the stages drawn from registry records),
:mod:`mlplat.monitoring.lineage_monitor` (drift, alarms, retrains, the next version) and
:mod:`mlplat.monitoring.lineage_render`; this module builds the graph and re-exports their public
names.
"""

from __future__ import annotations

from mlplat.monitoring.lineage_graph import STAGES, LineageEdge, LineageGraph, LineageNode
from mlplat.monitoring.lineage_monitor import _MonitorStages, _ProductionReplay
from mlplat.monitoring.lineage_render import FORMAT as FORMAT
from mlplat.monitoring.lineage_render import from_json, to_json, to_svg, to_text
from mlplat.monitoring.lineage_sources import ALARM_KIND as ALARM_KIND
from mlplat.monitoring.lineage_sources import ALIAS_KINDS as ALIAS_KINDS
from mlplat.monitoring.lineage_sources import CAUSE_KEYS as CAUSE_KEYS
from mlplat.monitoring.lineage_sources import CAUSE_KIND_KEYS as CAUSE_KIND_KEYS
from mlplat.monitoring.lineage_sources import CAUSE_SEQ_KEYS as CAUSE_SEQ_KEYS
from mlplat.monitoring.lineage_sources import DEPLOYMENT_KINDS as DEPLOYMENT_KINDS
from mlplat.monitoring.lineage_sources import DRIFT_KIND as DRIFT_KIND
from mlplat.monitoring.lineage_sources import EVENT_KINDS, MAX_EVENTS
from mlplat.monitoring.lineage_sources import MAX_DEPLOYMENTS as MAX_DEPLOYMENTS
from mlplat.monitoring.lineage_sources import MAX_NODES_PER_STAGE as MAX_NODES_PER_STAGE
from mlplat.monitoring.lineage_sources import MAX_PARTITIONS as MAX_PARTITIONS
from mlplat.monitoring.lineage_sources import PAGE as PAGE
from mlplat.monitoring.lineage_sources import REQUEST_SEQ_KEYS as REQUEST_SEQ_KEYS
from mlplat.monitoring.lineage_sources import RETRAIN_ID_KEYS as RETRAIN_ID_KEYS
from mlplat.monitoring.lineage_sources import RETRAIN_KINDS as RETRAIN_KINDS
from mlplat.monitoring.lineage_sources import VALIDATION_KINDS as VALIDATION_KINDS
from mlplat.monitoring.lineage_sources import cause_of as cause_of
from mlplat.registry.protocol import Registry

__all__ = [
    "LineageNode",
    "LineageEdge",
    "LineageGraph",
    "STAGES",
    "EVENT_KINDS",
    "build_lineage",
    "to_text",
    "to_json",
    "from_json",
    "to_svg",
]

#: ``doctest.testmod`` of this module finds only the doctests of what is defined here: the
#: doctests of the functions that live in the ``lineage_*`` modules are listed here too.
__test__ = {"cause_of": cause_of}


def build_lineage(registry: Registry, name: str, version: int, *, max_events: int = MAX_EVENTS) -> LineageGraph:
    """The lineage graph of ``name`` v``version``; the registry's NotFound for an unknown one."""
    mv = registry.get_version(name, int(version))
    return _Builder(registry, mv, max_events).build()


# -- the builder -----------------------------------------------------------------------------


class _Builder(_MonitorStages):
    """Builds one version's graph: :class:`~mlplat.monitoring.lineage_sources._RecordStages` reads
    the registry and draws the stages from its records, :class:`~mlplat.monitoring.lineage_monitor._MonitorStages`
    the monitoring stages from its events."""

    def build(self) -> LineageGraph:
        events = self._events()
        feeds = self._upstream()
        vid = self._version(feeds)
        gate = self._validation(events, vid)
        serving = self._deployments(events, vid, gate)
        owner = _ProductionReplay(events)
        monitored = self._drift(events, owner, serving, vid)
        self._alarms(events, owner, serving, monitored, vid)
        self._retrains(events, owner, serving, vid)
        return self.g
