"""The numpy forward pass of plain MLPs (serving/runtime.py) answers what torch answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mlplat.models import ModelSpec, build_model, predict_outputs
from mlplat.serving.request import InputSchema
from mlplat.serving.runtime import NUMPY_MAX_ROWS, ServableModel, numpy_forward, numpy_plan


def _torch(model: nn.Module, task: str, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return predict_outputs(task, model(torch.from_numpy(x))).numpy()


@pytest.mark.parametrize("task,output_dim", [("regression", 1), ("binary", 1), ("multiclass", 4)])
@pytest.mark.parametrize("architecture,hidden,dropout", [("linear", [], 0.0), ("mlp", [16], 0.0), ("mlp", [32, 8], 0.2)])
@pytest.mark.parametrize("rows", [1, 7, NUMPY_MAX_ROWS])
def test_numpy_forward_matches_torch(task, output_dim, architecture, hidden, dropout, rows):
    torch.manual_seed(rows)
    spec = ModelSpec(task=task, architecture=architecture, hidden=hidden or [8], dropout=dropout,
                     num_classes=output_dim if task == "multiclass" else None)
    model = build_model(spec, input_dim=5).eval()
    x = np.random.default_rng(rows).normal(scale=3.0, size=(rows, 5)).astype(np.float32)
    before = x.copy()
    plan = numpy_plan(model)
    assert plan is not None
    got = numpy_forward(plan, task, x)
    assert got.dtype == np.float32 and got.shape == _torch(model, task, x).shape
    np.testing.assert_allclose(got, _torch(model, task, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, before)  # the input is left as it was


def test_extreme_logits_give_probabilities_not_nan():
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    x = np.array([[-1e4], [0.0], [1e4]], dtype=np.float32)
    np.testing.assert_array_equal(numpy_forward(numpy_plan(model), "binary", x), _torch(model, "binary", x))


def test_other_modules_run_in_torch_and_large_batches_too():
    assert numpy_plan(nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1))) is None
    assert numpy_plan(nn.Conv1d(1, 1, 1)) is None

    class Custom(nn.Sequential):  # a subclass may override forward: never taken apart
        pass

    assert numpy_plan(Custom(nn.Linear(3, 1))) is None
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).eval()
    servable = ServableModel(name="m", version=1, task="binary", model=model, encoder=None,
                             schema=InputSchema.from_encoder(None, input_dim=3), weights_sha256="0" * 64,
                             numpy_plan=numpy_plan(model))
    big = np.random.default_rng(0).normal(size=(NUMPY_MAX_ROWS + 1, 3)).astype(np.float32)
    small = big[:2]
    np.testing.assert_allclose(servable.predict_matrix(big), _torch(model, "binary", big), rtol=1e-6)
    np.testing.assert_allclose(servable.predict_matrix(small), _torch(model, "binary", small), rtol=1e-5, atol=1e-6)
