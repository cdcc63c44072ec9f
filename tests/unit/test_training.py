"""Training without Ray: config validation, pure decisions, checkpoint manifests, input resolution."""

from __future__ import annotations

import os

import pytest

from mlplat.errors import ConfigError, IntegrityError, NotFound, ResourceError
from mlplat.training import apply_overrides, config_hash, load_training_config, parse_training_config
from mlplat.training.checkpoints import (
    MODEL_FILE,
    flatten_optimizer_state,
    latest_valid_checkpoint,
    unflatten_optimizer_state,
    verify_checkpoint,
    write_checkpoint,
)
from mlplat.training.policy import (
    best_index,
    concurrency_limit,
    first_nonfinite,
    run_footprint,
    should_stop_early,
    worker_resources,
)

BASE = {"model": "churn", "spec": {"task": "binary"}, "feature_set": {"name": "toy"}}


def test_minimal_config_defaults():
    cfg = parse_training_config(BASE)
    assert cfg.hyperparameters.epochs == 10 and cfg.scaling.num_workers == 1 and cfg.checkpoint.keep == 2
    assert cfg.metric == "val_loss" and cfg.mode == "min"


@pytest.mark.parametrize("patch, needle", [
    ({"epochs": 3}, "unknown key 'epochs'"),
    ({"hyperparameters": {"epoch": 3}}, "unknown key 'hyperparameters.epoch'"),
    ({"hyperparameters": {"lr": -1}}, "'hyperparameters.lr'"),
    ({"hyperparameters": {"optimizer": "lbfgs"}}, "'hyperparameters.optimizer'"),
    ({"spec": {"task": "binary", "architecture": "transformer"}}, "'spec.architecture'"),
    ({"spec": {"task": "multiclass"}}, "num_classes"),
    ({"model": "../x"}, "'model'"),
    ({"scaling": {"num_workers": 0}}, "'scaling.num_workers'"),
    ({"hyperparameters": {"early_stopping": {"metric": "auc"}}}, "early_stopping.metric"),
    ({"search": {"space": {"hyperparameters.lr": {"normal": [0, 1]}}}}, "search.space"),
    ({"search": {"space": {"scaling.num_workers": {"choice": [1, 2]}}}}, "only 'hyperparameters.*'"),
])
def test_config_errors_name_the_key(patch, needle):
    with pytest.raises(ConfigError) as err:
        parse_training_config({**BASE, **patch})
    assert needle in str(err.value)


def test_yaml_examples_load_and_unknown_keys_fail(tmp_path):
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    for name in ("train-example.yaml", "train-example-gpu.yaml"):
        assert load_training_config(os.path.join(root, name)).model == "clicks-ctr"
    bad = tmp_path / "train-bad.yaml"
    bad.write_text("model: m\nspec: {task: binary}\nfeature_set: {name: f}\nhyperparameters: {epochs: 2, lrr: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown key 'hyperparameters.lrr'"):
        load_training_config(bad)


def test_config_hash_is_stable_and_sensitive():
    a, b = parse_training_config(BASE), parse_training_config({**BASE, "description": "doc only", "code_version": "x"})
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 64
    c = apply_overrides(a, {"hyperparameters.lr": 0.5})
    assert c.hyperparameters.lr == 0.5 and config_hash(c) != config_hash(a)
    with pytest.raises(ConfigError):
        apply_overrides(a, {"hyperparameters.lr": -2})
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(a, {"model.x": 1})


def test_early_stopping_decision():
    assert not should_stop_early([1.0, 0.9, 0.8], "min", patience=1)
    assert should_stop_early([1.0, 0.9, 0.95], "min", patience=1)
    assert not should_stop_early([1.0, 0.9, 0.95], "min", patience=2)
    assert should_stop_early([1.0, 0.9, 0.95, 0.91], "min", patience=2)
    assert not should_stop_early([1.0, 0.9, 0.95, 0.91], "min", patience=None)
    assert should_stop_early([0.5, 0.6, 0.6], "max", patience=1)
    assert should_stop_early([1.0, 0.99, 0.985], "min", patience=2, min_delta=0.05)  # tiny gains don't count
    assert should_stop_early([float("nan"), float("nan")], "min", patience=2)
    assert best_index([3.0, 1.0, 1.0, 2.0], "min") == 1 and best_index([], "min") is None
    assert first_nonfinite([{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": float("inf")}]) == 1


def test_worker_resources_and_gpu_errors():
    assert worker_resources(1, False, None, {"CPU": 2}) == (False, {"CPU": 1.0}, None)
    assert worker_resources(2, False, None, {"CPU": 2}) == (False, {"CPU": 0.5}, None)  # no 2-CPU hang
    assert worker_resources(4, False, None, {"CPU": 16}) == (False, {"CPU": 1.0}, None)
    assert worker_resources(2, True, None, {"CPU": 16, "GPU": 2}) == (True, {"CPU": 1.0, "GPU": 1.0}, None)
    with pytest.raises(ResourceError, match="0 GPU"):
        worker_resources(1, True, None, {"CPU": 2})
    use_gpu, res, note = worker_resources(1, True, {"CPU": 1, "GPU": 1}, {"CPU": 2}, allow_cpu_fallback=True)
    assert not use_gpu and "GPU" not in res and "falling back to CPU" in note
    with pytest.raises(ResourceError, match="need 4 CPUs"):
        worker_resources(2, False, {"CPU": 2}, {"CPU": 2})


def test_concurrency_limit():
    assert concurrency_limit({"CPU": 2}, {"CPU": 1}) == 1
    assert concurrency_limit({"CPU": 2}, {"CPU": 0.5}) == 2
    assert concurrency_limit({"CPU": 64, "GPU": 4}, {"CPU": 2, "GPU": 2}) == 2
    assert concurrency_limit({"CPU": 64}, {"CPU": 1}, configured=3) == 3
    assert concurrency_limit({"CPU": 1}, {"CPU": 4}) == 1  # never 0: a too-big run waits for free resources
    assert run_footprint(2, {"CPU": 0.5, "GPU": 0}) == {"CPU": 1.0}


def _checkpoint(tmp_path, name, epoch, value=1.0):
    import torch

    model = torch.nn.Linear(3, 1)
    torch.nn.init.constant_(model.weight, value)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    path = tmp_path / name
    write_checkpoint(str(path), model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                     state={"epoch": epoch, "history": [{"epoch": epoch}]})
    return str(path), model, opt


def test_checkpoint_manifest_roundtrip_and_corruption(tmp_path):
    import pyarrow.fs as pafs
    import torch

    fs = pafs.LocalFileSystem()
    path, model, opt = _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-00.000001", 0, 1.0)
    ckpt = verify_checkpoint(fs, path)
    assert ckpt.epoch == 0
    assert torch.equal(ckpt.model_weights()["weight"], model.state_dict()["weight"])
    restored = torch.optim.Adam(torch.nn.Linear(3, 1).parameters())
    restored.load_state_dict(ckpt.optimizer_state())
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # corrupt one byte of the weights: the manifest catches it
    with open(os.path.join(path, MODEL_FILE), "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x01")
    with pytest.raises(IntegrityError, match="sha256"):
        verify_checkpoint(fs, path)
    # a directory without a manifest is incomplete
    (tmp_path / "checkpoint_2026-01-01_00-00-00.000000").mkdir()
    with pytest.raises(IntegrityError, match="never completed"):
        verify_checkpoint(fs, str(tmp_path / "checkpoint_2026-01-01_00-00-00.000000"))


def test_latest_valid_checkpoint_falls_back(tmp_path):
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-01.000000", 0)
    _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-02.000000", 1)
    newest, _, _ = _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-03.000000", 2)
    assert latest_valid_checkpoint(fs, str(tmp_path)).epoch == 2
    os.remove(os.path.join(newest, "state.json"))
    rejected: list = []
    found = latest_valid_checkpoint(fs, str(tmp_path), preferred=newest, rejected=rejected)
    assert found.epoch == 1 and rejected[0]["path"] == newest
    assert latest_valid_checkpoint(fs, str(tmp_path / "nothing")) is None


def test_optimizer_state_flattening_is_lossless():
    import torch

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    back = unflatten_optimizer_state(tensors, meta)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    assert torch.equal(back["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])


def _registry_with_feature_set(tmp_path, label_columns=("y",)):
    from mlplat.records import DatasetRef, FeatureSetVersion
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    storage = open_root(str(tmp_path / "root"))
    registry = RegistryStore(str(tmp_path / "reg.db"))
    fsv = FeatureSetVersion(name="toy", version=1, spec={}, source=DatasetRef(name="raw", version=1), path="features/toy/v1",
                            data_path="features/toy/v1/data", num_rows=10, feature_columns=("a", "b"),
                            label_columns=label_columns, output_columns=("a", "b", *label_columns))
    registry.catalog_register("feature_set", "toy", fsv.payload())
    return storage, registry


def test_prepare_rejects_bad_requests_before_registering(tmp_path):
    from mlplat.training.runner import prepare

    storage, registry = _registry_with_feature_set(tmp_path)
    cluster = {"CPU": 2.0}
    ok = prepare(BASE, registry=registry, storage=storage, cluster=cluster)
    assert ok.data.label == "y" and ok.data.feature_columns == ("a", "b") and ok.resources_per_worker == {"CPU": 1.0}
    with pytest.raises(ResourceError, match="GPU"):
        prepare({**BASE, "scaling": {"use_gpu": True}}, registry=registry, storage=storage, cluster=cluster)
    fallback = prepare({**BASE, "scaling": {"use_gpu": True, "allow_cpu_fallback": True}}, registry=registry,
                       storage=storage, cluster=cluster)
    assert not fallback.use_gpu and fallback.notes
    with pytest.raises(ConfigError, match="does not import"):
        prepare({**BASE, "spec": {"task": "binary", "architecture": "custom", "factory": "no_such_pkg.mod:make"}},
                registry=registry, storage=storage, cluster=cluster)
    with pytest.raises(ConfigError, match="expected a torch.nn.Module"):
        prepare({**BASE, "spec": {"task": "binary", "architecture": "custom",
                                  "factory": "tests.integration.test_training_models:not_a_module"}},
                registry=registry, storage=storage, cluster=cluster)
    with pytest.raises(ConfigError, match="label 'nope'"):
        prepare({**BASE, "label": "nope"}, registry=registry, storage=storage, cluster=cluster)
    with pytest.raises(NotFound, match="no version 7"):
        prepare({**BASE, "feature_set": {"name": "toy", "version": 7}}, registry=registry, storage=storage, cluster=cluster)
    assert registry.list_models() == []  # nothing registered by any of these


def test_feature_set_without_label_is_refused(tmp_path):
    from mlplat.training.runner import prepare

    storage, registry = _registry_with_feature_set(tmp_path, label_columns=())
    with pytest.raises(ConfigError, match="has no label column"):
        prepare(BASE, registry=registry, storage=storage, cluster={"CPU": 2.0})


def test_materialize_limit_scales_with_the_object_store():
    from mlplat.raydata import MATERIALIZE_MAX_BYTES, materialize_limit

    assert materialize_limit(None) == MATERIALIZE_MAX_BYTES
    assert materialize_limit(100 * 2**20) == MATERIALIZE_MAX_BYTES
    assert materialize_limit(8 * 2**30) == 2 * 2**30
