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

__all__ = ["ServableModel", "load_servable", "tune_gc"]


def tune_gc(gen0_threshold: int | None) -> None:
    """Raise the generation-0 GC threshold of a serving process (``serve.gc_threshold``)."""
    import gc

    if gen0_threshold is not None:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


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
    _closed: bool = False

    @property
    def serving_id(self) -> str:
        return f"{self.name}@v{self.version}"

    def predict_rows(self, rows: list[dict[str, Any]]) -> list[Any]:
        return self.predict_matrix(self.encoder.to_numpy(rows))

    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        import torch

        with torch.inference_mode():
            raw = self.model(torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)))
            out = predict_outputs(self.task, raw)
        values = out.numpy()
        if not np.isfinite(values).all():
            raise IntegrityError(f"{self.serving_id} produced non-finite predictions")
        return values.tolist()

    def close(self) -> None:
        self._closed = True  # weights are freed with the last reference; nothing else to release


_TORCH_THREADS_SET = threading.Event()


def load_servable(storage: Storage, name: str, version: int, bundle_sha256: str | None) -> ServableModel:
    """Load and verify a version's bundle (sha256 chain, safetensors only)."""
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
    return ServableModel(name=name, version=version, task=bundle.spec.task, model=bundle.model, encoder=encoder,
                         schema=schema, weights_sha256=bundle.meta["files"]["model.safetensors"])
