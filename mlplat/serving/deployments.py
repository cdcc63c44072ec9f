"""The model-holding Serve deployments: the multiplexed pool and a hot model's own deployment.

Both follow the registry's event log (``warmup.Prewarmer``): a deployment that names their
Serve deployment in its targets is loaded and probed here before it takes traffic, and the
version a swap replaces stays pinned for ``serve.keep_previous_s``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from mlplat.config import PlatformConfig
from mlplat.names import parse_serving_id
from mlplat.serving.cache import ModelCache
from mlplat.serving.routes import actor_registry_reader
from mlplat.serving.runtime import ServableModel, load_servable, tune_gc
from mlplat.serving.warmup import Prewarmer, check_probe, probe_rows, reference_stats_of, replica_identity
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

    def __init__(self, config: PlatformConfig, registry_actor: str | None = None):
        tune_gc(config.serve.gc_threshold)
        self._serve = config.serve
        self._storage = open_root(config.root, config.s3)
        self._expected_sha: dict[str, str | None] = {}
        #: model id -> (model, pinned until monotonic s): pre-warmed and previous versions
        self._pinned: dict[str, tuple[ServableModel, float]] = {}
        self._loads = 0
        self._prewarmer = _prewarmer(config, registry_actor, self._warm, self._pin,
                                     lambda n, v: self._pinned.pop(f"{n}@v{v}", None))
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
        model = await self._model_for(request)
        return {"predictions": run_prediction(model, request), "version": model.version}

    async def predict_many(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Requests an ingress coalesced for one version (serving/coalesce.py): one answer per
        request, in order; a request whose prediction fails gets its exception, the others
        their predictions."""
        model = await self._model_for(requests[0])
        answers: list[Any] = []
        for request in requests:
            try:
                answers.append({"predictions": run_prediction(model, request), "version": model.version})
            except Exception as exc:
                answers.append(exc)
        return answers

    async def _model_for(self, request: dict[str, Any]) -> ServableModel:
        await _start(self._prewarmer)
        model_id = serve.get_multiplexed_model_id()
        pinned = self._pinned.get(model_id)
        if pinned is not None and pinned[1] > time.monotonic():
            return pinned[0]
        self._expected_sha[model_id] = request.get("bundle_sha256")
        return await self._get_model(model_id)  # the caller keeps the reference: eviction may close it meanwhile

    async def _warm(self, name: str, version: int, sha: str | None, feature_set: tuple[str, int] | None) -> None:
        model_id = f"{name}@v{version}"
        self._expected_sha[model_id] = sha
        model = await self._get_model(model_id)  # through the multiplexer: the router learns this replica has it
        await _probe(model, self._storage, feature_set)
        self._pinned[model_id] = (model, time.monotonic() + max(self._serve.keep_previous_s, 60.0))

    async def _pin(self, name: str, version: int) -> None:
        """Keep the version a swap replaced for keep_previous_s (loaded through the multiplexer
        if it was evicted; only a version this replica served before, whose sha256 it knows)."""
        model_id = f"{name}@v{version}"
        now = time.monotonic()
        for key in [k for k, (_, until) in self._pinned.items() if until <= now]:
            self._pinned.pop(key)
        current = self._pinned.get(model_id)
        if current is not None:
            self._pinned[model_id] = (current[0], max(current[1], now + self._serve.keep_previous_s))
        elif model_id in self._expected_sha:
            model = await self._get_model(model_id)
            self._pinned[model_id] = (model, now + self._serve.keep_previous_s)

    async def stats(self) -> dict[str, Any]:
        await _start(self._prewarmer)
        return {"loads": self._loads, "rss_mb": _rss_mb(), "pinned": sorted(self._pinned)}

    async def check_health(self) -> None:
        await _start(self._prewarmer)


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
    swap loads the new one beside the old) and batches concurrent requests into one forward pass.

    ``device``: where the weights live (the model's ``serving_policy.device``; the replica was
    given its GPU share by :func:`mlplat.serving.scaling.dedicated_actor_options`). On ``cuda`` a
    batch is one host-to-device copy, one forward and one copy back."""

    def __init__(self, config: PlatformConfig, name: str, registry_actor: str | None = None, device: str = "cpu"):
        tune_gc(config.serve.gc_threshold)
        self._serve = config.serve
        self._storage = open_root(config.root, config.s3)
        self._name = name
        self._device = device
        self._models = ModelCache(lambda n, v, sha: load_servable(self._storage, n, v, sha, device=device), per_name=2)
        self._prewarmer = _prewarmer(config, registry_actor, self._warm,
                                     lambda n, v: self._models.pin(n, v, self._serve.keep_previous_s) if n == name else None,
                                     self._models.unpin)
        # @serve.batch adds these setters at runtime; its type hints hide them from mypy.
        self._predict_batch.set_max_batch_size(config.serve.dedicated.max_batch_size)  # type: ignore[attr-defined]
        self._predict_batch.set_batch_wait_timeout_s(config.serve.dedicated.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def _model(self, version: int, sha: str | None) -> ServableModel:
        return await self._models.get(self._name, version, sha)

    async def _warm(self, name: str, version: int, sha: str | None, feature_set: tuple[str, int] | None) -> None:
        model = await self._models.get(name, version, sha)
        await _probe(model, self._storage, feature_set)
        self._models.pin(name, version, max(self._serve.keep_previous_s, 60.0))

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        await _start(self._prewarmer)
        model = await self._model(int(request["version"]), request.get("bundle_sha256"))
        if request.get("rows") is not None:
            matrix = model.encoder.to_numpy(request["rows"])
        else:
            matrix = request["matrix"]
        predictions = await self._predict_batch((model, matrix))
        return {"predictions": predictions, "version": model.version}

    async def check_health(self) -> None:
        await _start(self._prewarmer)

    async def stats(self) -> dict[str, Any]:
        await _start(self._prewarmer)
        return {"loaded": self._models.loaded(), "pinned": self._models.pinned(), "rss_mb": _rss_mb(),
                "device": self._device}

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


def _prewarmer(config: PlatformConfig, registry_actor: str | None, warm: Any, pin: Any, unpin: Any) -> Prewarmer | None:
    """The event-log follower of a model-holding replica (None without a registry actor)."""
    if registry_actor is None:
        return None
    target, replica = replica_identity()
    prewarmer = Prewarmer(actor_registry_reader(registry_actor, config.namespace), target=target, replica=replica,
                          warm=warm, pin_previous=pin, unpin=unpin, refresh_s=config.serve.route_refresh_s,
                          wait_s=config.serve.route_wait_s)
    prewarmer.start_soon()
    return prewarmer


async def _start(prewarmer: Prewarmer | None) -> None:
    """Make sure the follower runs in the background (it starts from the constructor); never waits on it."""
    if prewarmer is not None:
        prewarmer.ensure_running()


async def _probe(model: ServableModel, storage: Any, feature_set: tuple[str, int] | None) -> None:
    loop = asyncio.get_running_loop()
    reference = await loop.run_in_executor(None, reference_stats_of, storage, feature_set)
    rows = probe_rows(model.schema, reference)
    check_probe(await loop.run_in_executor(None, model.predict_rows, rows), len(rows))
