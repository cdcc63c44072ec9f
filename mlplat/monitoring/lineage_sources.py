"""Reading the registry for the lineage graph (:mod:`mlplat.monitoring.lineage`, docs/lineage.md):
the event kinds and payload keys read, the bounds on the work, reading payloads (causes
included: :func:`cause_of`), and the builder's stages drawn from registry records -- catalog
entries, runs, versions and deployments: partitions -> feature set -> run -> version ->
validation -> deployments."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlplat.errors import MlplatError, NotFound
from mlplat.monitoring.lineage_graph import _GraphBuilder, _short, _when
from mlplat.records import (
    CATALOG_DATASET,
    CATALOG_FEATURE_SET,
    CatalogEntry,
    Deployment,
    Event,
    ModelVersion,
    Run,
)
from mlplat.registry.protocol import Registry

VALIDATION_KINDS = ("state_changed", "version_reviewed")
DEPLOYMENT_KINDS = ("deployment_started", "deployment_forced", "canary_started", "promoted", "rolled_back",
                    "canary_rolled_back", "deployment_failed")
ALIAS_KINDS = ("alias_moved", "alias_removed")
DRIFT_KIND = "drift_checked"
ALARM_KIND = "alarm_raised"
RETRAIN_KINDS = ("retrain_requested", "retrain_approved", "retrain_dismissed", "retrain_started", "retrain_failed",
                 "retrain_skipped", "retrain_validated", "retrain_rejected")
#: Every event kind read from ``model:<name>``.
EVENT_KINDS: tuple[str, ...] = (*VALIDATION_KINDS, *DEPLOYMENT_KINDS, *ALIAS_KINDS, DRIFT_KIND, ALARM_KIND, *RETRAIN_KINDS)

CAUSE_SEQ_KEYS = ("cause_seq", "caused_by_seq", "trigger_seq", "drift_seq", "alarm_seq", "event_seq")
CAUSE_KEYS = ("cause", "caused_by", "trigger")
CAUSE_KIND_KEYS = ("cause_kind", "caused_by_kind", "trigger_kind")
RETRAIN_ID_KEYS = ("retrain_id", "request_id")
REQUEST_SEQ_KEYS = ("request_seq", "requested_seq")

PAGE = 1000
MAX_EVENTS = 50_000
MAX_PARTITIONS = 20
MAX_NODES_PER_STAGE = 20
MAX_DEPLOYMENTS = 200


# -- reading payloads ------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:seq[:=#]?\s*|v)?(\d+)\s*", value)
        return int(m.group(1)) if m else None
    return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _view(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A monitoring event's payload with its ``details`` (``raise_alarm`` nests them there)
    underneath: a top-level key wins."""
    return {**_map(payload.get("details")), **payload}


def _first(payload: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        v = payload.get(k)
        if v is not None and v != "":
            return v
    return None


def cause_of(payload: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The (seq, kind) of the event a payload names as its cause; (None, None) when it names none.

    >>> cause_of({"cause": {"seq": 42, "kind": "drift_checked"}})
    (42, 'drift_checked')
    >>> cause_of({"cause_seq": "7"}), cause_of({"caused_by": "seq:9"}), cause_of({})
    ((7, None), (9, None), (None, None))
    """
    named = _first(payload, CAUSE_KIND_KEYS)
    kind = named if isinstance(named, str) else None
    for k in CAUSE_SEQ_KEYS:
        seq = _int(payload.get(k))
        if seq is not None:
            return seq, kind
    for k in CAUSE_KEYS:
        c = payload.get(k)
        if isinstance(c, Mapping):
            seq = _int(c.get("seq")) if c.get("seq") is not None else _int(c.get("event_seq"))
            ckind = c.get("kind") or c.get("event")
            return seq, (ckind if isinstance(ckind, str) else kind)
        seq = _int(c)
        if seq is not None:
            return seq, kind
    return None, kind


def _path(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("path") or value.get("uri")
    return str(value) if isinstance(value, str) and value else None


def _scalars(metrics: Mapping[str, Any], limit: int = 3) -> str:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in sorted(metrics.items()) if isinstance(v, int | float) and not isinstance(v, bool)]
    return ", ".join(parts[:limit])


# -- the stages read from registry records ---------------------------------------------------


class _RecordStages(_GraphBuilder):
    """The builder's reads of the registry (catalog entries, the model's events, runs, versions,
    deployments) and the stages drawn from its records."""

    def __init__(self, registry: Registry, mv: ModelVersion, max_events: int):
        super().__init__(registry, mv, max_events)
        self._kinds: dict[int, str] = {}  # event seq -> kind, for every event read
        self._all_versions: list[ModelVersion] | None = None

    # reads
    def _catalog(self, kind: str, name: str, version: int) -> CatalogEntry | None:
        try:
            return self.reg.catalog_get(kind, name, int(version))
        except NotFound:
            self.note(f"{kind.replace('_', ' ')} {name} v{version} is not in the catalog")
            return None

    def _events(self) -> list[Event]:
        out: list[Event] = []
        seq = 0
        subject = f"model:{self.name}"
        while True:
            want = min(PAGE, self.max_events - len(out))
            page = self.reg.events_since(seq, limit=want, subject=subject, kinds=list(EVENT_KINDS))
            out += page
            if len(page) < want:
                break
            seq = page[-1].seq
            if len(out) >= self.max_events:
                if not self.reg.events_since(seq, limit=1, subject=subject, kinds=list(EVENT_KINDS)):
                    break
                self.note(f"read the first {len(out):,} events of {subject} only; later drift, alarms and retrains "
                          "may be missing")
                break
        self.g.summary["events_read"] = len(out)
        self._kinds = {e.seq: e.kind for e in out}
        return out

    def _run_record(self, run_id: str | None, cache: dict[str, Run | None]) -> Run | None:
        if not run_id:
            return None
        if run_id not in cache:
            try:
                cache[run_id] = self.reg.get_run(run_id)
            except NotFound:
                cache[run_id] = None
        return cache[run_id]

    def _run_version(self, run_id: str | None, cache: dict[str, Run | None]) -> int | None:
        run = self._run_record(run_id, cache)
        if run is not None and run.version is not None:
            return run.version
        if run_id:
            return next((v.version for v in self._versions() if v.run_id == run_id), None)
        return None

    def _versions(self) -> list[ModelVersion]:
        if self._all_versions is None:
            try:
                self._all_versions = self.reg.list_versions(self.name)
            except MlplatError:
                self._all_versions = []
        return self._all_versions

    # upstream: partitions -> feature set -> run -------------------------------------------
    def _partitions(self, name: str, version: int, rng: Mapping[str, Any] | None) -> list[str]:
        entry = self._catalog(CATALOG_DATASET, name, version)
        if entry is None:
            return [self.add(f"dataset:{name}:v{version}", "dataset_partition", f"{name} v{version} (not in the catalog)",
                             dataset=name, dataset_version=version, missing=True)]
        p = entry.payload
        parts = [x for x in p.get("partitions") or [] if isinstance(x, Mapping)]
        keys = list(p.get("partition_keys") or [])
        key = (rng or {}).get("key") or (keys[0] if keys else None)
        start, end = (rng or {}).get("start"), (rng or {}).get("end")
        chosen = []
        for part in parts:
            value = str(_map(part.get("values")).get(key or "", ""))
            if (start and value < str(start)) or (end and value > str(end)):
                continue
            chosen.append(part)
        base = dict(dataset=name, dataset_version=version, dataset_kind=p.get("kind"), status=p.get("status"),
                    path=p.get("path"), ts=entry.created_at)
        ids = []
        files = list(p.get("files") or [])
        if files or not parts:
            ids.append(self.add(f"dataset_partition:{name}:v{version}:*", "dataset_partition",
                                f"{name} v{version} · all files · {_int(p.get('num_rows')) or 0:,} rows",
                                **base, partition=None, files=len(files), num_rows=p.get("num_rows")))
        for part in chosen[:MAX_PARTITIONS]:
            pkey = str(part.get("key") or "/".join(f"{k}={v}" for k, v in _map(part.get("values")).items()))
            state = "complete" if part.get("complete") else "open"
            ids.append(self.add(f"dataset_partition:{name}:v{version}:{pkey}", "dataset_partition",
                                f"{name} v{version} {pkey} · {_int(part.get('num_rows')) or 0:,} rows · {state}",
                                **{**base, "ts": part.get("added_at") or entry.created_at}, partition=pkey,
                                values=part.get("values"), num_rows=part.get("num_rows"), complete=bool(part.get("complete")),
                                completed_at=part.get("completed_at"), files=len(part.get("files") or [])))
        if len(chosen) > MAX_PARTITIONS:
            rest = chosen[MAX_PARTITIONS:]
            first, last = rest[0].get("key"), rest[-1].get("key")
            ids.append(self.add(f"dataset_partition:{name}:v{version}:+{len(rest)}", "dataset_partition",
                                f"{name} v{version} … {len(rest)} more partitions ({first} .. {last})",
                                **base, more=len(rest), num_rows=sum(_int(x.get("num_rows")) or 0 for x in rest)))
        self.g.summary.setdefault("partitions", 0)
        self.g.summary["partitions"] += len(chosen)
        return ids

    def _upstream(self) -> str | list[str] | None:
        mv, run_input = self.mv, []
        source: tuple[str, int] | None = None
        fs_id = None
        if mv.feature_set is not None:
            fs = mv.feature_set
            entry = self._catalog(CATALOG_FEATURE_SET, fs.name, fs.version)
            p = entry.payload if entry else {}
            spec = _map(p.get("spec"))
            src = _map(p.get("source")) or None
            rng = _map(spec.get("partitions")) or None
            bits = [f"{fs.name} v{fs.version}"]
            if entry is None:
                bits.append("not in the catalog")
            else:
                if p.get("status") and p.get("status") != "ready":
                    bits.append(str(p["status"]))
                if _int(p.get("num_rows")) is not None:
                    bits.append(f"{_int(p.get('num_rows')):,} rows")
                if p.get("feature_columns"):
                    bits.append(f"{len(p['feature_columns'])} features")
                if src:
                    span = ""
                    if rng and (rng.get("start") or rng.get("end")):
                        span = f" {rng.get('key') or 'date'} {rng.get('start') or '…'}..{rng.get('end') or '…'}"
                    bits.append(f"from {src.get('name')} v{src.get('version')}{span}")
            fs_id = self.add(f"feature_set:{fs.name}:v{fs.version}", "feature_set", " · ".join(bits),
                             feature_set=fs.name, feature_set_version=fs.version, status=p.get("status"),
                             num_rows=p.get("num_rows"), feature_columns=p.get("feature_columns"),
                             label_columns=p.get("label_columns"), split=_map(p.get("split")).get("counts"),
                             source=src, partitions=rng, path=p.get("path"), missing=True if entry is None else None,
                             ts=entry.created_at if entry else None)
            if src and src.get("name") and _int(src.get("version")) is not None:
                source = (str(src["name"]), int(src["version"]))
                for pid in self._partitions(source[0], source[1], rng):
                    self.link(pid, fs_id, "materialized_into")
        for ref in mv.datasets:
            if (ref.name, ref.version) != source:
                run_input += self._partitions(ref.name, ref.version, None)
        run_id = self._run()
        if run_id is not None:
            for pid in run_input:
                self.link(pid, run_id, "input_to")
            self.link(fs_id, run_id, "input_to")
            return run_id
        return [x for x in (fs_id, *run_input) if x is not None] or None

    def _run(self) -> str | None:
        rid = self.mv.run_id
        if not rid:
            return None
        try:
            run: Run | None = self.reg.get_run(rid)
        except NotFound:
            run = None
        # what caused the run: its request's ``cause``, else the version's ``extra.retrain.cause``
        cause_seq, cause_kind = cause_of(run.request) if run is not None else (None, None)
        retrain = _map(self.mv.extra.get("retrain"))
        if cause_seq is None:
            cause_seq, cause_kind = cause_of(retrain)
        trigger = _map(run.request.get("cause") if run is not None else None).get("trigger") or _map(retrain.get("cause")).get("trigger")
        caused_by = {"seq": cause_seq, "kind": cause_kind, "trigger": trigger} if cause_seq is not None or trigger else None
        why = (f"caused by {cause_kind or 'event'} seq {cause_seq}" if cause_seq is not None
               else f"caused by {trigger}" if trigger else "")
        if run is None:
            self.note(f"run {rid} has no record in the run queue (trained in-process, or the record is gone)")
            return self.add(f"run:{rid}", "run", " · ".join(b for b in (rid, "no run record", why) if b), run_id=rid,
                            recorded=False, caused_by=caused_by, ts=self.mv.created_at)
        bits = [rid, run.state.value, run.kind, _scalars(run.metrics), why]
        return self.add(f"run:{rid}", "run", " · ".join(b for b in bits if b), run_id=rid, state=run.state.value,
                        kind=run.kind, attempts=run.attempts, metrics=run.metrics, error=run.error, ts=run.created_at,
                        finished_at=run.finished_at, caused_by=caused_by,
                        base_run=_map(run.request.get("retrain")).get("base_run") or retrain.get("base_run"))

    # the version and its validation ------------------------------------------------------------
    def _version(self, feeds: str | list[str] | None) -> str:
        mv = self.mv
        try:
            aliases = sorted(a for a, v in self.reg.aliases(self.name).items() if v == self.v)
        except MlplatError:
            aliases = []
        train_metrics = {k: v for k, v in mv.metrics.items() if k != "validation"}
        bits = [f"{self.name} v{self.v}", mv.state.value]
        if aliases:
            bits.append("alias " + ",".join(aliases))
        if _scalars(train_metrics):
            bits.append(_scalars(train_metrics))
        bundle = mv.artifacts.get("bundle")
        vid = self.add(f"version:{self.name}:v{self.v}", "version", " · ".join(bits), name=self.name, version=self.v,
                       state=mv.state.value, aliases=aliases, metrics=train_metrics, code_version=mv.code_version,
                       config_hash=mv.config_hash, bundle_sha256=bundle.sha256 if bundle else None, error=mv.error,
                       ts=mv.created_at, updated_at=mv.updated_at)
        for src in [feeds] if isinstance(feeds, str) else (feeds or []):
            kind = "produced" if src.startswith("run:") else "input_to"
            self.link(src, vid, kind)
        return vid

    def _validation(self, events: Sequence[Event], vid: str) -> str | None:
        mv = self.mv
        mine = [e for e in events if e.version == self.v and e.kind in VALIDATION_KINDS]
        start = next((e for e in mine if e.kind == "state_changed" and e.payload.get("to") == "VALIDATING"), None)
        end = next((e for e in mine if e.kind == "state_changed" and e.payload.get("from") == "VALIDATING"
                    and (start is None or e.seq > start.seq)), None)
        reviews = [e for e in mine if e.kind == "version_reviewed"]
        extra = _map(mv.extra.get("validation"))
        report = _path(mv.artifacts.get("validation_report")) or _path(extra.get("report"))
        if start is None and end is None and not extra and report is None:
            return None
        if end is not None:
            outcome = str(end.payload.get("to"))
        elif extra:
            outcome = "VALIDATED" if extra.get("passed") else "REJECTED"
        else:
            outcome = "VALIDATING"
        metrics = _map(mv.metrics.get("validation"))
        reasons = list(extra.get("reasons") or [])
        bits = [outcome]
        if _scalars(metrics):
            bits.append(_scalars(metrics))
        if outcome == "REJECTED" and (reasons or (end and end.payload.get("error"))):
            bits.append(_short("; ".join(reasons) or str(end.payload.get("error") if end else ""), 60))
        if mv.approval.state.value != "NOT_REQUIRED":
            bits.append("approval " + mv.approval.describe(with_note=False))
        if report:
            bits.append(f"report {report}")
        return self._attach(vid, self.add(
            f"validation:{self.name}:v{self.v}", "validation", " · ".join(bits), outcome=outcome,
            passed=extra.get("passed"), reasons=reasons or None, metrics=metrics or None, report=report,
            feature_set=extra.get("feature_set"), approval=mv.approval.model_dump(mode="json"),
            reviews=[{"seq": e.seq, "ts": e.ts, **e.payload} for e in reviews] or None,
            ts=start.ts if start else (end.ts if end else None), finished_at=end.ts if end else None,
            seqs=[e.seq for e in (start, end) if e is not None] or None), "validated_by")

    # deployments ----------------------------------------------------------------------------
    def _deployments(self, events: Sequence[Event], vid: str, gate: str | None) -> list[tuple[float, str]]:
        """Adds this version's deployments; returns [(start ts, node id)] oldest first."""
        dep_events = [e for e in events if e.kind in DEPLOYMENT_KINDS]
        by_dep: dict[str, list[Event]] = {}
        mine_ids: list[str] = []
        for e in dep_events:
            did = e.payload.get("deployment")
            if isinstance(did, str) and did:
                by_dep.setdefault(did, []).append(e)
                if e.kind == "deployment_started" and e.version == self.v and did not in mine_ids:
                    mine_ids.append(did)
        try:
            listed = {d.id: d for d in self.reg.list_deployments(name=self.name, limit=MAX_DEPLOYMENTS)}
        except MlplatError:
            listed = {}
        records: dict[str, Deployment] = {i: d for i, d in listed.items() if d.version == self.v}
        for did in mine_ids:
            if did not in records and len(records) < MAX_NODES_PER_STAGE * 2:
                try:
                    records[did] = self.reg.get_deployment(did)
                except NotFound:
                    pass
        parent = gate or vid
        out: list[tuple[float, str]] = []
        for d in sorted(records.values(), key=lambda d: d.created_at)[-MAX_NODES_PER_STAGE:]:
            history = [{"seq": e.seq, "ts": e.ts, "kind": e.kind} for e in by_dep.get(d.id, [])]
            bits = [d.id, d.state.value, d.scope]
            if 0 < d.canary_percent < 100:
                bits.append(f"canary {d.canary_percent:g}%")
            if d.forced:
                bits.append("forced")
            if d.by:
                bits.append(f"by {d.by}")
            if d.reason:
                bits.append(_short(d.reason, 50))
            nid = self.add(f"deployment:{d.id}", "deployment", " · ".join(bits), deployment=d.id, state=d.state.value,
                           region=d.region, canary_percent=d.canary_percent, by=d.by or None, forced=d.forced,
                           reason=d.reason, previous_version=d.previous_version, targets=d.targets or None,
                           history=history, ts=d.created_at, updated_at=d.updated_at)
            self.link(parent, nid, "deployed_as")
            out.append((d.created_at, nid))
        for e in dep_events:  # a promotion without a deployment: `mlplat models promote`
            if e.kind == "promoted" and e.version == self.v and not e.payload.get("deployment"):
                region = e.payload.get("region")
                nid = self.add(f"deployment:promote:{e.seq}", "deployment",
                               f"promoted by hand · {('region ' + str(region)) if region else 'all regions'}"
                               + (f" · previous v{e.payload['previous']}" if e.payload.get("previous") else ""),
                               manual=True, seq=e.seq, region=region, previous_version=e.payload.get("previous"),
                               history=[{"seq": e.seq, "ts": e.ts, "kind": e.kind}], ts=e.ts)
                self.link(parent, nid, "deployed_as")
                out.append((e.ts, nid))
        out.sort()
        rollbacks = [e for e in dep_events if e.kind == "rolled_back"
                     and self.v in (_int(e.payload.get("from_version")), _int(e.payload.get("to_version")))]
        if rollbacks:
            self.g.summary["rollbacks"] = [{"seq": e.seq, "ts": e.ts, "from_version": e.payload.get("from_version"),
                                            "to_version": e.payload.get("to_version"), "region": e.payload.get("region"),
                                            "by": e.payload.get("by")} for e in rollbacks]
            if out:  # shown in the label of the deployment that was serving
                for e in rollbacks:
                    nid = self._serving_at(out, e.ts, vid)
                    node = self.g.node(nid)
                    direction = "rolled back" if _int(e.payload.get("from_version")) == self.v else "restored by rollback"
                    self._replace(node, label=f"{node.label} · {direction} {_when(e.ts)}".rstrip(),
                                  history=[*node.attributes.get("history", []), {"seq": e.seq, "ts": e.ts, "kind": e.kind}])
        return out
