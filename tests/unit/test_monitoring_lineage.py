"""The lineage graph of a model version (mlplat.monitoring.lineage) over an in-process registry:
a whole chain from dataset partitions to the version a drift-triggered retrain produced, the
text, JSON and SVG renderings, the pieces that may be missing, and `mlplat models lineage`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from mlplat.cli import main
from mlplat.errors import NotFound
from mlplat.monitoring.lineage import STAGES, build_lineage, cause_of, from_json, to_json, to_svg, to_text
from mlplat.records import (
    DatasetRef,
    DatasetVersion,
    FeatureSetSpec,
    FeatureSetVersion,
    PartitionInfo,
)
from mlplat.registry import RegistryStore

SHA = "b" * 64
TITLES = ["partition:", "feature set:", "run:", "version:", "validation:", "deployment:", "drift:", "alarm:",
          "retrain:", "next version:"]


@pytest.fixture
def store(tmp_path):
    s = RegistryStore(tmp_path / "r.db")
    yield s
    s.close()


def add_catalog(store) -> None:
    parts = tuple(PartitionInfo(key=f"date={d}", values={"date": d}, files=(f"date={d}/part-0.parquet",), num_rows=1000,
                                complete=d != "2026-11-03") for d in ("2026-11-01", "2026-11-02", "2026-11-03"))
    dv = DatasetVersion(name="clicks", version=1, path="datasets/clicks/v1", partition_keys=("date",), partitions=parts,
                        num_rows=3000)
    store.catalog_register("dataset", "clicks", dv.payload())
    spec = FeatureSetSpec.model_validate({
        "name": "clicks-features", "source": {"dataset": "clicks"}, "entity_key": "user_id", "labels": ["clicked"],
        "features": [{"column": "age", "encoder": "standardize"}, {"column": "country", "encoder": "onehot"}],
        "partitions": {"key": "date", "start": "2026-11-01", "end": "2026-11-02"}})
    fsv = FeatureSetVersion(name="clicks-features", version=1, spec=spec.model_dump(mode="json"),
                            source=DatasetRef(name="clicks", version=1), path="features/clicks-features/v1",
                            data_path="features/clicks-features/v1/data", num_rows=2000,
                            feature_columns=("age", "country=fr", "country=__other__"), label_columns=("clicked",),
                            split={"counts": {"train": 1600, "validation": 400}})
    store.catalog_register("feature_set", "clicks-features", fsv.payload())


def trained(store, run_id: str, *, request: dict | None = None, queued: bool = True, extra: dict | None = None) -> int:
    """A version trained by ``run_id`` (through the run queue unless ``queued`` is False), TRAINED.
    Registered first and then queued, as ``publish`` and ``start_retrain`` do."""
    v = store.register_version("churn", datasets=[{"name": "clicks", "version": 1}],
                               feature_set={"name": "clicks-features", "version": 1}, run_id=run_id,
                               metrics={"val_loss": 0.41}, extra=extra).version
    if queued:
        store.enqueue_run(run_id, kind="train", model="churn", version=v,
                          request=request or {"config": {"model": "churn"}, "version": v})
        store.claim_next_run("worker-1", run_id=run_id)
    store.update_version("churn", v, artifacts={"bundle": {"path": f"models/churn/v{v}/bundle.json", "sha256": SHA}})
    store.transition("churn", v, "TRAINING")
    store.transition("churn", v, "TRAINED")
    if queued:
        store.update_run(run_id, state="SUCCEEDED", metrics={"val_loss": 0.41})
    return v


def validated(store, v: int) -> None:
    store.transition("churn", v, "VALIDATING")
    report = f"reports/churn/v{v}/validation.json"
    store.update_version("churn", v, artifacts={"validation_report": {"path": report, "sha256": "c" * 64}},
                         extra={"validation": {"passed": True, "reasons": [], "report": report}})
    store.transition("churn", v, "VALIDATED", metrics={"validation": {"auc": 0.91}})


def deployed(store, v: int) -> str:
    d = store.start_deployment("churn", v, by="alice", targets={"mlplat/model-pool": 1})
    store.finish_prewarm(d.id, ok=True)
    return d.id


@pytest.fixture
def chain(store):
    """dataset + partitions -> feature set -> run 1 -> v1 VALIDATED -> LIVE -> drift -> alarm ->
    retrain (requested, approved, started with run 2, validated) -> v2. The monitoring events have
    the payloads that ``check_drift``, ``raise_alarm`` and the retrain controller write."""
    store.create_model("churn", serving_policy={"placement": "pool"})
    add_catalog(store)
    v1 = trained(store, "run-churn-1")
    validated(store, v1)
    dep = deployed(store, v1)
    store.append_event("drift_checked", "model:churn", {"window": "1h", "drifted": False, "status": "no_drift"}, version=v1)
    drift = store.append_event("drift_checked", "model:churn", {
        "window": "1h", "start_s": 1_795_000_000.0, "end_s": 1_795_003_600.0, "rows": 5000, "status": "drift",
        "drifted": True, "drifted_features": ["age", "country"], "prediction_drifted": False,
        "report": "reports/churn/drift/20261127T120000Z-1h"}, version=v1)
    drift_cause = {"seq": drift.seq, "kind": "drift_checked"}
    alarm = store.append_event("alarm_raised", "model:churn", {
        "alarm": "drift", "details": {"drifted_features": ["age", "country"], "cause": drift_cause, "window": "1h",
                                      "rows": 5000}, "webhook": None})
    cause = {"trigger": "drift", **drift_cause, "subject": "model:churn", "at": drift.ts,
             "drifted_features": ["age", "country"]}
    req = store.append_event("retrain_requested", "model:churn", {
        "trigger": "drift", "cause": cause, "by": "retrain-controller", "reason": "drift: a person approves retrains"})
    store.append_event("alarm_raised", "model:churn", {"alarm": "retrain_requested", "details": {
        "request_id": req.seq, "trigger": "drift", "cause": {"seq": req.seq, "kind": "retrain_requested"}}})
    store.append_event("retrain_approved", "model:churn", {"request_id": req.seq, "by": "bob", "note": ""})
    started_cause = {**cause, "request_id": req.seq, "approved_by": "bob"}
    v2 = trained(store, "run-churn-2", request={"config": {"model": "churn"}, "cause": started_cause,
                                                 "retrain": {"request_id": req.seq, "base_run": "run-churn-1"}},
                 extra={"retrain": {"cause": started_cause, "request_id": req.seq, "base_run": "run-churn-1"}})
    started = store.append_event("retrain_started", "model:churn", {
        "run_id": "run-churn-2", "version": v2, "trigger": "drift", "cause": started_cause, "request_id": req.seq,
        "base_run": "run-churn-1"}, version=v2)
    store.append_event("alarm_raised", "model:churn", {"alarm": "retrain_started", "details": {
        "run_id": "run-churn-2", "version": v2, "trigger": "drift", "cause": {"seq": started.seq, "kind": "retrain_started"}}})
    store.append_event("retrain_validated", "model:churn", {
        "run_id": "run-churn-2", "version": v2, "state": "VALIDATED", "passed": True, "request_id": req.seq,
        "cause": started_cause}, version=v2)
    return {"v1": v1, "v2": v2, "deployment": dep, "drift": drift, "alarm": alarm, "request": req}


def edge_kinds(g) -> set[tuple[str, str, str]]:
    return {(g.node(e.source).kind, g.node(e.target).kind, e.kind) for e in g.edges}


def test_the_whole_chain(store, chain):
    g = build_lineage(store, "churn", chain["v1"])
    assert {n.kind for n in g.nodes} == set(STAGES)
    parts = g.of_kind("dataset_partition")
    assert sorted(n.attributes["partition"] for n in parts) == ["date=2026-11-01", "date=2026-11-02"]  # the spec's range
    fs = g.node("feature_set:clicks-features:v1")
    assert "2,000 rows" in fs.label and "from clicks v1 date 2026-11-01..2026-11-02" in fs.label
    assert g.node("run:run-churn-1").attributes["state"] == "SUCCEEDED"
    version = g.node("version:churn:v1")
    assert version.attributes["state"] == "PRODUCTION" and version.attributes["aliases"] == ["production"]
    validation = g.of_kind("validation")[0]
    assert validation.attributes["outcome"] == "VALIDATED" and validation.attributes["metrics"] == {"auc": 0.91}
    assert validation.attributes["report"] == "reports/churn/v1/validation.json"
    dep = g.node(f"deployment:{chain['deployment']}")
    assert dep.attributes["state"] == "LIVE" and dep.attributes["by"] == "alice"
    assert [h["kind"] for h in dep.attributes["history"]] == ["deployment_started", "promoted"]
    [drift] = g.of_kind("drift")  # the check that did not drift is only counted
    assert drift.attributes["features"] == ["age", "country"] and drift.attributes["window"] == "1h"
    assert drift.attributes["rows"] == 5000 and drift.attributes["report"] == "reports/churn/drift/20261127T120000Z-1h"
    assert g.summary["drift_checks"] == 2 and g.summary["drifted_checks"] == 1
    [alarm] = g.of_kind("alarm")  # the alarms about the retrain sit on the retrain's node
    assert alarm.attributes["seq"] == chain["alarm"].seq and alarm.attributes["alarm"] == "drift"
    [retrain] = g.of_kind("retrain")
    assert retrain.attributes["status"] == "validated VALIDATED" and retrain.attributes["run_id"] == "run-churn-2"
    assert retrain.attributes["trigger"] == "drift"
    assert [e["kind"] for e in retrain.attributes["events"]] == ["retrain_requested", "retrain_approved", "retrain_started",
                                                                 "retrain_validated"]
    assert retrain.attributes["cause_seq"] == chain["drift"].seq and retrain.attributes["cause_kind"] == "drift_checked"
    assert [a["alarm"] for a in retrain.attributes["alarms"]] == ["retrain_requested", "retrain_started"]
    [nxt] = g.of_kind("next_version")
    assert nxt.attributes["version"] == chain["v2"] and nxt.label.startswith("churn v2 · TRAINED")
    assert edge_kinds(g) == {
        ("dataset_partition", "feature_set", "materialized_into"), ("feature_set", "run", "input_to"),
        ("run", "version", "produced"), ("version", "validation", "validated_by"),
        ("validation", "deployment", "deployed_as"), ("deployment", "drift", "monitored"), ("drift", "alarm", "raised"),
        ("drift", "retrain", "triggered"), ("retrain", "next_version", "produced")}
    assert g.notes == []


def test_text_json_and_svg(store, chain):
    g = build_lineage(store, "churn", chain["v1"])
    text = to_text(g)
    lines = text.splitlines()
    assert lines[0] == "lineage of churn v1" and len(lines) == 1 + len(g.nodes)
    firsts = [next(i for i, line in enumerate(lines) if line.lstrip(" └─").startswith(t)) for t in TITLES]
    assert firsts == sorted(firsts), text
    assert lines[-1].lstrip().startswith("└─ next version: churn v2")
    indents = [len(line) - len(line.lstrip(" └─")) for line in lines[1:]]
    assert indents[0] == 0 and max(indents) > 20  # nine levels under the partitions

    doc = to_json(g)
    assert json.loads(json.dumps(doc)) == doc
    assert to_json(from_json(json.loads(json.dumps(doc)))) == doc
    assert doc["format"] == "mlplat.lineage/1" and len(doc["nodes"]) == len(g.nodes) and len(doc["edges"]) == len(g.edges)
    with pytest.raises(ValueError, match="not a lineage document"):
        from_json({"format": "other"})

    svg = to_svg(g)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    groups = [el for el in root.iter(f"{ns}g") if el.get("class") == "node"]
    assert len(groups) == len(g.nodes) and {el.get("data-kind") for el in groups} == set(STAGES)
    assert len([el for el in root.iter(f"{ns}path") if el.get("class") == "edge"]) == len(g.edges)
    assert int(root.get("width")) > 10 * 190  # ten columns, left to right


def test_the_next_versions_own_lineage(store, chain):
    g = build_lineage(store, "churn", chain["v2"])
    run = g.node("run:run-churn-2")
    assert run.attributes["caused_by"] == {"seq": chain["drift"].seq, "kind": "drift_checked", "trigger": "drift"}
    assert "caused by drift_checked seq" in run.label and run.attributes["base_run"] == "run-churn-1"
    # v1's drift and retrain are not v2's; v2 has no validation or deployment yet
    assert {n.kind for n in g.nodes} == {"dataset_partition", "feature_set", "run", "version"}


def test_a_bare_version_and_unknown_ones(store):
    store.register_version("churn")
    g = build_lineage(store, "churn", 1)
    assert [n.kind for n in g.nodes] == ["version"] and g.edges == []
    lines = to_text(g).splitlines()
    assert lines[0] == "lineage of churn v1" and lines[1].startswith("version: churn v1 · REGISTERED  [20") and len(lines) == 2
    ET.fromstring(to_svg(g))
    with pytest.raises(NotFound, match="has no version 9"):
        build_lineage(store, "churn", 9)
    with pytest.raises(NotFound):
        build_lineage(store, "nope", 1)


def test_dangling_references_are_shown_and_noted(store):
    v = store.register_version("churn", datasets=[{"name": "clicks", "version": 3}],
                               feature_set={"name": "gone", "version": 2}, run_id="run-local-1").version
    g = build_lineage(store, "churn", v)
    assert g.node("feature_set:gone:v2").attributes["missing"] is True
    assert g.node("dataset:clicks:v3").attributes["missing"] is True
    assert g.node("run:run-local-1").attributes["recorded"] is False
    assert ("dataset_partition", "run", "input_to") in edge_kinds(g) and ("feature_set", "run", "input_to") in edge_kinds(g)
    text = to_text(g)
    assert "note: feature set gone v2 is not in the catalog" in text and "note: run run-local-1 has no record" in text


def test_no_run_links_the_feature_set_to_the_version(store):
    add_catalog(store)
    v = store.register_version("churn", feature_set={"name": "clicks-features", "version": 1},
                               datasets=[{"name": "clicks", "version": 1}]).version
    g = build_lineage(store, "churn", v)
    assert edge_kinds(g) == {("dataset_partition", "feature_set", "materialized_into"),
                             ("feature_set", "version", "input_to")}


def test_manual_promotion_rollback_and_drift_by_production_at_the_time(store):
    add_catalog(store)
    v1 = trained(store, "run-1")
    validated(store, v1)
    store.promote("churn", v1)
    v2 = trained(store, "run-2")
    validated(store, v2)
    store.promote("churn", v2)
    d2 = store.append_event("drift_checked", "model:churn", {"drifted": True, "drifted_features": {"age": 0.4}})
    store.rollback("churn", by="carol")
    d1 = store.append_event("drift_checked", "model:churn", {"drifted": True, "features": [{"name": "plan"}]})
    other = store.append_event("drift_checked", "model:churn", {"drifted": True, "features": ["x"]}, version=v2)

    g1 = build_lineage(store, "churn", v1)
    [manual] = [n for n in g1.of_kind("deployment") if n.attributes.get("manual")]
    assert manual.label.startswith("promoted by hand · all regions")
    assert "restored by rollback" in manual.label and g1.summary["rollbacks"][0]["by"] == "carol"
    assert [n.attributes["seq"] for n in g1.of_kind("drift")] == [d1.seq]
    assert g1.node(f"drift:{d1.seq}").attributes["features"] == ["plan"]

    g2 = build_lineage(store, "churn", v2)
    assert [n.attributes["seq"] for n in g2.of_kind("drift")] == [d2.seq, other.seq]
    assert g2.node(f"drift:{d2.seq}").attributes["features"] == ["age"]
    [dep2] = g2.of_kind("deployment")
    assert "previous v1" in dep2.label and "rolled back" in dep2.label


def test_checks_without_drift_are_one_summary_node(store):
    add_catalog(store)
    v = trained(store, "run-1")
    validated(store, v)
    deployed(store, v)
    for _ in range(3):
        store.append_event("drift_checked", "model:churn", {"drifted": False}, version=v)
    g = build_lineage(store, "churn", v)
    [drift] = g.of_kind("drift")
    assert drift.attributes["checks"] == 3 and drift.attributes["drifted"] is False and "3 checks · no drift" in drift.label


def test_retrain_linked_by_a_run_request_and_by_an_in_process_run(store):
    add_catalog(store)
    v1 = trained(store, "run-1")
    validated(store, v1)
    deployed(store, v1)
    drift = store.append_event("drift_checked", "model:churn", {"drifted": True}, version=v1)
    # (b) no retrain events: the run's request names the drift as its cause
    v2 = trained(store, "run-2", request={"config": {}, "caused_by": f"seq:{drift.seq}"})
    # (a) a retrain_started whose run trained in-process (no run record): its version carries the run id
    store.append_event("retrain_started", "model:churn", {"trigger_seq": drift.seq, "run_id": "run-3"})
    v3 = trained(store, "run-3", queued=False)
    g = build_lineage(store, "churn", v1)
    retrains = {n.attributes["run_id"]: n for n in g.of_kind("retrain")}
    assert set(retrains) == {"run-2", "run-3"} and retrains["run-2"].attributes["from_run_request"] is True
    assert sorted(n.attributes["version"] for n in g.of_kind("next_version")) == [v2, v3]
    assert all(g.parents(n.id) == [f"drift:{drift.seq}"] for n in retrains.values())


def test_retrain_without_cause_follows_the_last_drift_and_unknown_keys_are_ignored(store):
    add_catalog(store)
    v1 = trained(store, "run-1")
    validated(store, v1)
    deployed(store, v1)
    drift = store.append_event("drift_checked", "model:churn", {"drifted": True, "something": {"new": 1}})
    store.append_event("retrain_requested", "model:churn", {"unexpected": [1, 2]})
    g = build_lineage(store, "churn", v1)
    [retrain] = g.of_kind("retrain")
    assert retrain.attributes["status"] == "requested" and g.parents(retrain.id) == [f"drift:{drift.seq}"]
    assert g.of_kind("next_version") == []


def test_other_triggers_and_outcomes(store):
    add_catalog(store)
    v1 = trained(store, "run-1")
    validated(store, v1)
    dep = deployed(store, v1)
    part = store.append_event("partition_completed", "dataset:clicks", {"partition": "date=2026-11-04", "num_rows": 10})
    store.append_event("retrain_skipped", "model:churn", {"trigger": "partition_completed", "reason": "cooldown 24h", "cause": {
        "trigger": "partition_completed", "seq": part.seq, "kind": "partition_completed", "subject": "dataset:clicks"}})
    req = store.append_event("retrain_requested", "model:churn", {"trigger": "schedule", "cause": {"trigger": "schedule"},
                                                                  "by": "retrain-controller", "reason": "weekly"})
    store.append_event("retrain_dismissed", "model:churn", {"request_id": req.seq, "by": "bob", "note": "not now"})
    v2 = trained(store, "run-2")
    store.append_event("retrain_started", "model:churn", {"run_id": "run-2", "version": v2, "trigger": "manual",
                                                          "cause": {"trigger": "manual"}, "request_id": None}, version=v2)
    store.append_event("retrain_failed", "model:churn", {"stage": "training", "error": "worker OOM", "run_id": "run-2",
                                                         "cause": {"trigger": "manual"}}, version=v2)
    g = build_lineage(store, "churn", v1)
    retrains = {n.attributes["status"]: n for n in g.of_kind("retrain")}
    assert set(retrains) == {"skipped", "dismissed", "failed at training"}
    assert retrains["skipped"].attributes["cause_kind"] == "partition_completed" and "cooldown 24h" in retrains["skipped"].label
    assert all(g.parents(n.id) == [f"deployment:{dep}"] for n in retrains.values())  # nothing drifted: what was serving
    assert [g.node(c).attributes["version"] for c in g.children(retrains["failed at training"].id)] == [v2]
    assert "worker OOM" in retrains["failed at training"].label
    assert build_lineage(store, "churn", v2).of_kind("retrain") == []


def test_event_reading_is_bounded(store):
    store.register_version("churn")
    for _ in range(5):
        store.append_event("drift_checked", "model:churn", {"drifted": False}, version=1)
    g = build_lineage(store, "churn", 1, max_events=3)
    assert g.summary["events_read"] == 3 and any("read the first 3 events" in n for n in g.notes)


def test_cause_of():
    assert cause_of({"cause": {"seq": 4, "kind": "alarm_raised"}}) == (4, "alarm_raised")
    assert cause_of({"trigger_seq": 5, "trigger_kind": "drift_checked"}) == (5, "drift_checked")
    assert cause_of({"caused_by": 6}) == (6, None) and cause_of({"cause": "drift"}) == (None, None)


# -- the CLI ---------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli(tmp_path, monkeypatch, capsys, store, chain):
    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")
    monkeypatch.setenv("MLPLAT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLPLAT_REGISTRY_URL", f"sqlite:///{tmp_path / 'r.db'}")
    code, out, err = run_cli(capsys, "models", "lineage", "churn", "1")
    assert code == 0, err
    assert out.startswith("lineage of churn v1\n") and "next version: churn v2" in out
    code, out, _ = run_cli(capsys, "models", "lineage", "churn", "1", "--json")
    assert code == 0 and {n["kind"] for n in json.loads(out)["nodes"]} == set(STAGES)
    svg = tmp_path / "lineage.svg"
    code, out, err = run_cli(capsys, "models", "lineage", "churn", "1", "--json", "--svg", str(svg))
    assert code == 0 and json.loads(out)["model"] == "churn" and str(svg) in err
    assert ET.parse(svg).getroot().tag.endswith("svg")
    code, _, err = run_cli(capsys, "models", "lineage", "churn", "9")
    assert code == 2 and "error: model 'churn' has no version 9" in err and "Traceback" not in err


def test_doctests():
    import doctest

    import mlplat.monitoring.lineage as lineage

    result = doctest.testmod(lineage)
    assert result.attempted > 0 and result.failed == 0
