"""Which version answers a model name: resolved from registry aliases, cached in the
ingress, invalidated by the registry's event log (no registry round trip per request)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from mlplat.errors import InvalidName, MlplatError, NotFound
from mlplat.names import validate_name
from mlplat.records import ALIAS_PRODUCTION, ModelState, ModelVersion
from mlplat.serving.request import InputSchema, RequestError

__all__ = ["Route", "RouteTable", "placement_of", "PLACEMENTS", "ActorRegistryReader", "LocalRegistryReader", "SERVABLE_STATES"]

#: States whose weights may answer a request that names the version explicitly.
SERVABLE_STATES = frozenset({ModelState.VALIDATED, ModelState.CANARY, ModelState.PRODUCTION, ModelState.ARCHIVED})
_NEGATIVE_TTL_S = 2.0


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


class ActorRegistryReader:
    """Awaitable registry reads through the registry actor (never blocks the event loop)."""

    def __init__(self, actor: Any):
        self._actor = actor

    async def call(self, method: str, **kwargs: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await self._actor.call.remote(method, kwargs)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MlplatError):
                raise cause from None
            raise


class LocalRegistryReader:
    """The same interface over an in-process client or store (tests, single process)."""

    def __init__(self, registry: Any):
        self._registry = registry

    async def call(self, method: str, **kwargs: Any) -> Any:
        return getattr(self._registry, method)(**kwargs)


class RouteTable:
    """name -> production route, and (name, version) -> explicit route, cached.

    ``schema_loader(name, version, bundle_sha256) -> (InputSchema, task)`` reads bundle.json
    (small; never the weights), so a request with bad features is refused before any load."""

    def __init__(self, reader: Any, schema_loader: Any, refresh_s: float = 0.5):
        self._reader, self._schema_loader, self._refresh_s = reader, schema_loader, refresh_s
        self._by_name: dict[str, Route] = {}
        self._by_version: dict[tuple[str, int], Route] = {}
        self._schemas: dict[tuple[str, int], tuple[InputSchema, str]] = {}
        self._missing: dict[tuple[str, int | None], float] = {}
        self._generation: dict[str, int] = {}  # bumped on invalidation: stale lookups are not cached
        self._seq = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._seq = await self._reader.call("last_seq")
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
            record: ModelVersion = await self._reader.call(
                "resolve", name=name, ref=ALIAS_PRODUCTION if version is None else int(version))
        except NotFound:
            self._missing[key] = time.monotonic() + _NEGATIVE_TTL_S
            raise RequestError(404, self._missing_message(name, version), "name") from None
        if version is not None and record.state not in SERVABLE_STATES:
            raise RequestError(404, f"model {name!r} version {version} is {record.state.value}, not servable "
                                    f"(servable: {sorted(s.value for s in SERVABLE_STATES)})", "version")
        model = await self._reader.call("get_model", name=name)
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
        for key in [k for k in self._missing if k[0] == name]:
            self._missing.pop(key, None)

    async def _follow_events(self) -> None:
        while True:
            try:
                events = await self._reader.call("events_since", seq=self._seq, limit=1000)
                for event in events:
                    self._seq = max(self._seq, event.seq)
                    if event.subject.startswith("model:"):
                        self.invalidate(event.subject.removeprefix("model:"))
                if len(events) == 1000:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # registry restarting: keep serving from the cache, try again
                pass
            await asyncio.sleep(self._refresh_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
