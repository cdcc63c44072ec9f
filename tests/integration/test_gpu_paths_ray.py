"""GPU code paths that need Ray, run on the CPU-only test cluster: the inference services give the
tasks executor's predictions (services on ``cpu``, same code as on ``cuda``), and a serving policy
``device: cuda`` is refused before anything is deployed on a cluster without GPUs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mlplat.errors import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_services_predict_what_the_tasks_executor_predicts(ray_session, tmp_path):
    import ray

    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.storage import open_root
    from mlplat.validation.gpu_service import release_services, service_names
    from mlplat.validation.inference import BundleRef, predict_dataset

    storage = open_root(str(tmp_path))
    torch.manual_seed(0)
    spec = ModelSpec(task="multiclass", hidden=[8], num_classes=3)
    ref = save_bundle(storage, "m", 1, build_model(spec, 3).eval(), spec=spec, input_columns=["a", "b", "c"],
                      label_columns=[])
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(5000), **{c: rng.normal(size=5000).astype(np.float32) for c in "abc"}})
    bundles = [BundleRef("m", 1, ref.sha256, "pred", ("a", "b", "c"))]
    service_plan = {"executor": "actors", "device": "cpu", "actors": 1, "num_cpus": 0, "num_gpus": 0, "service": True}
    tasks_plan = {"executor": "tasks", "device": "cpu", "actors": None}
    try:
        got = {}
        for name, plan in (("services", service_plan), ("tasks", tasks_plan)):
            ds = predict_dataset(ray.data.from_arrow(table), storage, bundles, ["id"], plan=plan, class_ids=True,
                                 constants={"model_version": 1})
            got[name] = ds.to_pandas().sort_values("id").reset_index(drop=True)
        a, b = got["services"], got["tasks"]
        assert len(a) == 5000 and list(a["id"]) == list(range(5000))
        np.testing.assert_allclose(np.stack(a["pred"]), np.stack(b["pred"]), rtol=1e-5, atol=1e-6)
        assert (a["pred_class"] == b["pred_class"]).all() and (a["model_version"] == 1).all()
        assert ray.get_actor(service_names("cpu", 1)[0])  # started once, detached, found by name
    finally:
        assert release_services("cpu") == 1


def test_device_cuda_is_refused_on_a_cluster_without_gpus(ray_session):
    from mlplat.config import PlatformConfig
    from mlplat.serving import start_serving

    assert ray_session.cluster_resources().get("GPU", 0) == 0
    with pytest.raises(ConfigError, match="model 'hot': serving_policy.device is 'cuda' but the Ray cluster has no GPU"):
        start_serving(PlatformConfig(), registry_actor="unused",
                      dedicated_models={"hot": {"placement": "dedicated", "device": "cuda"}})
