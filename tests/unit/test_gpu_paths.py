"""The logic of the GPU code paths (issue 18), on CPU: training step settings, CUDA-graph step
fallback, the step profiler, the inference services' options, serving's ``device: cuda`` policy
and the device move of a servable model. CI has no GPU; these run everywhere without Ray."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from mlplat.errors import ConfigError
from mlplat.training import config_hash, parse_training_config
from mlplat.training.config import PerformanceSpec
from mlplat.training.loop import ShardBatches, make_optimizer
from mlplat.training.steps import (
    GRAPH_WARMUP_STEPS,
    MAX_GRAPH_SHAPES,
    PROFILE_WARMUP_STEPS,
    EagerStep,
    GraphStep,
    StepProfiler,
    ddp_kwargs,
    graph_mode,
    optimizer_flags,
)

BASE = {"model": "m", "spec": {"task": "binary", "hidden": [8]}, "feature_set": {"name": "fs"}}


# -- training settings ------------------------------------------------------------------------

def test_performance_defaults_and_hash():
    cfg = parse_training_config(BASE)
    assert cfg.performance == PerformanceSpec()
    assert cfg.performance.cuda_graphs == "auto" and cfg.performance.fused_optimizer
    speed_only = parse_training_config({**BASE, "performance": {"ddp_bucket_cap_mb": 4, "profile_steps": 10}})
    assert config_hash(speed_only) == config_hash(cfg)  # speed settings are not the recipe
    for setting in (True, False, "auto"):  # graphs step every batch (partial ones eagerly): same recipe
        graphs = parse_training_config({**BASE, "performance": {"cuda_graphs": setting}})
        assert graphs.performance.cuda_graphs == setting and config_hash(graphs) == config_hash(cfg)


def test_performance_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="performance"):
        parse_training_config({**BASE, "performance": {"cuda_graph": True}})
    with pytest.raises(ConfigError, match="ddp_bucket_cap_mb"):
        parse_training_config({**BASE, "performance": {"ddp_bucket_cap_mb": 0}})
    with pytest.raises(ConfigError, match="cuda_graphs"):
        parse_training_config({**BASE, "performance": {"cuda_graphs": "always"}})


def test_optimizer_flags_by_device():
    assert optimizer_flags("adam", "cpu", True, True) == {}
    assert optimizer_flags("adam", "cuda", True, False) == {"fused": True}
    assert optimizer_flags("sgd", "cuda", False, False) == {}
    assert optimizer_flags("adamw", "cuda", True, True) == {"capturable": True, "foreach": True}
    model = torch.nn.Linear(3, 1)
    # the flags a CPU run gets build the same optimizer as before
    opt = make_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.0, optimizer_flags("adam", "cpu", True, False))
    assert isinstance(opt, torch.optim.Adam) and not opt.defaults.get("fused")


def test_graph_mode_on_cuda_with_one_worker_or_flat_sync():
    on = PerformanceSpec(cuda_graphs=True)
    assert graph_mode(on, "cuda", 1) == (True, None)
    assert graph_mode(on, "cpu", 1)[0] is False and "cpu" in graph_mode(on, "cpu", 1)[1]
    assert graph_mode(on, "cuda", 2)[0] is False and "2 workers" in graph_mode(on, "cuda", 2)[1]
    assert graph_mode(on, "cuda", 2, "ddp")[0] is False
    assert graph_mode(on, "cuda", 2, "flat") == (True, None)
    assert graph_mode(on, "cpu", 2, "flat")[0] is False
    assert graph_mode(PerformanceSpec(cuda_graphs=False), "cuda", 1) == (False, None)
    auto = PerformanceSpec()  # the default: graphs where they can run, for the zoo's models
    assert graph_mode(auto, "cuda", 1) == (True, None) and graph_mode(auto, "cuda", 2, "flat") == (True, None)
    assert graph_mode(auto, "cuda", 1, architecture="linear") == (True, None)
    assert graph_mode(auto, "cpu", 1) == (False, None)  # CPU and DDP: eager, no note (nothing was asked)
    assert graph_mode(auto, "cuda", 2, "ddp") == (False, None)
    assert graph_mode(auto, "cuda", 1, architecture="custom") == (False, None)  # its Python may branch per step
    assert graph_mode(on, "cuda", 1, architecture="custom") == (True, None)


def test_ddp_kwargs():
    assert ddp_kwargs(PerformanceSpec(), "mlp") == {"gradient_as_bucket_view": True, "static_graph": True}
    assert ddp_kwargs(PerformanceSpec(), "custom") == {"gradient_as_bucket_view": True}
    assert ddp_kwargs(PerformanceSpec(ddp_bucket_cap_mb=2.5, ddp_static_graph=True), "custom") == {
        "gradient_as_bucket_view": True, "bucket_cap_mb": 2.5, "static_graph": True}


class _Shard:
    def __init__(self, n: int):
        self.x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
        self.y = torch.arange(n, dtype=torch.float32)

    def iter_torch_batches(self, batch_size: int, device=None):
        for lo in range(0, len(self.x), batch_size):
            yield {"x": self.x[lo:lo + batch_size], "y": self.y[lo:lo + batch_size]}


@pytest.mark.parametrize("in_memory", [True, False])
def test_shard_batches_cover_every_row_with_a_last_partial_batch(in_memory):
    full = ShardBatches(_Shard(10), "cpu", 4, seed=0, shuffle=True, part=(0, 10) if in_memory else None)
    assert [len(x) for x, _ in full.epoch(0)] == [4, 4, 2]
    if in_memory:  # rows and labels stay paired through the device permutation
        for x, y in full.epoch(3):
            assert torch.equal(x.reshape(-1), y)


def test_part_of_doctest():
    import doctest

    from mlplat.training import loop

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(loop.part_of, "part_of", globs={"part_of": loop.part_of}):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


@pytest.mark.parametrize(("rows", "world"), [(10, 3), (10, 2), (1, 2), (65536 + 7, 2)])
def test_an_unsplit_materialized_dataset_gives_each_rank_an_equal_disjoint_part(rows, world):
    """Ray Train hands a small (materialized) dataset whole to every worker: each rank keeps
    rows // world rows of its own, the same count on every rank (data-parallel steps match)."""
    from mlplat.training import loop

    parts = [ShardBatches(_Shard(rows), "cpu", 4, seed=0, shuffle=False, part=loop.part_of(rows, rank, world))
             for rank in range(world)]
    seen = [[int(v) for _, y in part.epoch(None) for v in y] for part in parts]
    assert len({len(s) for s in seen}) == 1 and len(seen[0]) == rows // world
    flat = [v for s in seen for v in s]
    assert flat == list(range(rows // world * world))  # disjoint, in order, remainder left out


def _model_and_step(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, torch.nn.BCEWithLogitsLoss()


def test_eager_step_is_the_plain_step():
    x, y = torch.randn(8, 3), (torch.rand(8) > 0.5).float()
    a, opt_a, crit = _model_and_step()
    b, opt_b, _ = _model_and_step()
    loss = EagerStep(a, opt_a, crit, "binary")(x, y)
    out = b(x)
    expected = crit(out, y.reshape(out.shape))
    opt_b.zero_grad()
    expected.backward()
    opt_b.step()
    assert torch.allclose(loss, expected.detach())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb)


class _FakeStream:
    def wait_stream(self, other):
        pass


def _fake_cuda(monkeypatch, graph_raises: bool):
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())

    @contextlib.contextmanager
    def graph(g, *a, **k):
        if graph_raises:
            raise RuntimeError("operation not permitted when stream is capturing")
        yield

    monkeypatch.setattr(torch.cuda, "graph", graph)


def test_graph_step_warms_up_then_falls_back_to_eager_when_capture_fails(monkeypatch):
    _fake_cuda(monkeypatch, graph_raises=True)
    model, opt, crit = _model_and_step()
    ref_model, ref_opt, _ = _model_and_step()
    step, ref = GraphStep(model, opt, crit, "binary"), EagerStep(ref_model, ref_opt, crit, "binary")
    gen = torch.Generator().manual_seed(1)
    for _ in range(GRAPH_WARMUP_STEPS + 3):
        x, y = torch.randn(8, 3, generator=gen), (torch.rand(8, generator=gen) > 0.5).float()
        assert torch.allclose(step(x, y), ref(x, y))
    assert step.failed and "capture failed" in step.note
    for pa, pb in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(pa, pb)  # every batch was stepped exactly once


class _RunOnceGraph:
    """A stand-in for ``torch.cuda.CUDAGraph`` whose capture runs the step once, eagerly (a real
    capture records without running, then the first replay runs it); later replays do nothing."""

    def replay(self):
        pass


def _batches(seed: int, sizes: list[int]):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=gen), (torch.rand(n, generator=gen) > 0.5).float()) for n in sizes]


def test_graph_step_captures_the_partial_batch_as_a_second_graph(monkeypatch):
    # the full batch: warm-ups then its capture; the partial batch: a graph of its own at once.
    # Every batch is stepped once (a fake capture runs the step once, its replays do nothing).
    _fake_cuda(monkeypatch, graph_raises=False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _RunOnceGraph)
    model, opt, crit = _model_and_step()
    ref_model, ref_opt, _ = _model_and_step()
    step, ref = GraphStep(model, opt, crit, "binary"), EagerStep(ref_model, ref_opt, crit, "binary")
    for x, y in _batches(2, [8] * (GRAPH_WARMUP_STEPS + 1) + [5]):
        assert torch.allclose(step(x, y), ref(x, y))
    assert step.graph_shapes == 2 and not step.failed and step.eager_batches == 0
    assert "replayed from a CUDA graph" in step.note
    for pa, pb in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(pa, pb)


def test_graph_step_steps_shapes_past_the_limit_eagerly(monkeypatch):
    _fake_cuda(monkeypatch, graph_raises=False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _RunOnceGraph)
    model, opt, crit = _model_and_step()
    ref_model, ref_opt, _ = _model_and_step()
    step, ref = GraphStep(model, opt, crit, "binary"), EagerStep(ref_model, ref_opt, crit, "binary")
    sizes = [8] * (GRAPH_WARMUP_STEPS + 1)
    for extra in range(7, 7 - MAX_GRAPH_SHAPES + 1, -1):
        sizes.append(extra)  # captured at once
    sizes += [2, 2]  # one shape too many: eager, both times
    for x, y in _batches(3, sizes):
        assert torch.allclose(step(x, y), ref(x, y))
    assert step.graph_shapes == MAX_GRAPH_SHAPES and step.eager_batches == 2
    for pa, pb in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(pa, pb)


def test_step_profiler_on_cpu():
    prof = StepProfiler(steps=5, device_type="cpu")
    model, opt, crit = _model_and_step()
    step = EagerStep(model, opt, crit, "binary")
    for _ in range(PROFILE_WARMUP_STEPS + 8):
        step(torch.randn(4, 3), torch.ones(4))
        prof.step()
    prof.finish()
    assert prof.recorded == 5 and prof.trace and prof.trace.lstrip().startswith(b"{")
    assert "self_cpu_time_total" in prof.table and "aten::" in prof.table


def test_step_profiler_short_epoch_keeps_what_it_has():
    prof = StepProfiler(steps=50, device_type="cpu")
    model, opt, crit = _model_and_step()
    step = EagerStep(model, opt, crit, "binary")
    for _ in range(PROFILE_WARMUP_STEPS + 2):
        step(torch.randn(4, 3), torch.ones(4))
        prof.step()
    prof.finish()
    assert prof.recorded == 2 and prof.table
    too_short = StepProfiler(steps=5, device_type="cpu")
    too_short.step()
    too_short.finish()
    assert too_short.trace is None


# -- inference services -----------------------------------------------------------------------

def test_service_options_and_routing():
    from mlplat.validation.gpu_service import pick_service, service_names, service_options

    opts = service_options("mlplat-inference-cuda-0", "cuda", gpus_per_service=1.0)
    assert opts["lifetime"] == "detached" and opts["get_if_exists"] and opts["max_restarts"] == 0
    assert (opts["num_gpus"], opts["num_cpus"]) == (1.0, 1)
    assert (service_options("x", "cpu")["num_gpus"], service_options("x", "cpu")["num_cpus"]) == (0, 0)
    assert service_names("cuda", 2) == ["mlplat-inference-cuda-0", "mlplat-inference-cuda-1"]
    assert {pick_service(k, 3) for k in range(30)} == {0, 1, 2}
    assert pick_service(7, 0) == 0


def test_service_predicts_through_the_device_path_on_cpu(tmp_path):
    from mlplat.models import ModelSpec, build_model, predict_outputs, save_bundle
    from mlplat.storage import open_root
    from mlplat.validation.gpu_service import InferenceService
    from mlplat.validation.inference import BundleRef

    storage = open_root(str(tmp_path))
    torch.manual_seed(0)
    spec = ModelSpec(task="binary", hidden=[8])
    model = build_model(spec, 3).eval()
    ref = save_bundle(storage, "m", 1, model, spec=spec, input_columns=["a", "b", "c"], label_columns=[])
    service = InferenceService("cpu", idle_release_s=0)
    x = np.random.default_rng(0).normal(size=(70_000, 3)).astype(np.float32)  # > one device batch
    [got] = service.predict(storage, [BundleRef("m", 1, ref.sha256, "pred")], [x])
    with torch.inference_mode():
        expected = predict_outputs("binary", model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert service.stats()["calls"] == 1 and service.stats()["device"] == "cpu"


# -- serving: device: cuda --------------------------------------------------------------------

def test_dedicated_device_policy():
    from mlplat.serving.scaling import DevicePlacement, dedicated_device

    assert dedicated_device(None) == DevicePlacement("cpu", 0.0)
    assert dedicated_device({"device": "cuda"}) == DevicePlacement("cuda", 1.0)
    assert dedicated_device({"device": "cuda", "gpus_per_replica": 0.25}).gpus_per_replica == 0.25
    assert dedicated_device({"device": "cuda", "gpus_per_replica": 2}).gpus_per_replica == 2.0
    for bad in ({"device": "gpu"}, {"device": "cuda", "gpus_per_replica": 0}, {"device": "cuda", "gpus_per_replica": 1.5},
                {"device": "cuda", "gpus_per_replica": "1"}, {"device": "cpu", "gpus_per_replica": 1}):
        with pytest.raises(ConfigError, match="model 'hot': serving_policy"):
            dedicated_device(bad, model="hot")


def test_dedicated_actor_options_refuse_cuda_without_gpus():
    from mlplat.serving.scaling import dedicated_actor_options

    assert dedicated_actor_options(0.5, {"device": "cuda", "gpus_per_replica": 0.5}, cluster_gpus=1) == {
        "num_cpus": 0.5, "num_gpus": 0.5}
    assert dedicated_actor_options(1.0, {"placement": "dedicated"}, cluster_gpus=0) == {"num_cpus": 1.0}
    with pytest.raises(ConfigError, match="has no GPU .* set the model's serving_policy.device to 'cpu'"):
        dedicated_actor_options(0.5, {"device": "cuda"}, cluster_gpus=0, model="hot")
    with pytest.raises(ConfigError, match="gpus_per_replica is 2 but the Ray cluster has 1 GPU"):
        dedicated_actor_options(0.5, {"device": "cuda", "gpus_per_replica": 2}, cluster_gpus=1)


def test_build_app_gives_cuda_replicas_their_gpus(monkeypatch):
    from mlplat.config import PlatformConfig
    from mlplat.serving import app

    monkeypatch.setattr(app, "cluster_gpus", lambda: 2.0)
    built = app.build_app(PlatformConfig(), "registry", {"hot": {"placement": "dedicated", "device": "cuda",
                                                                  "gpus_per_replica": 0.5},
                                                          "cold": {"placement": "dedicated"}})
    dedicated = built._bound_deployment.init_args[3]  # noqa: SLF001 - Ingress(config, registry_actor, pool, dedicated)
    hot, cold = dedicated["hot"]._bound_deployment, dedicated["cold"]._bound_deployment  # noqa: SLF001
    assert hot.ray_actor_options["num_gpus"] == 0.5 and hot.init_kwargs == {"device": "cuda"}
    assert "num_gpus" not in cold.ray_actor_options and cold.init_kwargs == {"device": "cpu"}


def test_build_app_refuses_cuda_on_a_cluster_without_gpus(monkeypatch):
    from mlplat.config import PlatformConfig
    from mlplat.serving import app

    monkeypatch.setattr(app, "cluster_gpus", lambda: 0.0)
    with pytest.raises(ConfigError, match="model 'hot': serving_policy.device is 'cuda' but the Ray cluster has no GPU"):
        app.build_app(PlatformConfig(), "registry", {"hot": {"placement": "dedicated", "device": "cuda"}})


def test_servable_device_path_with_cpu(tmp_path):
    from mlplat.models import ModelSpec, build_model, predict_outputs, save_bundle
    from mlplat.serving.runtime import NUMPY_MAX_ROWS, load_servable
    from mlplat.storage import open_root

    storage = open_root(str(tmp_path))
    torch.manual_seed(0)
    spec = ModelSpec(task="binary", hidden=[16])
    model = build_model(spec, 4).eval()
    ref = save_bundle(storage, "m", 1, model, spec=spec, input_columns=["a", "b", "c", "d"], label_columns=[])
    servable = load_servable(storage, "m", 1, ref.sha256, device="cpu")
    assert servable.device == "cpu" and servable.numpy_plan is not None
    x = np.random.default_rng(0).normal(size=(NUMPY_MAX_ROWS + 5, 4)).astype(np.float32)  # the torch path
    with torch.inference_mode():
        expected = predict_outputs("binary", model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(servable.predict_matrix(x), expected, rtol=1e-5, atol=1e-6)
    servable.numpy_plan = None  # as on cuda: every request through torch on the device
    np.testing.assert_allclose(servable.predict_matrix(x[:3]), expected[:3], rtol=1e-5, atol=1e-6)


def test_one_worker_flat_buffer_step_trains_as_the_plain_step():
    """The 1-worker step through a FlatGradSync (what CUDA runs with capture_optimizer) updates
    the weights as the plain step does; on CPU nothing is captured."""
    from mlplat.models import ModelSpec, build_model, loss_fn
    from mlplat.training.steps import FlatGradSync

    torch.manual_seed(0)
    a = build_model(ModelSpec(task="binary", hidden=[8, 4]), 3)
    b = build_model(ModelSpec(task="binary", hidden=[8, 4]), 3)
    b.load_state_dict(a.state_dict())
    crit = loss_fn("binary")
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=0.01), torch.optim.Adam(b.parameters(), lr=0.01)
    plain = EagerStep(a, opt_a, crit, "binary")
    flat = EagerStep(b, opt_b, crit, "binary", FlatGradSync(b, 1), capture="tail")
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(16, 3, generator=gen), (torch.rand(16, generator=gen) > 0.5).float()
        torch.testing.assert_close(plain(x, y), flat(x, y))
    assert flat.capture == "none" and not flat.captured and flat.note is None  # on CPU nothing is captured
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


def test_the_step_doctests():
    """The pure decisions' examples (graph_mode, step_capture, grad_sync_mode, ddp_kwargs, ...)."""
    import doctest

    import mlplat.training.steps as steps

    assert doctest.testmod(steps).failed == 0
