"""The family record in a real (local) registry, the config, and one member's fit: no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from mlplat.errors import ConfigError, ConflictError, NotFound
from mlplat.families.config import FamilyConfig, family_config_hash, parse_family_config
from mlplat.families.fit import (
    FIT_FAILED,
    FIT_SKIPPED,
    FIT_TRAINED,
    NULL_ENTITY,
    fit_block,
    fit_group,
    fit_groups,
    member_seed,
    weights_from_bytes,
)
from mlplat.families.record import (
    FamilyMember,
    FamilyVersion,
    family_versions,
    get_family,
    list_families,
    next_family_version,
    register_family_call,
)
from mlplat.models import ModelSpec
from mlplat.records import FeatureSetRef
from mlplat.registry import RegistryStore

CONFIG = {"family": "sales", "feature_set": {"name": "sales-features"}, "entity_column": "store",
          "spec": {"task": "regression", "hidden": [4]}}


def _fv(name: str, version: int) -> FamilyVersion:
    return FamilyVersion(name=name, version=version, run_id=f"r{version}", feature_set=FeatureSetRef(name="fs", version=1),
                         entity_column="store", label="y", input_columns=("x0",), spec={"task": "regression"},
                         pack=f"models/{name}/packs/r{version}", members={f"{name}--a": FamilyMember(entity="A", version=version)})


def test_family_versions_are_numbered_under_a_compare_and_set(tmp_path):
    registry = RegistryStore(str(tmp_path / "r.db"))
    with pytest.raises(NotFound, match="family 'sales' does not exist"):
        get_family(registry, "sales")
    version, seq = next_family_version(registry, "sales")
    assert version == 1
    registry.batch([register_family_call(_fv("sales", version), seq)])
    stale_version, stale_seq = version, seq
    version, seq = next_family_version(registry, "sales")
    assert version == 2
    with pytest.raises(ConflictError):  # a job that read before the first record cannot take v1 again
        registry.batch([register_family_call(_fv("sales", stale_version), stale_seq)])
    registry.batch([register_family_call(_fv("sales", version), seq)])
    registry.batch([register_family_call(_fv("other", 1), registry.last_seq())])
    assert [f.version for f in family_versions(registry, "sales")] == [1, 2]
    assert get_family(registry, "sales").version == 2 and get_family(registry, "sales", 1).run_id == "r1"
    with pytest.raises(NotFound, match="has no version 3; it has versions 1, 2"):
        get_family(registry, "sales", 3)
    assert [(f.name, f.version) for f in list_families(registry)] == [("other", 1), ("sales", 2)]


def test_config_is_strict_and_names_are_checked():
    cfg = parse_family_config(CONFIG)
    assert isinstance(cfg, FamilyConfig) and cfg.fit.min_rows_per_member == 20
    assert family_config_hash(cfg) == family_config_hash(parse_family_config(dict(CONFIG)))
    with pytest.raises(ConfigError, match="separates a family"):
        parse_family_config({**CONFIG, "family": "sales--eu"})
    with pytest.raises(ConfigError, match="epoch"):
        parse_family_config({**CONFIG, "fit": {"epoch": 3}})


def test_fit_group_trains_skips_and_fails_without_raising():
    spec = ModelSpec(task="regression", hidden=[4])
    fit = {"epochs": 30, "batch_size": 16, "lr": 0.05, "weight_decay": 0.0, "seed": 0, "min_rows_per_member": 10}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3
    out = fit_group("Store 1", x, y, spec=spec, fit=fit)
    assert out["status"] == FIT_TRAINED and out["train_loss"] < 0.5 and out["rows"] == 80
    assert set(weights_from_bytes(out["weights"])) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert fit_group("Store 1", x, y, spec=spec, fit=fit)["weights"] == out["weights"]  # seeded by entity
    assert member_seed(0, "Store 1") != member_seed(0, "Store 2")
    small = fit_group("Store 2", x[:5], y[:5], spec=spec, fit=fit)
    assert small["status"] == FIT_SKIPPED and "only 5 training rows" in small["reason"]
    y_nan = y.copy()
    y_nan[:75] = np.nan
    assert fit_group("Store 3", x, y_nan, spec=spec, fit=fit)["status"] == FIT_SKIPPED  # rows without a label dropped
    bad = fit_group("Store 4", x, y * 1e30, spec=spec, fit=fit)  # float32 overflow: the loss is not finite
    assert bad["status"] == FIT_FAILED and "non-finite training loss" in bad["reason"] and bad["weights"] is None


@pytest.mark.parametrize("task,hidden", [("regression", [4]), ("binary", [4, 3]), ("multiclass", [4])])
def test_stacked_fit_matches_one_member_at_a_time(task, hidden):
    spec = ModelSpec(task=task, hidden=hidden, num_classes=3 if task == "multiclass" else None)
    fit = {"epochs": 3, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01, "seed": 1, "min_rows_per_member": 10}
    rng = np.random.default_rng(2)
    items = []
    for i in range(6):
        n = int(rng.integers(33, 48))  # 3 batches per epoch each, the last one partial and of different sizes
        x = rng.normal(size=(n, 3)).astype(np.float32)
        y = x @ rng.normal(size=3)
        y = y if task == "regression" else (y > 0).astype(float) if task == "binary" else np.digitize(y, [-0.5, 0.5])
        items.append((f"Store {i}", x, y))
    stacked = fit_block(items, spec=spec, fit=fit)
    for (key, x, y), got in zip(items, stacked, strict=True):
        want = fit_group(key, x, y, spec=spec, fit=fit)
        assert got["status"] == want["status"] == FIT_TRAINED and got["entity"] == key
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4, abs=1e-6)
        a, b = weights_from_bytes(got["weights"]), weights_from_bytes(want["weights"])
        assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_fit_groups_reports_every_entity_once():
    import pandas as pd

    rng = np.random.default_rng(3)
    frames = []
    for store, n in (("A", 40), ("B", 70), ("C", 5), (None, 4)):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        frames.append(pd.DataFrame({"store": [store] * n, "x0": x[:, 0], "x1": x[:, 1], "y": x @ [1.0, -1.0]}))
    fit = {"epochs": 2, "batch_size": 16, "lr": 0.05, "weight_decay": 0.0, "seed": 0, "min_rows_per_member": 10}
    for spec in (ModelSpec(task="regression", hidden=[4]), ModelSpec(task="regression", hidden=[4], dropout=0.1)):
        out = {r["entity"]: r for r in fit_groups(pd.concat(frames), entity_column="store", feature_columns=["x0", "x1"],
                                                  label="y", spec=spec, fit=fit)}
        assert {k: r["status"] for k, r in out.items()} == {"A": FIT_TRAINED, "B": FIT_TRAINED, "C": FIT_SKIPPED,
                                                            NULL_ENTITY: FIT_SKIPPED}
        assert out[NULL_ENTITY]["reason"] == "4 rows have no store value" and out["B"]["rows"] == 70
