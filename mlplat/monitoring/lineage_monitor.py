"""The monitoring stages of the lineage graph (:mod:`mlplat.monitoring.lineage`, docs/lineage.md),
drawn from the model's events: drift checks -> alarms -> the retrains they caused -> the version
each retrain produced; and which version held ``production`` when an event was written."""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplat.errors import MlplatError, NotFound
from mlplat.monitoring.lineage_graph import _plain, _short, _when
from mlplat.monitoring.lineage_sources import (
    ALARM_KIND,
    ALIAS_KINDS,
    DRIFT_KIND,
    MAX_DEPLOYMENTS,
    MAX_NODES_PER_STAGE,
    REQUEST_SEQ_KEYS,
    RETRAIN_ID_KEYS,
    RETRAIN_KINDS,
    _first,
    _int,
    _map,
    _path,
    _RecordStages,
    _scalars,
    _view,
    cause_of,
)
from mlplat.records import Event, ModelVersion, Run
from mlplat.registry.protocol import Registry

#: A retrain whose last event is one of these takes no later event without an explicit link.
_RETRAIN_CLOSED = ("retrain_dismissed", "retrain_started", "retrain_failed", "retrain_skipped", "retrain_validated",
                   "retrain_rejected")


# -- reading monitoring payloads ------------------------------------------------------------


def _names(value: Any, limit: int = 50) -> list[str]:
    """Feature names out of a list of names, a list of dicts, or a dict keyed by name."""
    if isinstance(value, Mapping):
        return [str(k) for k in list(value)[:limit]]
    if isinstance(value, list | tuple):
        out = []
        for v in value[:limit]:
            if isinstance(v, Mapping):
                n = v.get("name") or v.get("feature") or v.get("column")
                if n is not None:
                    out.append(str(n))
            else:
                out.append(str(v))
        return out
    return [str(value)] if isinstance(value, str) and value else []


def _window(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        start = _first(value, ("start", "from", "begin"))
        end = _first(value, ("end", "to", "until"))
        if start is not None or end is not None:
            return f"{start if start is not None else '…'}..{end if end is not None else '…'}"
        return json.dumps(_plain(value), sort_keys=True)
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}..{value[1]}"
    return str(value)


# -- the monitoring stages ------------------------------------------------------------------


@dataclass
class _Retrain:
    events: list[Event] = field(default_factory=list)
    cause_seq: int | None = None
    cause_kind: str | None = None
    run_id: str | None = None
    key: str | None = None
    from_run_request: bool = False

    @property
    def first(self) -> Event | None:
        return self.events[0] if self.events else None

    @property
    def closed(self) -> bool:
        return any(e.kind in _RETRAIN_CLOSED for e in self.events)


class _MonitorStages(_RecordStages):
    """The stages drawn from the model's monitoring events, on top of those drawn from records."""

    def __init__(self, registry: Registry, mv: ModelVersion, max_events: int):
        super().__init__(registry, mv, max_events)
        self._monitor: dict[int, str] = {}  # event seq -> node id, for every drift and alarm node
        self._retrain_alarms: list[Event] = []
        self._retrain_events: list[Event] = []

    # monitoring: drift, alarms, retrains --------------------------------------------------------
    def _owned(self, e: Event, owner: _ProductionReplay, extra_keys: Sequence[str] = (), exclude: int | None = None) -> bool:
        p = _view(e.payload)
        explicit = [e.version, *(_int(p.get(k)) for k in ("version", "model_version", *extra_keys))]
        for v in explicit:
            if v is not None and v != exclude:
                return bool(v == self.v)
        return owner.at(e.seq) == self.v

    def _drift(self, events: Sequence[Event], owner: _ProductionReplay, serving: Sequence[tuple[float, str]],
               vid: str) -> dict[int, str]:
        checks = [e for e in events if e.kind == DRIFT_KIND and self._owned(e, owner)]
        drifted = [e for e in checks if bool(_view(e.payload).get("drifted"))]
        self.g.summary.update(drift_checks=len(checks), drifted_checks=len(drifted))
        nodes: dict[int, str] = {}
        for e in drifted[:MAX_NODES_PER_STAGE]:
            p = _view(e.payload)
            feats = _names(_first(p, ("drifted_features", "features", "columns")))
            window = _window(p.get("window"))
            report = _path(_first(p, ("report", "report_path")))
            bits = [f"seq {e.seq}", "drifted" + (": " + ", ".join(feats[:5]) + (f" +{len(feats) - 5}" if len(feats) > 5 else "")
                                                 if feats else "")]
            if window:
                end = _when(p.get("end_s"))
                bits.append(f"window {window}" + (f" to {end}" if end else ""))
            if isinstance(p.get("rows"), int):
                bits.append(f"{p['rows']:,} rows")
            if p.get("prediction_drifted"):
                bits.append("predictions drifted")
            if report:
                bits.append(f"report {report}")
            nid = self.add(f"drift:{e.seq}", "drift", " · ".join(bits), seq=e.seq, drifted=True, features=feats or None,
                           window=window, start_s=p.get("start_s"), end_s=p.get("end_s"), rows=p.get("rows"),
                           status=p.get("status"), prediction_drifted=p.get("prediction_drifted"), report=report,
                           score=_first(p, ("score", "max_score", "psi")), ts=e.ts)
            self.link(self._serving_at(serving, e.ts, vid), nid, "monitored")
            nodes[e.seq] = nid
        if len(drifted) > MAX_NODES_PER_STAGE:
            self.note(f"{len(drifted)} drift checks drifted; the first {MAX_NODES_PER_STAGE} are drawn")
        if checks and not drifted:
            last = checks[-1]
            nid = self.add(f"drift:checks:{self.v}", "drift", f"{len(checks)} checks · no drift · last seq {last.seq}",
                           checks=len(checks), drifted=False, last_seq=last.seq, window=_window(last.payload.get("window")),
                           ts=last.ts)
            self.link(self._serving_at(serving, last.ts, vid), nid, "monitored")
        return nodes

    def _alarms(self, events: Sequence[Event], owner: _ProductionReplay, serving: Sequence[tuple[float, str]],
                drift: dict[int, str], vid: str) -> None:
        self._monitor.update(drift)
        count = 0
        for e in events:
            if e.kind != ALARM_KIND:
                continue
            p = _view(e.payload)
            cause_seq, _ = cause_of(p)
            if str(p.get("alarm") or "").startswith("retrain") or self._kinds.get(cause_seq or -1, "").startswith("retrain"):
                self._retrain_alarms.append(e)  # about a retrain: shown on that retrain's node, if it is ours
                continue
            if not (cause_seq in drift or self._owned(e, owner)):
                continue
            count += 1
            if count > MAX_NODES_PER_STAGE:
                continue
            what = _first(p, ("alarm", "name", "rule", "metric", "kind"))
            bits = [f"seq {e.seq}", str(what) if what else "alarm"]
            if p.get("severity"):
                bits.append(str(p["severity"]))
            msg = _first(p, ("message", "reason"))
            feats = _names(p.get("drifted_features"))
            if msg is None and feats:
                msg = "drifted: " + ", ".join(feats[:5]) + (f" +{len(feats) - 5}" if len(feats) > 5 else "")
            if msg:
                bits.append(_short(str(msg), 60))
            nid = self.add(f"alarm:{e.seq}", "alarm", " · ".join(bits), seq=e.seq, alarm=what, severity=p.get("severity"),
                           message=msg, cause_seq=cause_seq, ts=e.ts)
            if cause_seq in drift:
                parent = drift[cause_seq]
            else:  # no cause named: the last drift before it; a cause elsewhere: what was serving
                earlier = [s for s in drift if s < e.seq] if cause_seq is None else []
                parent = drift[max(earlier)] if earlier else self._serving_at(serving, e.ts, vid)
            self.link(parent, nid, "raised")
            self._monitor[e.seq] = nid
        self.g.summary["alarms"] = count
        if count > MAX_NODES_PER_STAGE:
            self.note(f"{count} alarms; the first {MAX_NODES_PER_STAGE} are drawn")

    def _group_retrains(self, events: Sequence[Event]) -> list[_Retrain]:
        groups: list[_Retrain] = []
        by_key: dict[str, _Retrain] = {}
        by_seq: dict[int, _Retrain] = {}
        for e in events:
            if e.kind not in RETRAIN_KINDS:
                continue
            p = _view(e.payload)
            rid = _first(p, RETRAIN_ID_KEYS)
            cause_seq, cause_kind = cause_of(p)
            req_seq = _int(_first(p, REQUEST_SEQ_KEYS))
            if req_seq is None and _int(rid) in by_seq:  # request_id: the seq of its retrain_requested
                req_seq, rid = _int(rid), None
            run_id = p.get("run_id") if isinstance(p.get("run_id"), str) and p.get("run_id") else None
            group = None
            if rid is not None:
                group = by_key.get(str(rid))
            if group is None and req_seq is not None:
                group = by_seq.get(req_seq)
            if group is None and run_id is not None:
                group = next((g for g in reversed(groups) if g.run_id == run_id), None)
            if group is None and cause_seq is not None and e.kind != "retrain_requested":
                group = next((g for g in reversed(groups) if g.cause_seq == cause_seq and not g.closed), None)
            if group is None and e.kind != "retrain_requested" and rid is None and cause_seq is None and run_id is None:
                group = next((g for g in reversed(groups) if not g.closed and g.key is None), None)
            if group is None:
                group = _Retrain(key=str(rid) if rid is not None else None)
                groups.append(group)
            group.events.append(e)
            by_seq[e.seq] = group
            if rid is not None:
                group.key = group.key or str(rid)
                by_key[str(rid)] = group
            if group.cause_seq is None and cause_seq is not None:
                group.cause_seq, group.cause_kind = cause_seq, cause_kind
            if run_id is not None:
                group.run_id = run_id
        return groups

    def _retrains(self, events: Sequence[Event], owner: _ProductionReplay, serving: Sequence[tuple[float, str]],
                  vid: str) -> None:
        groups = self._group_retrains(events)
        self._retrain_events = [e for e in events if e.kind in RETRAIN_KINDS]
        run_versions: dict[str, Run | None] = {}
        mine: list[_Retrain] = []
        for g in groups:
            first = g.first
            assert first is not None
            if g.cause_seq is not None and g.cause_seq in self._monitor:
                mine.append(g)
                continue
            produced = self._run_version(g.run_id, run_versions)
            if self._owned(first, owner, ("from_version", "source_version"), exclude=produced):
                mine.append(g)
        # (b) runs whose request names a cause in this graph
        seqs = dict(self._monitor)
        for g in mine:
            for e in g.events:
                seqs.setdefault(e.seq, "")
        try:
            runs = self.reg.list_runs(model=self.name, limit=MAX_DEPLOYMENTS)
        except MlplatError:
            runs = []
        for run in runs:
            cause_seq, cause_kind = cause_of(_view(run.request))
            if cause_seq is None or cause_seq not in seqs or run.run_id == self.mv.run_id:
                continue
            run_versions[run.run_id] = run
            hit = next((g for g in mine if any(e.seq == cause_seq for e in g.events)), None)
            hit = hit or next((g for g in mine if g.cause_seq == cause_seq and g.run_id in (None, run.run_id)), None)
            if hit is not None:
                hit.run_id = hit.run_id or run.run_id
            elif not any(g.run_id == run.run_id for g in mine):
                mine.append(_Retrain(cause_seq=cause_seq, cause_kind=cause_kind, run_id=run.run_id, from_run_request=True))
        self.g.summary["retrains"] = len(mine)
        for i, g in enumerate(mine[:MAX_NODES_PER_STAGE]):
            self._retrain_node(g, i, run_versions, serving, vid)
        if len(mine) > MAX_NODES_PER_STAGE:
            self.note(f"{len(mine)} retrains; the first {MAX_NODES_PER_STAGE} are drawn")

    def _alarm_of(self, alarm: Event, g: _Retrain) -> bool:
        """Whether an alarm about a retrain (``alarm`` ``retrain_*``) is about ``g``: by the event
        it names, else the run, else the last retrain event before it is ``g``'s."""
        p = _view(alarm.payload)
        cause_seq, _ = cause_of(p)
        seqs = {e.seq for e in g.events}
        if cause_seq is not None:
            return cause_seq in seqs
        run_id = p.get("run_id")
        if isinstance(run_id, str) and run_id:
            return run_id == g.run_id
        before = [e.seq for e in self._retrain_events if e.seq < alarm.seq]
        return bool(before) and max(before) in seqs

    def _retrain_node(self, g: _Retrain, i: int, runs: dict[str, Run | None], serving: Sequence[tuple[float, str]],
                      vid: str) -> None:
        run = self._run_record(g.run_id, runs)
        first = g.first
        last = g.events[-1] if g.events else None
        lp = _view(last.payload) if last else {}
        status = last.kind.removeprefix("retrain_") if last else "requested"
        if status == "validated" and lp.get("state"):
            status += f" {lp['state']}"
        elif status == "failed" and lp.get("stage"):
            status += f" at {lp['stage']}"
        trigger = next((str(t) for t in (_view(e.payload).get("trigger") for e in g.events) if t), None)
        ts = first.ts if first else (run.created_at if run else None)
        cause_kind = g.cause_kind or (self._kinds.get(g.cause_seq) if g.cause_seq is not None else None)
        bits = [f"seq {first.seq}" if first else "from run request", *([trigger] if trigger else []), status]
        if g.run_id:
            bits.append(f"run {g.run_id}" + (f" {run.state.value}" if run else ""))
        if g.cause_seq is not None:
            bits.append(f"cause {cause_kind or 'event'} seq {g.cause_seq}")
        reason = next((_first(_view(e.payload), ("reason", "why", "message", "error")) for e in g.events
                       if _first(_view(e.payload), ("reason", "why", "message", "error"))), None)
        alarms = [a for a in self._retrain_alarms if self._alarm_of(a, g)]
        if alarms:
            bits.append("alarm " + ", ".join(str(_view(a.payload).get("alarm") or "raised") for a in alarms))
        if reason:
            bits.append(_short(str(reason), 50))
        key = f"retrain:{first.seq}" if first else f"retrain:run:{g.run_id}"
        nid = self.add(key, "retrain", " · ".join(bits), status=status, trigger=trigger, run_id=g.run_id,
                       run_state=run.state.value if run else None, cause_seq=g.cause_seq, cause_kind=cause_kind,
                       retrain_id=g.key, reason=reason, from_run_request=g.from_run_request or None,
                       events=[{"seq": e.seq, "ts": e.ts, "kind": e.kind, "by": _view(e.payload).get("by")} for e in g.events],
                       alarms=[{"seq": a.seq, "ts": a.ts, "alarm": _view(a.payload).get("alarm")} for a in alarms] or None,
                       ts=ts)
        if g.cause_seq is not None and g.cause_seq in self._monitor:
            parent = self._monitor[g.cause_seq]
        else:  # no cause named: the last drift or alarm before it; a cause elsewhere: what was serving
            earlier = [s for s in self._monitor if first is not None and s < first.seq] if g.cause_seq is None else []
            parent = self._monitor[max(earlier)] if earlier else self._serving_at(serving, ts or 0.0, vid)
        self.link(parent, nid, "triggered")
        nv = self._run_version(g.run_id, runs)
        if nv is None or nv == self.v:
            return
        try:
            next_mv = self.reg.get_version(self.name, nv)
        except NotFound:
            return
        bits = [f"{self.name} v{nv}", next_mv.state.value]
        train_metrics = {k: v for k, v in next_mv.metrics.items() if k != "validation"}
        if _scalars(train_metrics):
            bits.append(_scalars(train_metrics))
        nid2 = self.add(f"version:{self.name}:v{nv}", "next_version", " · ".join(bits), name=self.name, version=nv,
                        state=next_mv.state.value, run_id=next_mv.run_id, metrics=train_metrics,
                        feature_set=next_mv.feature_set.model_dump() if next_mv.feature_set else None, ts=next_mv.created_at)
        self.link(nid, nid2, "produced")


class _ProductionReplay:
    """Which version held the global ``production`` alias at each event (replayed from the log)."""

    def __init__(self, events: Sequence[Event]):
        self._marks: list[tuple[int, int | None]] = []
        current: int | None = None
        for e in events:
            p = e.payload
            new = current
            if e.kind in ("promoted", "rolled_back") and not p.get("region"):
                move = _map(p.get("aliases")).get("production")
                if isinstance(move, list | tuple) and len(move) == 2:
                    new = _int(move[1])
                elif e.kind == "promoted":
                    new = e.version
                else:
                    new = _int(p.get("to_version"))
            elif e.kind in ALIAS_KINDS and p.get("alias") == "production":
                new = _int(p.get("to"))
            if new != current:
                current = new
                self._marks.append((e.seq, current))
        self._seqs = [seq for seq, _ in self._marks]

    def at(self, seq: int) -> int | None:
        i = bisect.bisect_right(self._seqs, seq)
        return self._marks[i - 1][1] if i else None
