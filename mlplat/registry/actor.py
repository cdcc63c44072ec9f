"""The registry actor: the registry store behind one named, detached Ray actor.

``@ray.remote`` options in :data:`ACTOR_OPTIONS` (``max_restarts=-1``, ``max_task_retries=-1``,
``num_cpus=0``). It holds nothing but an open :class:`RegistryStore`: a restart reruns
``__init__``, which reopens the same database, so every acknowledged write is still there. Ray
retries calls that were in flight when it died; idempotency keys make those retries write
nothing twice.
"""

from __future__ import annotations

import asyncio
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
#: The calls that write (those that take an idempotency key, protocol.py): after one, the
#: followers waiting in :meth:`RegistryActor.wait_events` read the log at once.
WRITE_CALLS = frozenset(name for name, call in REGISTRY_CALLS.items() if "idempotency_key" in call.signature.parameters)
#: The longest one :meth:`RegistryActor.wait_events` call waits.
MAX_WAIT_S = 60.0


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
        self._written: asyncio.Event | None = None  # set (and dropped) by the next write

    def _opened(self) -> RegistryStore:
        if self._store is None:
            self._store = RegistryStore(self._url, synchronous=self._synchronous)
        return self._store

    async def call(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        if method not in REGISTRY_CALLS:
            raise ValidationError(f"unknown registry call {method!r}")
        result = getattr(self._opened(), method)(**dict(kwargs))
        if method in WRITE_CALLS and self._written is not None:
            self._written.set()  # wake every follower waiting in wait_events
            self._written = None
        return result

    async def wait_events(self, seq: int, limit: int = 1000, kinds: list[str] | None = None, timeout_s: float = 10.0,
                          poll_s: float = 0.2) -> list[Any]:
        """``events_since(seq)``, waiting up to ``timeout_s`` (at most :data:`MAX_WAIT_S`) for an
        event when there is none yet: a long poll for the serving replicas' followers, one call
        per ``timeout_s`` while nothing changes instead of one per ``poll_s``. A write through
        this actor ends the wait at once; the log is read again every ``poll_s`` meanwhile, so a
        write to the database by another process shows as soon as it did with polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while True:
            events = self._opened().events_since(seq, limit=limit, kinds=kinds)
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return events
            if self._written is None:
                self._written = asyncio.Event()
            try:
                await asyncio.wait_for(self._written.wait(), min(remaining, max(poll_s, 0.01)))
            except TimeoutError:
                pass

    async def open(self) -> str:
        """Open the database now (migrating it if needed); its URL without password."""
        return self._opened().backend_url()

    async def getpid(self) -> int:
        return self._pid

    async def backend_url(self) -> str:
        return redact_url(self._url)

    async def ping(self) -> bool:
        return True
