"""Validation through the real path: registry, bundles, Parquet feature set, Ray Data actor pool.

Small data (2,000 rows) so the whole module stays well under two minutes on 2 cores."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.builders import COEF, FEATURES
from bench.builders import linear_model as _linear
from bench.builders import register_feature_set as _feature_set
from bench.builders import register_trained as _trained
from bench.builders import validation_table as _table
from mlplat.errors import ConfigError, IntegrityError, InvalidTransition, ValidationError
from mlplat.records import ApprovalState, ModelState
from mlplat.registry import RegistryStore
from mlplat.storage import open_root
from mlplat.validation import approve, reject, report_of, score, summary_text, validate

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def env(tmp_path, ray_session):
    storage = open_root(str(tmp_path / "root"))
    registry = RegistryStore(str(tmp_path / "root" / "registry.db"))  # where the CLI looks for it
    return registry, storage


def _check_report(storage, name: str, version: int, pngs: set[str]) -> dict:
    from PIL import Image

    report, location = report_of(storage, name, version)
    files = {f for f in pngs | {"index.html", "validation.json"}}
    for f in files:
        assert storage.exists("reports", name, f"v{version}", f), f
    for f in pngs:
        data = storage.read_bytes("reports", name, f"v{version}", f)
        assert data[:8] == PNG_MAGIC
        import io

        with Image.open(io.BytesIO(data)) as img:
            img.load()
            assert img.size[0] > 200 and img.size[1] > 200
    html = storage.read_bytes("reports", name, f"v{version}", "index.html").decode()
    for f in pngs:
        assert f'src="{f}"' in html
    assert f"inference: {report['inference']['executor']} on {report['inference']['device']}" in html
    assert location.endswith(f"reports/{name}/v{version}")
    return report


def test_good_and_bad_binary_models_end_validated_and_rejected(env):
    registry, storage = env
    fs = _feature_set(registry, storage, "churn-features", _table(), ["label"])
    registry.create_model("churn", serving_policy={"validation": {
        "guardrails": ["auc >= 0.8", "auc >= champion - 0.005", "ece <= 0.2"], "slices": ["region"]}})

    good = _trained(registry, storage, "churn", _linear(COEF), fs)
    out = validate(registry, storage, "churn", good)
    assert out.state == ModelState.VALIDATED and out.passed, out.decision.reasons
    assert out.metrics["auc"] > 0.8
    mv = registry.get_version("churn", good)
    assert mv.metrics["validation"]["auc"] == pytest.approx(out.metrics["auc"])
    assert mv.artifacts["validation_report"].path == "reports/churn/v1/validation.json"
    report = _check_report(storage, "churn", good, {"roc.png", "calibration.png", "metrics.png", "slice_region.png"})
    assert set(report["slices"]["region"]) == {"eu", "us"}
    assert report["slices"]["region"]["eu"]["rows"] + report["slices"]["region"]["us"]["rows"] == report["rows"]
    assert report["rows"] == sum(1 for s in _table().column("split").to_pylist() if s == "validation")
    assert "no production version" in report["decision"]["notes"][0]
    assert report["inference"] == {"executor": "tasks", "device": "cpu", "actors": None}  # no GPUs here

    bad = _trained(registry, storage, "churn", _linear(-COEF), fs)
    out = validate(registry, storage, "churn", bad)
    assert out.state == ModelState.REJECTED and not out.passed
    assert any(r.startswith("auc >= 0.8: auc = ") for r in out.decision.reasons)
    mv = registry.get_version("churn", bad)
    assert mv.state == ModelState.REJECTED and "auc >= 0.8" in mv.error
    _check_report(storage, "churn", bad, {"roc.png", "calibration.png", "metrics.png", "slice_region.png"})
    assert "REJECTED" in summary_text(*report_of(storage, "churn", bad))
    assert "inference: tasks on cpu" in summary_text(*report_of(storage, "churn", bad))

    # With v1 in production, a slightly worse v3 fails the no-regression guardrail on the same rows.
    registry.promote("churn", good)
    worse = _trained(registry, storage, "churn", _linear(COEF + np.array([0.0, 1.2, 0.0, 0.0])), fs)
    out = validate(registry, storage, "churn", worse)
    report, _ = report_of(storage, "churn", worse)
    assert report["champion"]["version"] == good
    assert report["champion"]["metrics"]["auc"] == pytest.approx(registry.get_version("churn", good).metrics["validation"]["auc"])
    assert out.state == ModelState.REJECTED
    assert any("champion" in r for r in out.decision.reasons), out.decision.reasons


def test_regression_nan_and_approval(env):
    registry, storage = env
    fs = _feature_set(registry, storage, "price-features", _table(seed=1), ["target"])
    registry.create_model("price", serving_policy={"validation": {"guardrails": ["rmse <= 1.0"], "require_approval": True}})
    good = _trained(registry, storage, "price", _linear(COEF), fs, task="regression", label="target")
    out = validate(registry, storage, "price", good)
    assert out.state == ModelState.VALIDATED and out.approval == ApprovalState.PENDING
    assert out.metrics["rmse"] == pytest.approx(0.3, abs=0.05) and out.metrics["r2"] > 0.9
    report = _check_report(storage, "price", good, {"predicted_vs_actual.png", "residuals.png", "metrics.png"})
    assert report["approval"] == "PENDING"
    pending = registry.get_version("price", good)
    assert pending.approval.state == ApprovalState.PENDING and pending.approval.blocks_promotion
    assert "approval" not in pending.extra
    # The CLI (registry in-process): `mlplat models approve` and `mlplat report`.
    from click.testing import CliRunner

    from mlplat.cli import cli

    runner = CliRunner(env={"MLPLAT_REGISTRY_MODE": "local"})
    root = storage.base
    result = runner.invoke(cli, ["--root", root, "report", "price", str(good)])
    assert result.exit_code == 0, result.output
    assert "VALIDATED — awaiting approval" in result.output and "index.html" in result.output
    result = runner.invoke(cli, ["--root", root, "models", "approve", "price", str(good), "--by", "alice", "--note", "ok"])
    assert result.exit_code == 0, result.output
    assert f"price v{good}: VALIDATED, approval APPROVED by alice: ok" in result.output
    approved = registry.get_version("price", good)
    assert approved.state == ModelState.VALIDATED and approved.approval.state == ApprovalState.APPROVED
    assert (approved.approval.by, approved.approval.note) == ("alice", "ok") and approved.approval.at
    assert not approved.approval.blocks_promotion
    result = runner.invoke(cli, ["--root", root, "report", "price", str(good)])
    assert result.exit_code == 0 and "awaiting approval" not in result.output
    assert "approval: APPROVED by alice: ok" in result.output
    with pytest.raises(InvalidTransition):  # a decision is final: not twice, not reversed
        approve(registry, "price", good, by="alice")
    with pytest.raises(InvalidTransition):
        reject(registry, "price", good, by="bob")
    assert registry.get_version("price", good) == approved

    # A reviewer's "no": VALIDATED -> REJECTED, who and why recorded; then nothing more to decide.
    second = _trained(registry, storage, "price", _linear(COEF), fs, task="regression", label="target")
    assert validate(registry, storage, "price", second).approval == ApprovalState.PENDING
    result = runner.invoke(cli, ["--root", root, "models", "reject", "price", str(second), "--by", "bob",
                                 "--note", "trained on a stale snapshot"])
    assert result.exit_code == 0, result.output
    assert f"price v{second}: REJECTED, approval REJECTED by bob: trained on a stale snapshot" in result.output
    rejected = registry.get_version("price", second)
    assert rejected.state == ModelState.REJECTED and rejected.approval.state == ApprovalState.REJECTED
    assert (rejected.approval.by, rejected.approval.note) == ("bob", "trained on a stale snapshot")
    with pytest.raises(InvalidTransition):
        approve(registry, "price", second, by="alice")
    with pytest.raises(InvalidTransition):
        reject(registry, "price", second, by="bob")

    nan = _trained(registry, storage, "price", _linear([float("nan")] * 4), fs, task="regression", label="target")
    out = validate(registry, storage, "price", nan)
    assert out.state == ModelState.REJECTED and out.approval == ApprovalState.NOT_REQUIRED
    assert any("NaN/Inf predictions for" in r for r in out.decision.reasons)
    assert "NaN" in registry.get_version("price", nan).error


def test_bad_input_is_a_clear_error(env):
    registry, storage = env
    fs = _feature_set(registry, storage, "f", _table(n=300), ["label"])
    empty = _feature_set(registry, storage, "empty", _table(n=300, validation_fraction=0.0), ["label"])
    v = _trained(registry, storage, "m", _linear(COEF), fs)

    with pytest.raises(ValidationError, match="zero rows"):
        validate(registry, storage, "m", v, feature_set=f"empty@v{empty['version']}")
    assert registry.get_version("m", v).state == ModelState.TRAINED

    with pytest.raises(ConfigError, match="not computed for task 'binary'"):
        validate(registry, storage, "m", v, policy={"guardrails": ["rmse <= 1"]})
    assert registry.get_version("m", v).state == ModelState.TRAINED

    # Tamper with bundle.json after registration: checksum fails, version ends REJECTED with the reason.
    meta = json.loads(storage.read_bytes("models", "m", f"v{v}", "bundle.json"))
    meta["extra"] = {"tampered": True}
    storage.write_json(meta, "models", "m", f"v{v}", "bundle.json")
    with pytest.raises(IntegrityError, match="changed after registration"):
        validate(registry, storage, "m", v)
    mv = registry.get_version("m", v)
    assert mv.state == ModelState.REJECTED and "integrity" in mv.error
    assert storage.exists("reports", "m", f"v{v}", "validation.json")

    with pytest.raises(InvalidTransition, match="only TRAINED versions"):
        validate(registry, storage, "m", v)


def test_batch_scoring_joins_back_to_inputs(env, tmp_path):
    from mlplat.data import get_dataset, register_dataset

    registry, storage = env
    fs = _feature_set(registry, storage, "sf", _table(n=500), ["label"])
    v = _trained(registry, storage, "scorer", _linear(COEF), fs)
    raw = _table(n=700, seed=5).drop_columns(["split", "label", "target"])
    pq.write_table(raw, tmp_path / "raw.parquet")
    register_dataset(storage, registry, "events", str(tmp_path / "raw.parquet"))

    out = score(registry, storage, "scorer", dataset="events", version=v)
    assert out.kind.value == "inference" and out.num_rows == 700 and out.name == "scorer-scores"
    dv = get_dataset(registry, "scorer-scores")
    assert dv.status == "ready"
    got = pa.concat_tables([pq.read_table(storage.path(dv.path, f)) for f in dv.files])
    assert set(got.schema.names) == {"id", "prediction", "model", "model_version"}
    assert set(got.column("model_version").to_pylist()) == {v}
    assert set(got.column("model").to_pylist()) == {"scorer"}
    joined = raw.join(got, "id")
    assert joined.num_rows == 700
    X = np.column_stack([joined.column(f).to_numpy() for f in FEATURES])
    expected = 1 / (1 + np.exp(-(X @ COEF)))
    assert np.allclose(joined.column("prediction").to_numpy(), expected, atol=1e-5)

    with pytest.raises(Exception, match="no production version"):
        score(registry, storage, "scorer", dataset="events")


def test_cached_bundle_tasks_match_the_actor_pool_and_reload_a_changed_bundle(env):
    """The two batch-inference executors give the same predictions; a task worker's cached
    bundle is not used once the bundle changed on storage (the tamper is still caught)."""
    from mlplat.records import FeatureSetRef
    from mlplat.validation.inference import BundleRef, predict_dataset, resolve_validation_split

    registry, storage = env
    fs = _feature_set(registry, storage, "ef", _table(n=600), ["label"])
    v = _trained(registry, storage, "exec", _linear(COEF), fs)
    sha = registry.get_version("exec", v).artifacts["bundle"].sha256
    split = resolve_validation_split(registry, storage, FeatureSetRef(name="ef", version=fs["version"]))
    refs = [BundleRef("exec", v, sha, "pred", tuple(FEATURES))]

    def predictions(executor: str) -> dict[int, float]:
        ds = split.read(storage, columns=["id", *FEATURES])
        if executor == "actors":
            # Read first, then one actor: the pipeline never needs more than one CPU at a time, so
            # a CPU still held by an earlier test's leftovers slows it instead of starving the read
            # behind the actor (a CI run hung here for 600 s with the actor up and the read queued).
            ds = ds.materialize()
        out = predict_dataset(ds, storage, refs, ["id"], batch_size=64, executor=executor, max_actors=1)
        return {int(i): float(p) for b in out.iter_batches(batch_size=None, batch_format="numpy")
                for i, p in zip(b["id"], b["pred"], strict=True)}

    by_actors = predictions("actors")
    first, warm = predictions("tasks"), predictions("tasks")
    assert len(by_actors) == split.rows > 0
    assert first == warm and set(first) == set(by_actors)
    assert max(abs(first[i] - by_actors[i]) for i in first) < 1e-6

    meta = json.loads(storage.read_bytes("models", "exec", f"v{v}", "bundle.json"))
    meta["extra"] = {"tampered": True}
    storage.write_json(meta, "models", "exec", f"v{v}", "bundle.json")
    with pytest.raises(Exception, match="changed after registration"):
        predictions("tasks")


def test_validate_job_exit_codes_and_output(env, monkeypatch, capsys):
    """jobs/validate.py (what `ray job submit` runs): 0 and the JSON verdict for a VALIDATED
    version, 1 for a REJECTED one, 2 with a one-line error for a version not in TRAINED."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("validate_job", Path(__file__).parents[2] / "jobs" / "validate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")  # the registry the env fixture wrote
    # A namespace of its own: an earlier test's platform published another root on this Ray, and
    # a job whose --root disagrees with it is refused (cluster_settings.adopt_cluster_settings).
    monkeypatch.setenv("MLPLAT_NAMESPACE", f"validate-job-{uuid.uuid4().hex[:8]}")
    registry, storage = env
    fs = _feature_set(registry, storage, "job-features", _table(), ["label"])
    registry.create_model("jobbed", serving_policy={"validation": {"guardrails": ["auc >= 0.8"]}})
    good = _trained(registry, storage, "jobbed", _linear(COEF), fs)
    bad = _trained(registry, storage, "jobbed", _linear(-COEF), fs)

    assert job.main(["--root", storage.base, "--model", "jobbed", "--version", str(good)]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["state"] == "VALIDATED" and verdict["passed"] and verdict["report"].endswith(f"reports/jobbed/v{good}")
    assert job.main(["--root", storage.base, "--model", "jobbed", "--version", str(bad)]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["state"] == "REJECTED" and any(r.startswith("auc >= 0.8") for r in verdict["reasons"])
    assert job.main(["--root", storage.base, "--model", "jobbed", "--version", str(good)]) == 2
    assert "only TRAINED versions" in capsys.readouterr().err
