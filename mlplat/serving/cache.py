"""Loaded model versions in one replica: one load per version even under concurrent requests,
a few recent versions per name, and pins that keep a version loaded for a while whatever the
recency (the pre-warmed candidate, and ``previous`` after a swap so a rollback loads nothing)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mlplat.serving.runtime import ServableModel

__all__ = ["ModelCache"]

#: ``load(name, version, bundle_sha256) -> ServableModel`` (blocking; run in a thread).
Loader = Callable[[str, int, "str | None"], ServableModel]


class ModelCache:
    """``per_name`` most recently used versions of each name, plus every pinned version.

    >>> cache = ModelCache(lambda n, v, sha: f"{n}@v{v}", per_name=1)  # doctest: +SKIP
    """

    def __init__(self, load: Loader, *, per_name: int = 2, clock: Callable[[], float] = time.monotonic):
        self._load, self._per_name, self._clock = load, per_name, clock
        self._models: OrderedDict[tuple[str, int], ServableModel] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._pins: dict[tuple[str, int], float] = {}

    def get_loaded(self, name: str, version: int) -> ServableModel | None:
        model = self._models.get((name, version))
        if model is not None:
            self._models.move_to_end((name, version))
        return model

    async def get(self, name: str, version: int, bundle_sha256: str | None) -> ServableModel:
        key = (name, version)
        model = self.get_loaded(name, version)
        if model is not None:
            return model
        if key not in self._loading:
            self._loading[key] = asyncio.get_running_loop().run_in_executor(None, self._load, name, version, bundle_sha256)
        future = self._loading[key]
        try:
            # shield: one caller timing out or cancelled must not cancel the load the others await
            loaded: ServableModel = await asyncio.shield(future)
        finally:
            if future.done():
                self._loading.pop(key, None)
        self._models[key] = loaded
        self._models.move_to_end(key)
        self._evict(name)
        return loaded

    def pin(self, name: str, version: int, for_s: float) -> bool:
        """Keep ``name@v<version>`` loaded for ``for_s`` seconds (if it is loaded); True if pinned."""
        if (name, version) not in self._models or for_s <= 0:
            return False
        self._pins[(name, version)] = max(self._pins.get((name, version), 0.0), self._clock() + for_s)
        return True

    def unpin(self, name: str, version: int) -> None:
        """Drop a pin (a candidate whose rollout failed): LRU applies to it again."""
        self._pins.pop((name, version), None)

    def pinned(self) -> list[str]:
        now = self._clock()
        return sorted(f"{n}@v{v}" for (n, v), until in self._pins.items() if until > now)

    def loaded(self) -> list[str]:
        return [f"{n}@v{v}" for n, v in self._models]

    def _evict(self, name: str) -> None:
        now = self._clock()
        for key in [k for k, until in self._pins.items() if until <= now]:
            self._pins.pop(key)
        unpinned = [k for k in self._models if k[0] == name and k not in self._pins]  # oldest first
        for key in unpinned[:max(0, len(unpinned) - self._per_name)]:
            self._models.pop(key).close()
