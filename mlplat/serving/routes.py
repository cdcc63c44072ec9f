"""Which version answers a model name: resolved from registry aliases, cached in the
ingress, invalidated by the registry's event log (no registry round trip per request).

The route table reads the registry through :class:`RegistryReader`, the four awaitable reads
it needs: :class:`ActorRegistryReader` awaits the registry actor (the ingress),
:class:`LocalRegistryReader` calls a :class:`~mlplat.registry.Registry` in this process, and a
unit test passes any small in-memory class with the same methods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mlplat.errors import InvalidName, NotFound
from mlplat.names import validate_name
from mlplat.records import ALIAS_PRODUCTION, Event, ModelInfo, ModelState, ModelVersion
from mlplat.registry import Registry
from mlplat.registry.transport import remote_cause
from mlplat.serving.request import InputSchema, RequestError

__all__ = ["Route", "RouteTable", "placement_of", "PLACEMENTS", "RegistryReader", "ActorRegistryReader",
           "LocalRegistryReader", "actor_registry_reader", "SchemaLoader", "SERVABLE_STATES", "EVENT_PAGE"]

#: States whose weights may answer a request that names the version explicitly.
SERVABLE_STATES = frozenset({ModelState.VALIDATED, ModelState.CANARY, ModelState.PRODUCTION, ModelState.ARCHIVED})
_NEGATIVE_TTL_S = 2.0
#: Events read per poll of the registry's log.
EVENT_PAGE = 1000


@dataclass(frozen=True)
class Route:
    name: str
    version: int
    bundle_sha256: str | None
    placement: str  # "pool" | "dedicated" | "ingress" (see placement_of)
    schema: InputSchema
    task: str

    @property
    def serving_id(self) -> str:
        return f"{self.name}@v{self.version}"


PLACEMENTS = ("pool", "dedicated", "ingress")


def placement_of(serving_policy: dict[str, Any]) -> str:
    """Where a model's versions run, from its serving policy.

    ``pool`` (default): the multiplexed pool. ``dedicated`` (or ``dedicated: true``): its own
    deployment with its own autoscaling and batching. ``ingress``: loaded inside every
    ingress replica -- no second hop, for small hot models (~1 ms forward passes)."""
    placement = serving_policy.get("placement") or ("dedicated" if serving_policy.get("dedicated") else "pool")
    return placement if placement in PLACEMENTS else "pool"


@runtime_checkable
class RegistryReader(Protocol):
    """The registry reads a :class:`RouteTable` makes, awaitable so an ingress never blocks its
    event loop; each has the meaning (and the errors, e.g. NotFound) of the :class:`Registry`
    method of the same name."""

    async def last_seq(self) -> int: ...

    async def events_since(self, seq: int, *, limit: int = EVENT_PAGE) -> list[Event]: ...

    async def resolve(self, name: str, ref: int | str) -> ModelVersion: ...

    async def get_model(self, name: str) -> ModelInfo: ...


class ActorRegistryReader:
    """:class:`RegistryReader` through the registry actor's one entry point,
    ``call.remote(method, kwargs)``; an mlplat error raised there is re-raised here unwrapped."""

    def __init__(self, actor: Any):  # a Ray ActorHandle of the registry actor
        self._actor = actor

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await self._actor.call.remote(method, kwargs)
        except RayTaskError as exc:
            cause = remote_cause(exc)
            if cause is not None:
                raise cause from None
            raise

    async def last_seq(self) -> int:
        return int(await self._call("last_seq"))

    async def events_since(self, seq: int, *, limit: int = EVENT_PAGE) -> list[Event]:
        return list(await self._call("events_since", seq=seq, limit=limit))

    async def resolve(self, name: str, ref: int | str) -> ModelVersion:
        return await self._call("resolve", name=name, ref=ref)

    async def get_model(self, name: str) -> ModelInfo:
        return await self._call("get_model", name=name)


def actor_registry_reader(actor_name: str, namespace: str) -> ActorRegistryReader:
    """The reader of a running registry actor, found by name (the ingress's reader)."""
    import ray

    return ActorRegistryReader(ray.get_actor(actor_name, namespace=namespace))


class LocalRegistryReader:
    """:class:`RegistryReader` over a registry in this process (tests, one process): each read
    runs the synchronous call in place."""

    def __init__(self, registry: Registry):
        self._registry = registry

    async def last_seq(self) -> int:
        return self._registry.last_seq()

    async def events_since(self, seq: int, *, limit: int = EVENT_PAGE) -> list[Event]:
        return self._registry.events_since(seq, limit=limit)

    async def resolve(self, name: str, ref: int | str) -> ModelVersion:
        return self._registry.resolve(name, ref)

    async def get_model(self, name: str) -> ModelInfo:
        return self._registry.get_model(name)


#: ``(name, version, bundle_sha256) -> (InputSchema, task)``: reads bundle.json, never weights.
SchemaLoader = Callable[[str, int, str | None], tuple[InputSchema, str]]


class RouteTable:
    """name -> production route, and (name, version) -> explicit route, cached.

    ``schema_loader(name, version, bundle_sha256) -> (InputSchema, task)`` reads bundle.json
    (small; never the weights), so a request with bad features is refused before any load."""

    def __init__(self, reader: RegistryReader, schema_loader: SchemaLoader, refresh_s: float = 0.5):
        self._reader, self._schema_loader, self._refresh_s = reader, schema_loader, refresh_s
        self._by_name: dict[str, Route] = {}
        self._by_version: dict[tuple[str, int], Route] = {}
        self._schemas: dict[tuple[str, int], tuple[InputSchema, str]] = {}
        self._missing: dict[tuple[str, int | None], float] = {}
        self._generation: dict[str, int] = {}  # bumped on invalidation: stale lookups are not cached
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._seq = await self._reader.last_seq()
        self._task = asyncio.get_running_loop().create_task(self._follow_events())

    async def resolve(self, name: str, version: int | None = None) -> Route:
        try:
            validate_name(name, "model name")
        except InvalidName as exc:
            raise RequestError(400, str(exc), "name") from None
        key = (name, version)
        cached = self._by_name.get(name) if version is None else self._by_version.get((name, version))
        if cached is not None:
            return cached
        generation = self._generation.get(name, 0)
        if self._missing.get(key, 0.0) > time.monotonic():
            raise RequestError(404, self._missing_message(name, version), "name")
        try:
            record = await self._reader.resolve(name, ALIAS_PRODUCTION if version is None else int(version))
        except NotFound:
            self._missing[key] = time.monotonic() + _NEGATIVE_TTL_S
            raise RequestError(404, self._missing_message(name, version), "name") from None
        if version is not None and record.state not in SERVABLE_STATES:
            raise RequestError(404, f"model {name!r} version {version} is {record.state.value}, not servable "
                                    f"(servable: {sorted(s.value for s in SERVABLE_STATES)})", "version")
        model = await self._reader.get_model(name)
        bundle = record.artifacts.get("bundle")
        if bundle is None:
            raise RequestError(404, f"model {name!r} version {record.version} has no bundle registered", "version")
        skey = (name, record.version)
        if skey not in self._schemas:
            self._schemas[skey] = await asyncio.get_running_loop().run_in_executor(
                None, self._schema_loader, name, record.version, bundle.sha256)
        schema, task = self._schemas[skey]
        route = Route(name=name, version=record.version, bundle_sha256=bundle.sha256,
                      placement=placement_of(model.serving_policy), schema=schema, task=task)
        if self._generation.get(name, 0) == generation:
            if version is None:
                self._by_name[name] = route
            else:
                self._by_version[(name, version)] = route
        return route

    @staticmethod
    def _missing_message(name: str, version: int | None) -> str:
        if version is None:
            return f"model {name!r} not found or has no production version; see `mlplat models show {name}`"
        return f"model {name!r} has no version {version}"

    def invalidate(self, name: str) -> None:
        self._generation[name] = self._generation.get(name, 0) + 1
        self._by_name.pop(name, None)
        for key in [k for k in self._by_version if k[0] == name]:
            self._by_version.pop(key, None)
        for missing in [k for k in self._missing if k[0] == name]:
            self._missing.pop(missing, None)

    async def _follow_events(self) -> None:
        while True:
            try:
                events = await self._reader.events_since(self._seq, limit=EVENT_PAGE)
                for event in events:
                    self._seq = max(self._seq, event.seq)
                    if event.subject.startswith("model:"):
                        self.invalidate(event.subject.removeprefix("model:"))
                if len(events) == EVENT_PAGE:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # registry restarting: keep serving from the cache, try again
                pass
            await asyncio.sleep(self._refresh_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
