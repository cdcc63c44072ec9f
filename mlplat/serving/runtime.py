"""A loaded model version ready to answer requests: bundle + fitted encoder + predict."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlplat.errors import IntegrityError
from mlplat.models import load_bundle, predict_outputs
from mlplat.serving.request import InputSchema
from mlplat.storage import Storage

__all__ = ["freeze_gc", "ServableModel", "load_servable", "tune_gc"]


def tune_gc(gen0_threshold: int | None) -> None:
    """Raise the generation-0 GC threshold of a serving process (``serve.gc_threshold``)."""
    import gc

    if gen0_threshold is not None:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def freeze_gc() -> None:
    """Collect every generation once, then move the survivors out of the collector's reach
    (``gc.freeze``): later collections traverse only what was allocated since, so a replica
    whose heap holds Ray, numpy and its models stops pausing for tens of milliseconds on each
    older-generation collection. Objects frozen earlier are unfrozen first, so garbage cycles
    among them (an evicted model's) are still found. Frozen objects are still freed by
    reference counting. Call it after the heap's long-lived part grew (start, a model load):
    it pauses the calling thread once (~0.1 s with a large heap)."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass
class ServableModel:
    """One version in memory. ``close`` is idempotent: Serve's multiplexing may call the
    eviction hook twice, even while a request still holds a reference (ray-2.60-notes.md)."""

    name: str
    version: int
    task: str
    model: Any
    encoder: Any
    schema: InputSchema
    weights_sha256: str
    #: The model as numpy operations when it is a plain MLP on the CPU (:func:`numpy_plan`), else None.
    numpy_plan: list[Any] | None = None
    #: Where the weights live (``cpu`` or ``cuda``); inputs are copied there, outputs back once.
    device: str = "cpu"
    _closed: bool = False

    @property
    def serving_id(self) -> str:
        return f"{self.name}@v{self.version}"

    def predict_rows(self, rows: list[dict[str, Any]]) -> list[Any]:
        return self.predict_matrix(self.encoder.to_numpy(rows))

    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        if self.numpy_plan is not None and len(x) <= NUMPY_MAX_ROWS:
            values = numpy_forward(self.numpy_plan, self.task, x)
        else:
            import torch

            with torch.inference_mode():
                values = predict_outputs(self.task, self.model(torch.from_numpy(x).to(self.device))).cpu().numpy()
        if not np.isfinite(values).all():
            raise IntegrityError(f"{self.serving_id} produced non-finite predictions")
        return values.tolist()

    def close(self) -> None:
        self._closed = True  # weights are freed with the last reference; nothing else to release


_TORCH_THREADS_SET = threading.Event()


def load_servable(storage: Storage, name: str, version: int, bundle_sha256: str | None,
                  device: str = "cpu") -> ServableModel:
    """Load and verify a version's bundle (sha256 chain, safetensors only) onto ``device``
    (``cuda``: the module is moved there and the numpy fast path is off)."""
    import torch

    if not _TORCH_THREADS_SET.is_set():
        # Small models on a shared box: one intra-op thread per replica beats contention.
        torch.set_num_threads(1)
        _TORCH_THREADS_SET.set()
    bundle = load_bundle(storage, name, version, expected_sha256=bundle_sha256)
    encoder = None
    if bundle.encoder:
        from mlplat.features import FeatureEncoder

        encoder = FeatureEncoder.from_json(bundle.encoder)
    schema = InputSchema.from_encoder(encoder, input_dim=int(bundle.meta["input_dim"]))
    model = bundle.model if device == "cpu" else bundle.model.to(device).eval()
    return ServableModel(name=name, version=version, task=bundle.spec.task, model=model, encoder=encoder,
                         schema=schema, weights_sha256=bundle.weights_sha256,
                         numpy_plan=numpy_plan(bundle.model) if device == "cpu" else None, device=device)


#: Requests of up to this many rows run a plain MLP in numpy: a torch call costs ~10 µs of
#: dispatch per layer, which is most of a one-row forward (P1: ~35 µs -> ~11 µs per request).
NUMPY_MAX_ROWS = 64
_RELU = "relu"


def numpy_plan(model: Any) -> list[Any] | None:
    """``model`` as a list of numpy operations -- ``(weight.T, bias)`` for each Linear, ``"relu"``
    -- when it is a Linear or a Sequential of Linear, ReLU and Dropout (identity at inference);
    None for anything else, which runs in torch.

    >>> from torch import nn
    >>> [type(op).__name__ for op in numpy_plan(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 1)))]
    ['tuple', 'str', 'tuple']
    >>> numpy_plan(nn.Sequential(nn.Linear(3, 4), nn.Tanh())) is None
    True
    """
    from torch import nn

    layers = [model] if isinstance(model, nn.Linear) else list(model) if type(model) is nn.Sequential else None
    if not layers:
        return None
    plan: list[Any] = []
    for layer in layers:
        if type(layer) is nn.Linear:
            bias = None if layer.bias is None else layer.bias.detach().to("cpu", dtype=layer.weight.dtype).numpy()
            plan.append((np.ascontiguousarray(layer.weight.detach().cpu().numpy().T, dtype=np.float32),
                         None if bias is None else bias.astype(np.float32)))
        elif type(layer) is nn.ReLU:
            plan.append(_RELU)
        elif type(layer) is not nn.Dropout:
            return None
    return plan


def numpy_forward(plan: list[Any], task: str, x: np.ndarray) -> np.ndarray:
    """What ``predict_outputs(task, model(x))`` computes, with the :func:`numpy_plan` of the model.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    >>> x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    >>> with torch.inference_mode():
    ...     expected = predict_outputs("multiclass", model(torch.from_numpy(x))).numpy()
    >>> bool(np.allclose(numpy_forward(numpy_plan(model), "multiclass", x), expected, atol=1e-6))
    True
    >>> import pickle  # a plan that crossed a process boundary (a ServableModel sent to a worker)
    >>> bool(np.allclose(numpy_forward(pickle.loads(pickle.dumps(numpy_plan(model))), "multiclass", x), expected, atol=1e-6))
    True
    """
    if plan and isinstance(plan[0], str):
        x = x.copy()  # the caller's array is not ours to change
    for op in plan:
        if isinstance(op, str):  # _RELU; by value: a plan that went through pickle holds a copy of the string
            np.maximum(x, 0, out=x)  # x is the previous matmul's fresh array
        else:
            x = x @ op[0]
            if op[1] is not None:
                x += op[1]
    with np.errstate(over="ignore"):
        if task == "regression":
            return x.reshape(-1)
        if task == "binary":
            return 1.0 / (1.0 + np.exp(-x.reshape(-1)))
        if task == "multiclass":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown task {task!r}")
