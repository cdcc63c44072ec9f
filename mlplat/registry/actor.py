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
        self._changed: asyncio.Event | None = None  # set (and dropped) when the log may have grown
        self._waiters: dict[object, float] = {}  # each waiting wait_events call -> its poll_s
        self._watcher: asyncio.Task[None] | None = None
        self._watched_seq = 0  # the log's last seq at the watcher's latest read

    def _opened(self) -> RegistryStore:
        if self._store is None:
            self._store = RegistryStore(self._url, synchronous=self._synchronous)
        return self._store

    async def call(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        if method not in REGISTRY_CALLS:
            raise ValidationError(f"unknown registry call {method!r}")
        result = getattr(self._opened(), method)(**dict(kwargs))
        if method in WRITE_CALLS:
            if self._watcher is not None:  # the watcher need not wake them a second time for it
                self._watched_seq = self._opened().last_seq()
            self._wake_waiters()
        return result

    def _wake_waiters(self) -> None:
        """Every wait_events call waiting now reads the log again."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_events(self, seq: int, limit: int = 1000, kinds: list[str] | None = None, timeout_s: float = 10.0,
                          poll_s: float = 0.2) -> list[Any]:
        """``events_since(seq)``, waiting up to ``timeout_s`` (at most :data:`MAX_WAIT_S`) for an
        event when there is none yet: a long poll for the serving replicas' followers, one call
        per ``timeout_s`` while nothing changes instead of one per ``poll_s``. A write through
        this actor ends the wait at once. A write to the database by another process shows within
        ``poll_s``: one watcher, shared by every waiting call, reads the log's last seq that often
        (the shortest ``poll_s`` of those waiting) and wakes them all when it moved, so a hundred
        waiting replicas cost one cheap read per ``poll_s``, not a hundred reads of the log."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        waiter = object()
        try:
            while True:
                # A watcher started below begins at the log's end as it was before this read: an
                # event another process commits between the two reads is past it, so it wakes us.
                start_watcher = self._watcher is None
                head = self._opened().last_seq() if start_watcher else 0
                events = self._opened().events_since(seq, limit=limit, kinds=kinds)
                remaining = deadline - loop.time()
                if events or remaining <= 0:
                    return events
                # no await since the read: any later change moves the log past what the watcher saw
                if self._changed is None:
                    self._changed = asyncio.Event()
                changed = self._changed
                self._waiters[waiter] = max(poll_s, 0.01)
                if start_watcher:  # still None: nothing awaited since the read above
                    self._watched_seq = head
                    self._watcher = loop.create_task(self._watch_log())
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            self._waiters.pop(waiter, None)

    async def _watch_log(self) -> None:
        """While calls wait: read the log's last seq every (shortest) ``poll_s`` and wake them
        when it moved (a write by another process). A read that fails wakes them too: their own
        read then raises the error to the caller."""
        try:
            while self._waiters:
                await asyncio.sleep(min(self._waiters.values(), default=0.01))
                if not self._waiters:
                    return
                try:
                    last = self._opened().last_seq()
                except Exception:
                    self._wake_waiters()
                    continue
                if last != self._watched_seq:
                    self._watched_seq = last
                    self._wake_waiters()
        finally:
            self._watcher = None

    async def open(self) -> str:
        """Open the database now (migrating it if needed); its URL without password."""
        return self._opened().backend_url()

    async def getpid(self) -> int:
        return self._pid

    async def backend_url(self) -> str:
        return redact_url(self._url)

    async def ping(self) -> bool:
        return True
