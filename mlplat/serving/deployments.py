"""The model-holding Serve deployments: the multiplexed pool and a hot model's own deployment."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from mlplat.config import PlatformConfig
from mlplat.names import parse_serving_id
from mlplat.serving.runtime import ServableModel, load_servable, tune_gc
from mlplat.storage import open_root

__all__ = ["ModelPool", "DedicatedModel", "run_prediction"]


def run_prediction(model: ServableModel, request: dict[str, Any]) -> list[Any]:
    if request.get("rows") is not None:
        return model.predict_rows(request["rows"])
    return model.predict_matrix(request["matrix"])


@serve.deployment(name="model-pool")
class ModelPool:
    """The long tail: any version, loaded on first use, LRU-evicted per replica.

    Ids are versioned (``name@v7``) so a cached id never goes stale; the expected sha256 of
    the bundle travels with each request (the ingress read it from the registry)."""

    def __init__(self, config: PlatformConfig):
        tune_gc(config.serve.gc_threshold)
        self._storage = open_root(config.root, config.s3)
        self._expected_sha: dict[str, str | None] = {}
        self._loads = 0
        limit = config.serve.pool.max_models_per_replica

        # The cache size comes from config, so the decorator is applied here, to a plain
        # function (Serve stores its cache on the decorated object; bound methods refuse that).
        async def load(model_id: str) -> ServableModel:
            return await self._load(model_id)

        self._get_model = serve.multiplexed(max_num_models_per_replica=limit)(load)

    async def _load(self, model_id: str) -> ServableModel:
        name, version = parse_serving_id(model_id)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, load_servable, self._storage, name, version,
                                           self._expected_sha.get(model_id))
        self._loads += 1
        return model

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        model_id = serve.get_multiplexed_model_id()
        self._expected_sha[model_id] = request.get("bundle_sha256")
        model = await self._get_model(model_id)  # keep the reference: eviction may close it meanwhile
        return {"predictions": run_prediction(model, request), "version": model.version}

    async def stats(self) -> dict[str, Any]:
        return {"loads": self._loads, "rss_mb": _rss_mb()}


def _rss_mb() -> float:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@serve.deployment
class DedicatedModel:
    """A hot model's own deployment: keeps the versions it is asked for (at most two, so a
    swap loads the new one beside the old) and batches concurrent requests into one forward pass."""

    def __init__(self, config: PlatformConfig, name: str):
        tune_gc(config.serve.gc_threshold)
        self._storage = open_root(config.root, config.s3)
        self._name = name
        self._models: dict[int, ServableModel] = {}
        self._loading: dict[int, asyncio.Future] = {}
        # @serve.batch adds these setters at runtime; its type hints hide them from mypy.
        self._predict_batch.set_max_batch_size(config.serve.dedicated.max_batch_size)  # type: ignore[attr-defined]
        self._predict_batch.set_batch_wait_timeout_s(config.serve.dedicated.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def _model(self, version: int, sha: str | None) -> ServableModel:
        if version in self._models:
            return self._models[version]
        if version not in self._loading:  # one load per version even under concurrent requests
            loop = asyncio.get_running_loop()
            self._loading[version] = loop.run_in_executor(None, load_servable, self._storage, self._name, version, sha)
        try:
            model = await self._loading[version]
        finally:
            self._loading.pop(version, None)
        self._models[version] = model
        while len(self._models) > 2:
            oldest = min(self._models)
            self._models.pop(oldest).close()
        return model

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        model = await self._model(int(request["version"]), request.get("bundle_sha256"))
        if request.get("rows") is not None:
            matrix = model.encoder.to_numpy(request["rows"])
        else:
            matrix = request["matrix"]
        predictions = await self._predict_batch((model, matrix))
        return {"predictions": predictions, "version": model.version}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _predict_batch(self, items: list[tuple[ServableModel, np.ndarray]]) -> list[list[Any]]:
        out: list[list[Any] | None] = [None] * len(items)
        by_version: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            by_version.setdefault(model.version, []).append(i)
        for indexes in by_version.values():
            model = items[indexes[0]][0]
            stacked = np.concatenate([items[i][1] for i in indexes])
            predictions = model.predict_matrix(stacked)
            start = 0
            for i in indexes:
                n = items[i][1].shape[0]
                out[i] = predictions[start:start + n]
                start += n
        return out  # type: ignore[return-value]
