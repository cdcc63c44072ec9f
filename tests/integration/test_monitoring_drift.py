"""Drift checks on the session's Ray: telemetry written by the serving ``TelemetryWriter``, a
model whose feature set holds reference statistics in a real storage root and registry, the
Ray Data pass, the report, the ``drift_checked`` event, the CLI and the ``ray job submit`` script."""

from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mlplat.cli import main
from mlplat.monitoring import DriftStatus, check_drift, compute_drift
from mlplat.monitoring.partials import reference_of_table
from mlplat.records import CATALOG_FEATURE_SET
from mlplat.registry import RegistryStore
from mlplat.serving.telemetry import TelemetryWriter
from mlplat.storage import open_root

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

COUNTRIES = ["de", "fr", "us"]
JOB = Path(__file__).resolve().parents[2] / "jobs" / "drift.py"


def _record(writer, rng, n, *, age_shift=0.0, countries=(0.5, 0.3, 0.2), request_rows=100):
    """``n`` answered rows in requests of ``request_rows``, as the ingress records them."""
    for start in range(0, n, request_rows):
        k = min(request_rows, n - start)
        ages = rng.normal(40 + age_shift, 10, k)
        rows = [{"age": float(a), "country": str(c)} for a, c in zip(ages, rng.choice(COUNTRIES, k, p=list(countries)),
                                                                    strict=True)]
        predictions = [float(1 / (1 + np.exp(-(a - 40) / 10))) for a in ages]
        writer.record("churn", 1, rows, predictions, request_id=f"req-{start}", caller="tests", endpoint="v1",
                      latency_ms=2.0)
    writer.flush()


def _sleep_past(t_s):
    time.sleep(max(0.0, t_s - time.time()))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    storage, registry = open_root(str(tmp_path / "root")), RegistryStore(url)
    rng = np.random.default_rng(21)
    reference = pa.table({"age": rng.normal(40, 10, 5000), "country": rng.choice(COUNTRIES, 5000, p=[0.5, 0.3, 0.2]),
                          "clicked": rng.integers(0, 2, 5000)})
    fs = registry.catalog_register(CATALOG_FEATURE_SET, "churn-fs", {
        "status": "ready", "spec": {}, "source": {"name": "clicks", "version": 1}, "path": "features/churn-fs/v1",
        "data_path": "features/churn-fs/v1/data", "label_columns": ["clicked"]})
    storage.write_json({"raw": reference_of_table(reference)}, "features", "churn-fs", "v1", "stats.json")
    registry.create_model("churn", serving_policy={"monitoring": {"min_rows": 300, "prediction_reference": "1s"}})
    registry.register_version("churn", feature_set={"name": "churn-fs", "version": fs.version})
    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")
    monkeypatch.setenv("MLPLAT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLPLAT_REGISTRY_URL", url)
    return storage, registry, rng


def _cli(capsys, *argv):
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_drift_on_ray_report_event_cli_and_job(setup, capsys):
    storage, registry, rng = setup
    writer = TelemetryWriter(storage)
    _record(writer, rng, 1000)  # the prediction reference: the first second of v1's traffic
    t0 = time.time()
    _sleep_past(t0 + 2.1)  # a 1s window ending after the next rows starts after the reference period
    _record(writer, rng, 1500)
    same_end = time.time() + 0.05

    same = check_drift(storage, registry, "churn", window="1s", end=same_end)
    assert same.verdict.status == DriftStatus.NO_DRIFT, same.verdict
    assert same.rows == 1500 and same.window == "1s"
    assert [f.drifted for f in same.verdict.features] == [False, False]
    assert same.verdict.prediction is not None and same.verdict.prediction.drifted is False
    # The Ray Data pass and the in-process pass give the same statistics.
    local = compute_drift(storage, registry, "churn", window="1s", end=same_end, use_ray=False)
    assert local.stats == same.stats

    _sleep_past(same_end + 1.1)
    _record(writer, rng, 1500, age_shift=10.0, countries=(0.2, 0.3, 0.5))
    shifted_end = time.time() + 0.05
    shifted = check_drift(storage, registry, "churn", window="1s", end=shifted_end)
    assert shifted.verdict.status == DriftStatus.DRIFT
    assert shifted.verdict.drifted_features == ("age", "country") and shifted.verdict.prediction.drifted is True

    names = storage.list_dir(*shifted.report.removeprefix(storage.uri + "/").split("/"))
    assert {"index.html", "drift.json", "scores-over-time.png", "prediction.png", "feature-00-age.png",
            "feature-01-country.png"} <= set(names)
    events = registry.events_since(0, subject="model:churn", kinds="drift_checked")
    assert [(e.payload["status"], e.payload["rows"]) for e in events] == [("no_drift", 1500), ("drift", 1500)]

    # The CLI: the same check again (same window end: the same report directory, no second event).
    code, out, err = _cli(capsys, "monitor", "drift", "churn", "--window", "1s", "--end", str(shifted_end))
    assert code == 0, err
    assert "DRIFT" in out and "FEATURE" in out and "P-VALUE" in out and "(prediction)" in out
    assert f"report: {shifted.report}/index.html" in out
    assert len(registry.events_since(0, subject="model:churn", kinds="drift_checked")) == 2
    code, out, _ = _cli(capsys, "monitor", "drift", "churn", "--window", "1s", "--end", str(same_end), "--json")
    assert code == 0 and json.loads(out)["verdict"]["status"] == "no_drift"

    # Bad input: one line each, exit code 2, no traceback.
    for argv, message in ((["nope"], "error: "), (["churn", "--window", "2x"], "error: window '2x'"),
                          (["churn", "--end", "2020-01-01T00:00:00Z"], "error: no telemetry of churn v1 between")):
        code, out, err = _cli(capsys, "monitor", "drift", *argv)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err

    # The job script prints JSON and exits 0 (1 with --fail-on-drift on drift).
    job = runpy.run_path(str(JOB), run_name="drift_job")
    assert job["main"](["--model", "churn", "--window", "1s", "--end", str(shifted_end)]) == 0
    assert json.loads(capsys.readouterr().out)["drifted_features"] == ["age", "country"]
    assert job["main"](["--model", "churn", "--window", "1s", "--end", str(shifted_end), "--fail-on-drift"]) == 1
    assert job["main"](["--model", "nope"]) == 2


@pytest.mark.s3
def test_drift_reads_telemetry_on_s3(s3_settings, tmp_path):
    """The Ray Data tasks reach an S3 root through the storage's own filesystem."""
    import uuid

    storage = open_root(f"s3://mlplat-test/{uuid.uuid4().hex[:10]}", s3_settings)
    registry = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    rng = np.random.default_rng(22)
    reference = pa.table({"age": rng.normal(40, 10, 3000), "country": rng.choice(COUNTRIES, 3000, p=[0.5, 0.3, 0.2])})
    registry.catalog_register(CATALOG_FEATURE_SET, "churn-fs", {
        "status": "ready", "spec": {}, "source": {"name": "clicks", "version": 1}, "path": "features/churn-fs/v1",
        "data_path": "features/churn-fs/v1/data"})
    storage.write_json({"raw": reference_of_table(reference)}, "features", "churn-fs", "v1", "stats.json")
    registry.create_model("churn", serving_policy={"monitoring": {"min_rows": 300, "prediction_drift": False}})
    registry.register_version("churn", feature_set={"name": "churn-fs", "version": 1})
    writer = TelemetryWriter(storage)
    _record(writer, rng, 800, age_shift=10.0)
    result = compute_drift(storage, registry, "churn", window="1m", end=time.time() + 0.05)
    assert result.rows == 800 and result.verdict.drifted_features == ("age",)
    assert result.stats.prediction is None
