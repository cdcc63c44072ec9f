"""Training end to end on the shared 2-CPU Ray: bundle round trip, F7 (worker killed mid-epoch),
F8 (corrupted latest checkpoint), non-finite loss, publish through the queue, a 2-trial sweep."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplat.models import load_bundle
from mlplat.records import DatasetRef, FeatureSetVersion, RunState
from mlplat.registry import RegistryStore
from mlplat.storage import open_root
from mlplat.training import read_progress, train
from mlplat.training.checkpoints import MODEL_FILE, latest_valid_checkpoint, list_checkpoints
from mlplat.training.runner import prepare, run_trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]



@pytest.fixture(scope="module", autouse=True)
def _no_trainer_outlives_this_module(ray_session):
    """A run killed or re-queued here can leave a Train controller retrying its worker group and
    holding CPUs; the modules after this one must start with every CPU free."""
    yield
    from tests.conftest import stop_leftover_trainers

    stop_leftover_trainers()

def make_feature_set(storage, registry, name="toy", n=480, d=4, task="binary", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    z = x @ np.arange(1, d + 1, dtype=np.float32)
    cols = {f"f{i}": x[:, i] for i in range(d)}
    cols["y"] = (z > 0).astype(np.int64) if task == "binary" else z.astype(np.float32)
    cols["split"] = np.where(rng.random(n) < 0.2, "validation", "train")
    path = f"features/{name}/v1/data"
    with storage.open_write(path, "part-0.parquet") as fh:
        pq.write_table(pa.table(cols), fh)
    fsv = FeatureSetVersion(name=name, version=1, spec={}, source=DatasetRef(name="raw", version=3), path=f"features/{name}/v1",
                            data_path=path, num_rows=n, output_columns=tuple(cols), label_columns=("y",), entity_key="id",
                            feature_columns=tuple(f"f{i}" for i in range(d)), split={"method": "hash", "column": "split"})
    return registry.catalog_register("feature_set", name, fsv.payload())


def config(model="churn", **hp):
    return {"model": model, "spec": {"task": "binary", "hidden": [8]}, "feature_set": {"name": "toy"},
            "code_version": "deadbeef", "hyperparameters": {"epochs": 2, "batch_size": 64, "lr": 0.02, **hp}}


@pytest.fixture
def env(tmp_path, ray_session):
    storage = open_root(str(tmp_path / "root"))
    registry = RegistryStore(tmp_path / "registry.db")
    make_feature_set(storage, registry)
    make_feature_set(storage, registry, name="toy-reg", task="regression")
    return storage, registry


def test_train_end_to_end_and_bundle_round_trip(env):
    import torch

    storage, registry = env
    result = train(config(epochs=3), registry=registry, storage=storage)
    assert result.ok, result.error
    mv = registry.get_version("churn", result.version)
    assert mv.state.value == "TRAINED"
    assert mv.feature_set.name == "toy" and mv.feature_set.version == 1
    assert [d.name for d in mv.datasets] == ["raw"] and mv.code_version == "deadbeef"
    assert mv.config_hash and mv.run_id == result.run_id
    assert [h["epoch"] for h in mv.extra["history"]] == [0, 1, 2]
    assert mv.metrics["best_epoch"] in (0, 1, 2) and "val_loss" in mv.metrics
    bundle_ref = mv.artifacts["bundle"]
    assert bundle_ref.path == f"models/churn/v{result.version}/bundle.json"
    loaded = load_bundle(storage, "churn", result.version, expected_sha256=bundle_ref.sha256)
    # Same outputs as the weights of the best epoch in the verified checkpoint, bit for bit.
    ckpt = latest_valid_checkpoint(storage.fs, storage.path("runs", result.run_id))
    from mlplat.models import build_model

    ref = build_model(loaded.spec, 4)
    ref.load_state_dict(ckpt.model_weights(best=True))
    ref.eval()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ref(x))
    assert loaded.input_columns == ["f0", "f1", "f2", "f3"] and loaded.meta["label_columns"] == ["y"]


def test_f8_corrupted_latest_checkpoint_falls_back(env):
    storage, registry = env
    cfg = config(model="f8")
    prepared = prepare(cfg, registry=registry, storage=storage)
    run_id = f"f8-{uuid.uuid4().hex[:6]}"
    run_trainer(prepared, storage=storage, run_id=run_id)
    run_dir = storage.path("runs", run_id)
    ckpts = list_checkpoints(storage.fs, run_dir)
    assert len(ckpts) == 2
    with open(f"{ckpts[-1]}/{MODEL_FILE}", "r+b") as fh:  # flip bytes of the latest checkpoint's weights
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x00\xff" * 4)
    rejected = []
    assert latest_valid_checkpoint(storage.fs, run_dir, rejected=rejected).epoch == 0
    assert "sha256" in rejected[0]["reason"]
    # Resume the same run with one more epoch: Ray hands back the corrupted one, the loop falls back.
    bigger = dataclasses.replace(prepared, config=prepared.config.model_copy(
        update={"hyperparameters": prepared.config.hyperparameters.model_copy(update={"epochs": 3})}))
    run_trainer(bigger, storage=storage, run_id=run_id)
    progress = read_progress(storage, run_id)
    resume = progress["resumes"][-1]
    assert resume["from_epoch"] == 0 and resume["next_epoch"] == 1
    assert resume["rejected"] and "sha256" in resume["rejected"][0]["reason"]
    assert [h["epoch"] for h in progress["history"]] == [0, 1, 2]


def test_f7_worker_killed_mid_epoch_resumes(env):
    storage, registry = env
    cfg = config(model="f7", epochs=5, batch_size=16)
    cfg["spec"] = {"task": "binary", "architecture": "custom", "factory": "tests.integration.test_training_models:slow_mlp",
                   "params": {"delay_s": 0.05}}
    cfg["failure"] = {"max_failures": 2}
    run_id = f"f7-{uuid.uuid4().hex[:6]}"
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", train(cfg, registry=registry, storage=storage, run_id=run_id)))
    thread.start()
    deadline = time.monotonic() + 180
    killed = None
    while time.monotonic() < deadline and killed is None:
        progress = read_progress(storage, run_id) or {}
        if 1 <= len(progress.get("history", [])) <= 3 and progress.get("rank0_pid"):
            time.sleep(0.4)  # into the next epoch (~1.2 s each)
            killed = (progress["history"][-1]["epoch"], progress["rank0_pid"])
            os.kill(killed[1], signal.SIGKILL)
        time.sleep(0.1)
    assert killed is not None, "training never finished an epoch"
    thread.join(timeout=240)
    result = out["r"]
    assert result.ok, result.error
    resumes = [r for r in result.resumes if r["from_epoch"] is not None]
    assert resumes, result.resumes
    first = resumes[0]
    assert first["next_epoch"] == first["from_epoch"] + 1 and first["from_epoch"] >= killed[0]
    epochs = [h["epoch"] for h in result.history]
    assert epochs == list(range(5))  # no epoch lost or repeated
    resumed_loss = result.history[first["next_epoch"]]["train_loss"]
    assert resumed_loss < result.history[0]["train_loss"], "loss went back to its start after resume"


def test_nonfinite_loss_fails_with_epoch(env):
    storage, registry = env
    cfg = config(model="nan", optimizer="sgd", lr=1e30)
    cfg["spec"] = {"task": "regression", "hidden": [8]}
    cfg["feature_set"] = {"name": "toy-reg"}
    result = train(cfg, registry=registry, storage=storage)
    assert not result.ok and "non-finite loss at epoch" in result.error
    mv = registry.get_version("nan", result.version)
    assert mv.state.value == "FAILED" and "non-finite loss at epoch 0" in mv.error
    assert "bundle" not in mv.artifacts
    assert not storage.exists("models", "nan", f"v{result.version}", "bundle.json")


def test_sweep_registers_best_trial(env):
    from mlplat.training.sweep import tune

    storage, registry = env
    cfg = config(model="swept")
    cfg["search"] = {"space": {"hyperparameters.lr": {"grid": [0.0001, 0.05]}}, "num_samples": 1,
                     "max_concurrent_trials": 1, "grace_period": 1}
    result = tune(cfg, registry=registry, storage=storage)
    assert result.ok, result.error
    mv = registry.get_version("swept", result.version)
    sweep = mv.extra["sweep"]
    assert len(sweep["trials"]) == 2
    best = min((t for t in sweep["trials"] if t["best"] is not None), key=lambda t: t["best"])
    assert sweep["best_trial"]["trial_id"] == best["trial_id"]
    assert mv.extra["config"]["hyperparameters"]["lr"] == best["config"]["hyperparameters.lr"]
    assert mv.state.value == "TRAINED" and "bundle" in mv.artifacts


def test_training_inputs_are_cached_when_small_and_streamed_when_told(env):
    """make_datasets reads a small feature set once into the object store (epochs only split
    blocks); materialize=False streams; both give the same packed rows."""
    from ray.data.dataset import MaterializedDataset

    from mlplat.training.inputs import TRAIN, VALIDATION, make_datasets, resolve_training_data

    storage, registry = env
    data = resolve_training_data(registry, storage, "toy", None, None)
    cached = make_datasets(storage, data, "binary")
    streamed = make_datasets(storage, data, "binary", materialize=False)
    assert set(cached) == set(streamed) == {TRAIN, VALIDATION}
    assert all(isinstance(ds, MaterializedDataset) for ds in cached.values())
    assert not any(isinstance(ds, MaterializedDataset) for ds in streamed.values())
    for split in (TRAIN, VALIDATION):
        a = sorted(map(tuple, np.concatenate([b["x"] for b in cached[split].iter_batches(batch_format="numpy")])))
        b = sorted(map(tuple, np.concatenate([b["x"] for b in streamed[split].iter_batches(batch_format="numpy")])))
        assert a == b and len(a) > 0
    assert sum(ds.count() for ds in cached.values()) == data.num_rows


def _kill_platform_actors(ns: str) -> None:
    """The detached scheduler and registry actors a test's namespace started."""
    import ray

    from mlplat.training.queue import SCHEDULER_NAME

    for name in (SCHEDULER_NAME, "mlplat-registry"):
        try:
            ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
        except ValueError:
            pass


def test_publish_runs_through_the_queue(tmp_path, ray_session):

    from mlplat.api import connect
    from mlplat.training.queue import wait_for_run

    ns = f"t-train-{uuid.uuid4().hex[:6]}"
    p = connect(root=str(tmp_path / "root"), namespace=ns)
    try:
        make_feature_set(p.storage, p.registry)
        cfg = config(model="pub")
        run = p.publish("pub", "abc1234", config=cfg, wait=True, timeout_s=240)
        assert run.state is RunState.SUCCEEDED, run
        mv = p.registry.get_version("pub", run.version)
        assert mv.state.value == "TRAINED" and mv.code_version == "abc1234" and mv.run_id == run.run_id
        assert run.metrics and run.metrics == mv.metrics  # the run carries the trained version's metrics
        assert mv.feature_set.version == 1
        shown = p.run_status(run.run_id)
        assert shown.progress["epoch"] == 1 and shown.result["bundle"]["path"].endswith("bundle.json")
        # Queue semantics: a cancelled queued request never runs.
        queued = p.registry.enqueue_run(f"pub-q-{uuid.uuid4().hex[:4]}", kind="train", model="pub",
                                        request={"config": cfg, "version": None})
        assert p.cancel_run(queued.run_id).state is RunState.CANCELLED
        # publish again without a config: reuses the latest version's recipe
        again = p.publish("pub", "abc1235", wait=False)
        assert again.state in (RunState.QUEUED, RunState.RUNNING)
        p.cancel_run(again.run_id)
        final = wait_for_run(p.registry, again.run_id, timeout_s=120)
        assert final.state in (RunState.CANCELLED, RunState.SUCCEEDED)
    finally:
        _kill_platform_actors(ns)


def test_restarted_scheduler_adopts_a_running_run_and_cancel_stops_it(tmp_path, ray_session):
    """The scheduler is killed while a run trains: a new scheduler adopts the live runner (the run
    is not started twice), then cancelling the RUNNING run kills it and fails its version."""
    import ray

    from mlplat.api import connect
    from mlplat.training.queue import SCHEDULER_NAME, ensure_scheduler, runner_name, wait_for_run

    ns = f"t-adopt-{uuid.uuid4().hex[:6]}"
    p = connect(root=str(tmp_path / "root"), namespace=ns)
    try:
        make_feature_set(p.storage, p.registry)
        run = p.publish("adopt", "c0ffee1", config=config(model="adopt", epochs=500), wait=False)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # wait until it is really training (an epoch reported)
            shown = p.run_status(run.run_id)
            if shown.state is RunState.RUNNING and shown.progress.get("epoch") is not None:
                break
            assert shown.state in (RunState.QUEUED, RunState.RUNNING), shown
            time.sleep(0.5)
        else:
            pytest.fail(f"run never started training: {shown}")
        runner = ray.get_actor(runner_name(run.run_id), namespace=ns)

        ray.kill(ray.get_actor(SCHEDULER_NAME, namespace=ns), no_restart=True)
        ensure_scheduler(p.config)  # a fresh scheduler, nothing in memory from the old one
        time.sleep(3)  # a few scheduler ticks
        adopted = p.registry.get_run(run.run_id)
        assert adopted.state is RunState.RUNNING and adopted.attempts == 1, adopted
        assert ray.get(runner.ping.remote(), timeout=30)  # the same runner, still alive

        assert p.cancel_run(run.run_id).state is RunState.RUNNING  # cancel requested; the scheduler acts
        final = wait_for_run(p.registry, run.run_id, timeout_s=60)
        assert final.state is RunState.CANCELLED, final
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(runner.ping.remote(), timeout=30)
        mv = p.registry.get_version("adopt", run.version)
        assert mv.state.value == "FAILED" and "cancel" in (mv.error or ""), mv
    finally:
        _kill_platform_actors(ns)
