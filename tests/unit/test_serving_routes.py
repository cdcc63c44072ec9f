"""The ingress's route cache (no Ray): one registry read per name, then answers from memory
until the registry's event log says the model changed. Driven by an in-memory reader and by
the in-process registry."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlplat.config import PlatformConfig
from mlplat.errors import NotFound
from mlplat.records import ALIAS_PRODUCTION, ArtifactRef, Event, ModelInfo, ModelState, ModelVersion, Traffic
from mlplat.registry import RegistryStore
from mlplat.serving.request import InputSchema, RequestError
from mlplat.serving.routes import LocalRegistryReader, RegistryReader, RouteTable
from mlplat.storage import open_root
from tests.integration.serving_support import register_servable


def _schema(name: str, version: int, sha: str | None) -> tuple[InputSchema, str]:
    return InputSchema(columns={}, input_dim=1), "binary"


def ingress_outside_serve(*args, **kwargs):
    """The ingress class under Serve's ASGI wrapper, built in this process. Serve awaits its
    ``async __del__`` when it stops a replica; here Python's collector would call it and drop the
    coroutine (a RuntimeWarning), so the subclass has a plain one: these tests start no direct port."""
    from mlplat.serving.ingress import Ingress

    class IngressOutsideServe(Ingress.func_or_class.__mro__[1]):  # type: ignore[misc,name-defined]
        def __del__(self) -> None:
            pass

    return IngressOutsideServe(*args, **kwargs)


class FakeReader:
    """An in-memory :class:`RegistryReader`: versions, a production alias and an event log."""

    def __init__(self) -> None:
        self.models: dict[str, ModelInfo] = {}
        self.versions: dict[tuple[str, int], ModelVersion] = {}
        self.production: dict[str, int] = {}
        self.canary: dict[str, tuple[int, float]] = {}
        self.events: list[Event] = []
        self.calls: list[str] = []

    def add(self, name: str, version: int, state: ModelState, *, placement: str = "pool") -> None:
        """A version with a bundle; the model (and its placement) is created by its first version."""
        now = time.time()
        if name not in self.models:
            self.models[name] = ModelInfo(name=name, serving_policy={"placement": placement}, created_at=now,
                                          updated_at=now)
        self.versions[(name, version)] = ModelVersion(
            name=name, version=version, state=state, created_at=now, updated_at=now,
            artifacts={"bundle": ArtifactRef(path=f"models/{name}/v{version}/bundle.json", sha256=f"sha-{version}")})

    def promote(self, name: str, version: int) -> None:
        self.production[name] = version
        self.events.append(Event(seq=len(self.events) + 1, ts=time.time(), kind="alias_moved", subject=f"model:{name}",
                                 version=version))

    async def last_seq(self) -> int:
        self.calls.append("last_seq")
        return len(self.events)

    async def events_since(self, seq: int, *, limit: int = 1000, kinds: list[str] | None = None) -> list[Event]:
        self.calls.append("events_since")
        return [e for e in self.events if e.seq > seq and (not kinds or e.kind in kinds)][:limit]

    async def resolve(self, name: str, ref: int | str) -> ModelVersion:
        self.calls.append("resolve")
        version = self.production.get(name) if ref == ALIAS_PRODUCTION else int(ref)
        if version is None or (name, version) not in self.versions:
            raise NotFound(f"model {name!r} has no version {ref!r}")
        return self.versions[(name, version)]

    async def get_model(self, name: str) -> ModelInfo:
        self.calls.append("get_model")
        return self.models[name]

    async def traffic(self, name: str, *, region: str | None = None) -> Traffic:
        self.calls.append("traffic")
        if name not in self.models:
            raise NotFound(f"model {name!r} is not registered")
        canary, percent = self.canary.get(name, (None, 0.0))
        return Traffic(name=name, region=region, production=self.production.get(name), canary=canary,
                       canary_percent=percent, canary_deployment="d-test" if canary else None,
                       serving_policy=self.models[name].serving_policy)

    async def append_event(self, kind: str, subject: str, payload: dict) -> Event:
        event = Event(seq=len(self.events) + 1, ts=time.time(), kind=kind, subject=subject, payload=payload)
        self.events.append(event)
        return event

    async def rollback(self, name: str, *, region: str | None = None, by: str = "") -> ModelVersion:
        raise NotFound("the in-memory reader keeps no previous version")


def test_route_table_with_an_in_memory_reader():
    reader = FakeReader()
    assert isinstance(reader, RegistryReader)
    reader.add("churn", 1, ModelState.PRODUCTION, placement="dedicated")
    reader.promote("churn", 1)
    reader.add("churn", 2, ModelState.REJECTED)

    async def scenario():
        table = RouteTable(reader, _schema, refresh_s=0.02)
        await table.start()
        try:
            route = await table.resolve("churn")
            assert (route.version, route.placement, route.bundle_sha256, route.serving_id) == (
                1, "dedicated", "sha-1", "churn@v1")
            assert (await table.resolve("churn", 1)).version == 1
            for _ in range(20):
                await table.resolve("churn")
            assert reader.calls.count("traffic") == 1  # once per name, then from memory
            assert reader.calls.count("resolve") == 2  # once per route, then from memory

            with pytest.raises(RequestError) as err:
                await table.resolve("churn", 2)
            assert err.value.status == 404 and "REJECTED" in err.value.message
            with pytest.raises(RequestError) as err:
                await table.resolve("nope")
            assert err.value.status == 404
            before = reader.calls.count("traffic")
            with pytest.raises(RequestError):
                await table.resolve("nope")  # negative cache: no second read right away
            assert reader.calls.count("traffic") == before
            with pytest.raises(RequestError) as err:
                await table.resolve("Bad/Name")
            assert err.value.status == 400

            reader.add("churn", 3, ModelState.PRODUCTION)
            reader.promote("churn", 3)  # the event invalidates the cached route
            for _ in range(100):
                await asyncio.sleep(0.02)
                if (await table.resolve("churn")).version == 3:
                    break
            assert (await table.resolve("churn")).version == 3
        finally:
            await table.stop()

    asyncio.run(scenario())


class CountingReader(LocalRegistryReader):
    def __init__(self, registry):
        super().__init__(registry)
        self.resolves = 0

    async def resolve(self, name: str, ref: int | str) -> ModelVersion:
        self.resolves += 1
        return await super().resolve(name, ref)


def test_route_cache_follows_promotions_through_the_event_log(tmp_path):
    storage = open_root(str(tmp_path / "root"))
    registry = RegistryStore(PlatformConfig(root=str(tmp_path / "root")).registry_db_path())
    register_servable(registry, storage, "churn", seed=0)  # v1 -> PRODUCTION
    reader = CountingReader(registry)
    assert isinstance(reader, RegistryReader)

    async def scenario():
        table = RouteTable(reader, _schema, refresh_s=0.05)
        await table.start()
        try:
            assert (await table.resolve("churn")).version == 1
            for _ in range(50):
                assert (await table.resolve("churn")).version == 1
            assert reader.resolves == 1  # no registry round trip per request
            register_servable(registry, storage, "churn", seed=1)  # v2 -> PRODUCTION, v1 -> ARCHIVED
            await asyncio.sleep(0.3)  # a few event-log polls
            assert (await table.resolve("churn")).version == 2
            assert reader.resolves == 2
        finally:
            await table.stop()

    asyncio.run(scenario())


def _request(path: str, body: dict | None = None, token: str | None = None):
    import json

    from starlette.requests import Request

    raw = json.dumps(body).encode() if body is not None else b""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": "POST" if body is not None else "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80)}
    return Request(scope, receive)


def test_ingress_takes_its_reader_through_the_constructor(tmp_path):
    """The ingress built with an in-memory reader (no Ray, no registry): a model placed in the
    ingress answers v1 predict and metadata; an unknown model is a JSON 404."""
    import json

    import torch

    from mlplat.models import ModelSpec, build_model, save_bundle
    from tests.integration.serving_support import RAW_ROW, fitted_encoder

    storage = open_root(str(tmp_path / "root"))
    encoder = fitted_encoder(0)
    spec = ModelSpec(task="binary", hidden=[8])
    torch.manual_seed(0)
    ref = save_bundle(storage, "inline", 1, build_model(spec, len(encoder.feature_columns)), spec=spec,
                      input_columns=encoder.feature_columns, encoder=encoder.to_json())
    reader = FakeReader()
    reader.add("inline", 1, ModelState.PRODUCTION, placement="ingress")
    reader.versions[("inline", 1)] = reader.versions[("inline", 1)].model_copy(update={"artifacts": {"bundle": ref}})
    reader.promote("inline", 1)
    token = "unit-token"
    config = PlatformConfig(root=str(tmp_path / "root"), api_token=token)
    config = config.model_copy(update={"serve": config.serve.model_copy(update={"telemetry": False})})
    async def scenario():
        ingress = ingress_outside_serve(config, "no-actor-needed", None, {}, reader=reader)
        try:
            response = await ingress.predict_v1("inline", _request("/v1/models/inline:predict",
                                                                   {"instances": [RAW_ROW, RAW_ROW]}, token))
            assert response.status_code == 200, response.body
            out = json.loads(response.body)
            assert out["model_version"] == "1" and len(out["predictions"]) == 2
            assert 0.0 <= out["predictions"][0] <= 1.0
            response = await ingress.model_metadata("inline", _request("/v2/models/inline", token=token))
            assert response.status_code == 200 and json.loads(response.body)["parameters"]["placement"] == "ingress"
            response = await ingress.predict_v1("ghost", _request("/v1/models/ghost:predict", {"instances": [RAW_ROW]}, token))
            assert response.status_code == 404 and "ghost" in json.loads(response.body)["error"]
            response = await ingress.predict_v1("inline", _request("/v1/models/inline:predict", {"instances": [RAW_ROW]}))
            assert response.status_code == 401
        finally:
            await ingress._routes.stop()

    asyncio.run(scenario())
    assert "traffic" in reader.calls and "last_seq" in reader.calls
