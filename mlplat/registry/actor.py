"""The registry actor: the only writer of the registry database.

One named, detached async actor (``max_restarts=-1``, ``max_task_retries=-1``, ``num_cpus=0``).
It holds nothing but an open :class:`RegistryStore`: a restart reruns ``__init__``, which
reopens the same SQLite file, so every acknowledged write is still there. Ray retries calls
that were in flight when it died; idempotency keys make those retries write nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mlplat.registry.store import RegistryStore

__all__ = ["RegistryActor", "ACTOR_OPTIONS"]

#: Options of ``ray.remote`` for the actor class (ray-2.60-notes.md, "Actors as services").
ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}


class RegistryActor:
    """Serves :class:`RegistryStore` methods by name. Async: calls run one at a time on its loop,
    so the SQLite connection has exactly one user (the store's lock is then never contended)."""

    def __init__(self, db_path: str, synchronous: str = "FULL"):
        self._store = RegistryStore(db_path, synchronous=synchronous)
        self._pid = os.getpid()

    async def call(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        return self._store.dispatch(method, kwargs)

    async def getpid(self) -> int:
        return self._pid

    async def db_path(self) -> str:
        return self._store.db_path

    async def ping(self) -> bool:
        return True
