"""Model families end to end on the session's Ray: train one model per store as one job, load a
member through serving's loader, validate in bulk with broken weights among the members,
promote, retrain, roll back in bulk; then serve members over HTTP.

60 stores x 60 rows, an MLP [8], 20 epochs: the module stays well under 90 s on 2 cores."""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest
import torch

from bench.families import FEATURES, family_config, family_table, register_family_feature_set
from mlplat.errors import ConfigError, InvalidName, NotFound
from mlplat.families import (
    StepAction,
    get_family,
    member_states,
    promote_family,
    rollback_family,
    train_family,
    validate_family,
)
from mlplat.models import load_bundle
from mlplat.models.packed import PackedRef, read_index, read_member
from mlplat.records import ModelState
from mlplat.registry import RegistryStore
from mlplat.storage import open_root

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STORES, SMALL = 60, 2
GUARDRAILS = {"guardrails": ["rmse <= 2.0"]}


def _bundle_meta(storage, name: str, version: int) -> dict:
    return json.loads(storage.read_bytes("models", name, f"v{version}", "bundle.json"))


def _corrupt(storage, ref) -> None:
    """Flip one byte inside one member's range of its shard (rewritten whole: S3 has no in-place
    writes); every other member's bytes stay as they were."""
    data = bytearray(storage.read_bytes(*ref.pack_parts, ref.shard))
    data[ref.offset + ref.length // 2] ^= 0xFF
    storage.write_bytes(bytes(data), *ref.pack_parts, ref.shard)


@pytest.fixture(scope="module")
def family(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    storage = open_root(str(root / "root"))
    registry = RegistryStore(str(root / "root" / "registry.db"))  # where the CLI looks for it
    register_family_feature_set(registry, storage, "sales-features", family_table(STORES, small=SMALL))
    # Small shards: the members spread over several, so one shard can go missing on its own.
    config = {**family_config("sales", "sales-features", shard_max_bytes=2048), "validation": GUARDRAILS}
    result = train_family(config, registry=registry, storage=storage)
    return {"registry": registry, "storage": storage, "result": result, "config": config}


def test_every_member_is_registered_trained_with_a_packed_placement(family):
    registry, storage, result = family["registry"], family["storage"], family["result"]
    assert result.version == 1 and result.trained == STORES and not result.failed
    assert set(result.skipped) == {f"Store {STORES}", f"Store {STORES + 1}"}
    assert all("training rows (min_rows_per_member: 20)" in r for r in result.skipped.values())
    assert result.shards > 1
    fv = get_family(registry, "sales")
    assert len(fv.members) == STORES and fv.members["sales--store-7"].entity == "Store 7"
    assert fv.pack == result.pack and fv.pack.startswith("models/sales/packs/")
    index = read_index(storage, *fv.pack.split("/"))
    assert set(index.members) == set(fv.members)
    for name, member in list(fv.members.items())[:5]:
        mv = registry.get_version(name, member.version)
        assert mv.state == ModelState.TRAINED and mv.metrics["rows"] > 20 and mv.extra["family"]["entity"] == member.entity
        meta = _bundle_meta(storage, name, member.version)
        assert meta["placement"]["kind"] == "packed" and meta["files"] == {}
        assert meta["placement"]["ref"]["pack"] == fv.pack and meta["placement"]["ref"]["member"] == name
        assert not storage.exists("models", name, f"v{member.version}", "model.safetensors")
    assert {m.name for m in registry.list_models(tag="family:sales")} == set(fv.members)


def test_a_member_loads_and_predicts_through_the_serving_loader(family):
    from mlplat.serving.runtime import load_servable

    registry, storage = family["registry"], family["storage"]
    mv = registry.get_version("sales--store-3", 1)
    servable = load_servable(storage, mv.name, mv.version, mv.artifacts["bundle"].sha256)
    x = np.random.default_rng(1).normal(size=(3, len(FEATURES))).astype(np.float32)
    got = servable.predict_matrix(x)
    ref = get_family(registry, "sales")
    weights = read_member(storage, PackedRef.from_dict(_bundle_meta(storage, mv.name, 1)["placement"]["ref"]))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model.load_state_dict(weights)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).reshape(-1).numpy()
    assert np.allclose(got, expected, atol=1e-5) and ref.input_columns == tuple(FEATURES)


def test_bulk_validate_promote_retrain_rollback(family):
    registry, storage = family["registry"], family["storage"]
    fv = get_family(registry, "sales")
    refs = {n: _bundle_meta(storage, n, m.version)["placement"]["ref"] for n, m in fv.members.items()}
    corrupt = "sales--store-5"
    _corrupt(storage, PackedRef.from_dict(refs[corrupt]))
    last_shard = max(r["shard"] for r in refs.values())
    lost = {n for n, r in refs.items() if r["shard"] == last_shard}
    storage.delete(*fv.pack.split("/"), last_shard)

    out = validate_family(registry, storage, "sales")
    verdicts = {v.member: v for v in out.verdicts}
    assert "sha256" in verdicts[corrupt].reasons[0] and verdicts[corrupt].verdict.value == "REJECTED"
    for name in lost:
        assert verdicts[name].verdict.value == "REJECTED" and "does not exist" in verdicts[name].reasons[0], verdicts[name]
    healthy = set(fv.members) - lost - {corrupt}
    assert {verdicts[n].verdict.value for n in healthy} == {"VALIDATED"}, [verdicts[n] for n in healthy]
    bad = registry.get_version(corrupt, 1)
    assert bad.state == ModelState.REJECTED and "weights failed to load" in bad.error
    good = registry.get_version("sales--store-1", 1)
    assert good.metrics["validation"]["rmse"] < 2.0 and good.artifacts["validation_report"].path.endswith("validation.json")
    report = storage.read_json(*good.artifacts["validation_report"].path.split("/"))
    assert {r["member"] for r in report["members"]} == set(fv.members) and report["counts"]["REJECTED"] == len(lost) + 1
    assert validate_family(registry, storage, "sales").report_path is None  # nothing TRAINED any more: no-op

    promoted = promote_family(registry, "sales", by="test")
    assert promoted.counts == {"PROMOTE": len(healthy), "SKIP": len(lost) + 1}
    assert registry.get_alias("sales--store-1", "production") == 1
    again = promote_family(registry, "sales", by="test")  # idempotent: nothing left to do
    assert again.counts == {"DONE": len(healthy), "SKIP": len(lost) + 1}
    assert rollback_family(registry, "sales", by="test").counts.get("ROLLBACK", 0) == 0  # no previous version yet

    v2 = train_family(family["config"], registry=registry, storage=storage)
    assert v2.version == 2 and v2.pack != fv.pack
    out2 = validate_family(registry, storage, "sales", 2)
    rows = {r["member"]: r for r in out2.rows}
    assert rows["sales--store-1"]["champion"]["version"] == 1  # compared with production on the same rows
    assert rows[corrupt]["champion"] is None  # v1 of it never served
    assert out2.counts["VALIDATED"] >= len(healthy)
    promote_family(registry, "sales", 2, by="test")
    assert registry.get_alias("sales--store-1", "production") == 2

    back = rollback_family(registry, "sales", 2, by="test")
    steps = {s.member: s for s in back.steps}
    assert steps["sales--store-1"].action == StepAction.ROLLBACK
    assert steps[corrupt].action == StepAction.SKIP and "no previous version" in steps[corrupt].reason
    assert registry.get_alias("sales--store-1", "production") == 1
    assert registry.get_version("sales--store-1", 2).state == ModelState.ARCHIVED
    assert {s.action for s in rollback_family(registry, "sales", 2, by="test").steps} <= {StepAction.DONE, StepAction.SKIP}
    states = {s["member"]: s for s in member_states(registry, get_family(registry, "sales", 2))}
    assert states["sales--store-1"]["production"] == 1 and states["sales--store-1"]["state"] == "ARCHIVED"


def test_cli_show_lists_members_and_versions(family):
    from click.testing import CliRunner

    from mlplat.cli import cli

    # A namespace of its own: the CLI publishes this root as the platform of its namespace on the
    # session's Ray, and a later module's jobs (another root, the default namespace) would be refused.
    runner = CliRunner(env={"MLPLAT_REGISTRY_MODE": "local", "MLPLAT_NAMESPACE": f"families-cli-{uuid.uuid4().hex[:8]}"})
    result = runner.invoke(cli, ["--root", family["storage"].base, "family", "show", "sales", "1", "--show", "100"])
    assert result.exit_code == 0, result.output
    assert "family sales v1" in result.output and "sales--store-7" in result.output and "Store 7" in result.output
    assert f"Store {STORES}" in result.output and "SKIPPED ENTITY" in result.output
    listed = runner.invoke(cli, ["--root", family["storage"].base, "family", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["name"] == "sales"
    root = family["storage"].base
    validated = runner.invoke(cli, ["--root", root, "family", "validate", "sales", "2"])  # nothing TRAINED: no-op
    assert validated.exit_code == 0 and "family sales v2: VALIDATED 0, REJECTED 0, UNCHANGED" in validated.output
    promoted = runner.invoke(cli, ["--root", root, "family", "promote", "sales", "1", "--json"])
    assert promoted.exit_code == 0, promoted.output
    assert set(json.loads(promoted.output)["counts"]) <= {"DONE", "SKIP"}  # after the rollback: v1 serves already
    rolled = runner.invoke(cli, ["--root", root, "family", "rollback", "sales", "2"])
    assert rolled.exit_code == 0 and "family sales v2 rollback:" in rolled.output and "ROLLBACK" not in rolled.output
    missing = runner.invoke(cli, ["--root", root, "family", "show", "nope"])
    assert isinstance(missing.exception, NotFound) and "family 'nope' does not exist" in str(missing.exception)


def test_bad_requests_fail_before_anything_is_registered(family):
    registry, storage = family["registry"], family["storage"]
    before = registry.last_seq()
    with pytest.raises(ConfigError, match="entity_column 'shop' is not a column"):
        train_family({**family["config"], "entity_column": "shop"}, registry=registry, storage=storage)
    with pytest.raises(ConfigError, match="'--' separates a family"):
        train_family({**family["config"], "family": "sales--x"}, registry=registry, storage=storage)
    with pytest.raises(ConfigError, match="no entity of .* could be trained"):
        train_family({**family["config"], "family": "tiny", "fit": {"min_rows_per_member": 10_000}},
                     registry=registry, storage=storage)
    assert registry.last_seq() == before
    with pytest.raises(NotFound, match="has no version 9"):
        validate_family(registry, storage, "sales", 9)
    with pytest.raises(NotFound, match="no member"):
        promote_family(registry, "sales", members=["sales--store-999"])
    with pytest.raises(InvalidName):
        get_family(registry, "Bad Name")


def test_local_and_s3_roots_train_load_and_reject_a_corrupted_member(ray_session, storage, tmp_path):
    """The same path on a local root and on S3 (SeaweedFS): a member loads by a ranged read of its
    shard; one member's corrupted bytes reject it alone."""
    registry = RegistryStore(str(tmp_path / "registry.db"))
    register_family_feature_set(registry, storage, "city-features", family_table(12, seed=5))
    result = train_family({**family_config("city", "city-features"), "validation": GUARDRAILS},
                          registry=registry, storage=storage)
    assert result.trained == 12
    mv = registry.get_version("city--store-4", 1)
    loaded = load_bundle(storage, mv.name, 1, expected_sha256=mv.artifacts["bundle"].sha256)
    assert loaded.placement == "packed"
    ref = PackedRef.from_dict(_bundle_meta(storage, "city--store-3", 1)["placement"]["ref"])
    assert set(read_member(storage, ref)) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    _corrupt(storage, ref)
    out = validate_family(registry, storage, "city")
    verdicts = {v.member: v.verdict.value for v in out.verdicts}
    assert verdicts.pop("city--store-3") == "REJECTED" and set(verdicts.values()) == {"VALIDATED"}


# -- serving ----------------------------------------------------------------------------------------

TOKEN = "families-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _infer(client, name: str, x: list[float]):
    payload = {"inputs": [{"name": "input", "shape": [1, len(x)], "datatype": "FP32", "data": [x]}]}
    return client.post(f"/v2/models/{name}/infer", json=payload, headers=AUTH)


def test_members_serve_over_http_and_a_corrupted_one_answers_an_error(ray_session, serve_http_port, tmp_path_factory):
    from ray import serve

    from mlplat.config import PlatformConfig, PoolSettings, ServeSettings
    from mlplat.registry import ActorRegistry
    from mlplat.serving import start_serving

    root = tmp_path_factory.mktemp("families-serving")
    config = PlatformConfig(root=str(root), namespace="mlplat-test", api_token=TOKEN,
                            serve=ServeSettings(port=serve_http_port, app_name="mlplat-families", telemetry=False,
                                                pool=PoolSettings(min_replicas=1, max_replicas=1)))
    actor_name = f"registry-families-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor_name, url=str(root / "registry.db"))
    storage = open_root(config.root)
    register_family_feature_set(registry, storage, "region-features", family_table(8, seed=3))
    train_family({**family_config("region", "region-features"), "validation": GUARDRAILS}, registry=registry,
                 storage=storage)
    assert validate_family(registry, storage, "region").counts["VALIDATED"] == 8
    promote_family(registry, "region", by="test")
    _corrupt(storage, PackedRef.from_dict(_bundle_meta(storage, "region--store-2", 1)["placement"]["ref"]))
    url = start_serving(config, registry_actor=actor_name)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for name in ("region--store-0", "region--store-5"):
                response = _infer(client, name, [0.1, -0.2, 0.3, 0.4])
                assert response.status_code == 200, response.text
                assert response.json()["model_version"] == "1"
            broken = _infer(client, "region--store-2", [0.1, -0.2, 0.3, 0.4])
            # An unloadable version (checksum mismatch) is what serving answers for any model
            # whose weights fail to load: 503 with the one JSON error body, never a 500.
            assert broken.status_code == 503, broken.text
            assert "error" in broken.json()
            assert _infer(client, "region--store-5", [0.0, 0.0, 0.0, 0.0]).status_code == 200  # others unaffected
    finally:
        serve.delete(config.serve.app_name)
        import ray

        ray.kill(ray.get_actor(actor_name, namespace=config.namespace))
