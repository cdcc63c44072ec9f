"""The registry actor: the registry store behind one named, detached Ray actor.

``@ray.remote`` options in :data:`ACTOR_OPTIONS` (``max_restarts=-1``, ``max_task_retries=-1``,
``num_cpus=0``). It holds nothing but an open :class:`RegistryStore`: a restart reruns
``__init__``, which reopens the same database, so every acknowledged write is still there. Ray
retries calls that were in flight when it died; idempotency keys make those retries write
nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mlplat.config import normalize_registry_url, redact_url
from mlplat.errors import ValidationError
from mlplat.registry.protocol import REGISTRY_CALLS
from mlplat.registry.store import RegistryStore

__all__ = ["RegistryActor", "ACTOR_OPTIONS", "REGISTRY_ACTOR_NAME"]

#: The actor's name in its namespace.
REGISTRY_ACTOR_NAME = "mlplat-registry"
#: Options of ``ray.remote`` for the actor class (ray-2.60-notes.md, "Actors as services").
ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}


class RegistryActor:
    """Serves every :data:`REGISTRY_CALLS` method by name. Async: calls run one at a time on its
    event loop, so the store's connection has exactly one user.

    The database opens on the first call, not in ``__init__``: a constructor that raises leaves
    a Ray actor dead for good, and a database that is down while the actor restarts must only
    fail the calls made meanwhile (with :class:`~mlplat.errors.DatabaseUnavailable`)."""

    def __init__(self, url: str, synchronous: str = "FULL"):
        self._url, self._synchronous = normalize_registry_url(url), synchronous
        self._store: RegistryStore | None = None
        self._pid = os.getpid()

    def _opened(self) -> RegistryStore:
        if self._store is None:
            self._store = RegistryStore(self._url, synchronous=self._synchronous)
        return self._store

    async def call(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        if method not in REGISTRY_CALLS:
            raise ValidationError(f"unknown registry call {method!r}")
        return getattr(self._opened(), method)(**dict(kwargs))

    async def open(self) -> str:
        """Open the database now (migrating it if needed); its URL without password."""
        return self._opened().backend_url()

    async def getpid(self) -> int:
        return self._pid

    async def backend_url(self) -> str:
        return redact_url(self._url)

    async def ping(self) -> bool:
        return True
