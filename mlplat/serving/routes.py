"""Which version answers a model name: resolved from the registry's traffic split (production,
regional production, canary), cached in the ingress, invalidated by the registry's event log
(no registry round trip per request).

The serving app reaches the registry through :class:`RegistryReader`, the awaitable calls it
needs (reads, plus the reports of pre-warm and canary stats and the admin rollback):
:class:`ActorRegistryReader` awaits the registry actor (the replicas),
:class:`LocalRegistryReader` calls a :class:`~mlplat.registry.Registry` in this process, and a
unit test passes any small in-memory class with the same methods.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mlplat.errors import InvalidName, NotFound
from mlplat.names import validate_name
from mlplat.records import Event, ModelInfo, ModelState, ModelVersion, Traffic
from mlplat.registry import Registry
from mlplat.registry.transport import remote_cause
from mlplat.serving.request import InputSchema, RequestError

__all__ = ["Route", "ModelRoutes", "RouteTable", "placement_of", "PLACEMENTS", "RegistryReader", "ActorRegistryReader",
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


@dataclass(frozen=True)
class ModelRoutes:
    """What answers a model name: production, and while a canary runs, the canary with its
    share of requests (``canary_key``: the feature that keys sticky assignment, else the caller)."""

    production: Route
    canary: Route | None = None
    canary_percent: float = 0.0
    canary_deployment: str | None = None
    canary_key: str | None = None


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

    async def events_since(self, seq: int, *, limit: int = EVENT_PAGE, kinds: list[str] | None = None) -> list[Event]: ...

    async def resolve(self, name: str, ref: int | str) -> ModelVersion: ...

    async def get_model(self, name: str) -> ModelInfo: ...

    async def traffic(self, name: str, *, region: str | None = None) -> Traffic: ...

    async def append_event(self, kind: str, subject: str, payload: dict[str, Any]) -> Event: ...

    async def rollback(self, name: str, *, region: str | None = None, by: str = "") -> ModelVersion: ...


class ActorRegistryReader:
    """:class:`RegistryReader` through the registry actor's one entry point,
    ``call.remote(method, kwargs)``; an mlplat error raised there is re-raised here unwrapped."""

    def __init__(self, actor: Any):  # a Ray ActorHandle of the registry actor
        self._actor = actor

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await self._unwrapped(self._actor.call.remote(method, kwargs))

    @staticmethod
    async def _unwrapped(ref: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await ref
        except RayTaskError as exc:
            cause = remote_cause(exc)
            if cause is not None:
                raise cause from None
            raise

    async def wait_events(self, seq: int, *, limit: int = EVENT_PAGE, kinds: list[str] | None = None,
                          timeout_s: float, poll_s: float) -> list[Event]:
        """:meth:`events_since`, waiting in the actor up to ``timeout_s`` for an event
        (:meth:`~mlplat.registry.actor.RegistryActor.wait_events`, a long poll)."""
        return list(await self._unwrapped(self._actor.wait_events.remote(seq, limit, kinds, timeout_s, poll_s)))

    async def last_seq(self) -> int:
        return int(await self._call("last_seq"))

    async def events_since(self, seq: int, *, limit: int = EVENT_PAGE, kinds: list[str] | None = None) -> list[Event]:
        return list(await self._call("events_since", seq=seq, limit=limit, kinds=kinds))

    async def resolve(self, name: str, ref: int | str) -> ModelVersion:
        return await self._call("resolve", name=name, ref=ref)

    async def get_model(self, name: str) -> ModelInfo:
        return await self._call("get_model", name=name)

    async def traffic(self, name: str, *, region: str | None = None) -> Traffic:
        return await self._call("traffic", name=name, region=region)

    async def append_event(self, kind: str, subject: str, payload: dict[str, Any]) -> Event:
        # A key per call: the actor retries a call in flight when it restarts; the write stays single.
        return await self._call("append_event", kind=kind, subject=subject, payload=payload,
                                idempotency_key=f"serve:{uuid.uuid4().hex}")

    async def rollback(self, name: str, *, region: str | None = None, by: str = "") -> ModelVersion:
        return await self._call("rollback", name=name, region=region, by=by, idempotency_key=f"serve:{uuid.uuid4().hex}")


async def next_events(reader: Any, seq: int, *, limit: int, wait_s: float, poll_s: float,
                      kinds: list[str] | None = None) -> list[Event]:
    """The events after ``seq`` for a follower of the log: a long poll of up to ``wait_s`` where
    the reader can wait (``wait_events``: the registry actor), else one read followed by
    ``poll_s`` of sleep when it found nothing. Either way it never spins."""
    wait = getattr(reader, "wait_events", None)
    started = time.monotonic()
    if wait is not None:
        events = await wait(seq, limit=limit, kinds=kinds, timeout_s=wait_s, poll_s=poll_s)
    else:
        events = await reader.events_since(seq, limit=limit, kinds=kinds)
    if not events and (wait is None or time.monotonic() - started < poll_s):
        await asyncio.sleep(poll_s)
    return list(events)


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

    async def events_since(self, seq: int, *, limit: int = EVENT_PAGE, kinds: list[str] | None = None) -> list[Event]:
        return self._registry.events_since(seq, limit=limit, kinds=kinds)

    async def resolve(self, name: str, ref: int | str) -> ModelVersion:
        return self._registry.resolve(name, ref)

    async def get_model(self, name: str) -> ModelInfo:
        return self._registry.get_model(name)

    async def traffic(self, name: str, *, region: str | None = None) -> Traffic:
        return self._registry.traffic(name, region=region)

    async def append_event(self, kind: str, subject: str, payload: dict[str, Any]) -> Event:
        return self._registry.append_event(kind, subject, payload)

    async def rollback(self, name: str, *, region: str | None = None, by: str = "") -> ModelVersion:
        return self._registry.rollback(name, region=region, by=by)


#: ``(name, version, bundle_sha256) -> (InputSchema, task)``: reads bundle.json, never weights.
SchemaLoader = Callable[[str, int, str | None], tuple[InputSchema, str]]


class RouteTable:
    """name -> :class:`ModelRoutes` (production and canary), and (name, version) -> explicit
    route, cached until an event on the model arrives.

    ``schema_loader(name, version, bundle_sha256) -> (InputSchema, task)`` reads bundle.json
    (small; never the weights), so a request with bad features is refused before any load.
    ``region``: this ingress's cell; it serves ``production.<region>``, else ``production``."""

    def __init__(self, reader: RegistryReader, schema_loader: SchemaLoader, refresh_s: float = 0.5,
                 region: str | None = None, wait_s: float = 10.0):
        self._reader, self._schema_loader, self._refresh_s, self._region = reader, schema_loader, refresh_s, region
        self._wait_s = wait_s
        self._by_name: dict[str, ModelRoutes] = {}
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
        """The production route of ``name`` (``version`` None), or the route of one version."""
        if version is None:
            return (await self.routes(name)).production
        self.check_name(name)
        cached = self._by_version.get((name, version))
        if cached is not None:
            return cached
        generation = self._generation.get(name, 0)
        self._check_missing(name, version)
        record = await self._read_version(name, version)
        if record.state not in SERVABLE_STATES:
            raise RequestError(404, f"model {name!r} version {version} is {record.state.value}, not servable "
                                    f"(servable: {sorted(s.value for s in SERVABLE_STATES)})", "version")
        model = await self._reader.get_model(name)
        route = await self._route(record, placement_of(model.serving_policy))
        if self._generation.get(name, 0) == generation:
            self._by_version[(name, version)] = route
        return route

    async def routes(self, name: str) -> ModelRoutes:
        """Production (regional, else global) and the running canary of ``name``."""
        self.check_name(name)
        cached = self._by_name.get(name)
        if cached is not None:
            return cached
        generation = self._generation.get(name, 0)
        self._check_missing(name, None)
        try:
            traffic = await self._reader.traffic(name, region=self._region)
        except NotFound:
            traffic = None
        if traffic is None or traffic.production is None:
            self._missing[(name, None)] = time.monotonic() + _NEGATIVE_TTL_S
            raise RequestError(404, self._missing_message(name, None), "name")
        placement = placement_of(traffic.serving_policy)
        production = await self._route(await self._read_version(name, traffic.production, alias=True), placement)
        canary = None
        if traffic.canary is not None and traffic.canary_percent > 0:
            canary = await self._route(await self._read_version(name, traffic.canary, alias=True), placement)
        rollout = traffic.serving_policy.get("rollout")
        key = rollout.get("canary_key") if isinstance(rollout, dict) else None
        routes = ModelRoutes(production=production, canary=canary, canary_percent=traffic.canary_percent if canary else 0.0,
                             canary_deployment=traffic.canary_deployment if canary else None,
                             canary_key=key if isinstance(key, str) else None)
        if self._generation.get(name, 0) == generation:
            self._by_name[name] = routes
        return routes

    def check_name(self, name: str) -> None:
        try:
            validate_name(name, "model name")
        except InvalidName as exc:
            raise RequestError(400, str(exc), "name") from None

    def _check_missing(self, name: str, version: int | None) -> None:
        if self._missing.get((name, version), 0.0) > time.monotonic():
            raise RequestError(404, self._missing_message(name, version), "name")

    async def _read_version(self, name: str, version: int, *, alias: bool = False) -> ModelVersion:
        try:
            return await self._reader.resolve(name, int(version))
        except NotFound:
            key = (name, None if alias else version)
            self._missing[key] = time.monotonic() + _NEGATIVE_TTL_S
            raise RequestError(404, self._missing_message(name, None if alias else version), "name") from None

    async def _route(self, record: ModelVersion, placement: str) -> Route:
        name = record.name
        bundle = record.artifacts.get("bundle")
        if bundle is None:
            raise RequestError(404, f"model {name!r} version {record.version} has no bundle registered", "version")
        skey = (name, record.version)
        if skey not in self._schemas:
            self._schemas[skey] = await asyncio.get_running_loop().run_in_executor(
                None, self._schema_loader, name, record.version, bundle.sha256)
        schema, task = self._schemas[skey]
        return Route(name=name, version=record.version, bundle_sha256=bundle.sha256, placement=placement, schema=schema,
                     task=task)

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

    def cached_routes(self) -> dict[str, ModelRoutes]:
        """The routes in memory now (what ``/admin/deployments`` shows)."""
        return dict(self._by_name)

    async def _follow_events(self) -> None:
        while True:
            try:
                events = await next_events(self._reader, self._seq, limit=EVENT_PAGE, wait_s=self._wait_s,
                                           poll_s=self._refresh_s)
                for event in events:
                    self._seq = max(self._seq, event.seq)
                    if event.subject.startswith("model:"):
                        self.invalidate(event.subject.removeprefix("model:"))
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # registry restarting: keep serving from the cache, try again
                pass
            await asyncio.sleep(self._refresh_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
