"""The ingress's route cache (no Ray): one registry read per name, then answers from memory
until the registry's event log says the model changed."""

from __future__ import annotations

import asyncio

from mlplat.config import PlatformConfig
from mlplat.registry import RegistryClient
from mlplat.serving.request import InputSchema
from mlplat.serving.routes import LocalRegistryReader, RouteTable
from mlplat.storage import open_root
from tests.integration.serving_support import register_servable


class CountingReader(LocalRegistryReader):
    def __init__(self, registry):
        super().__init__(registry)
        self.resolves = 0

    async def call(self, method, **kwargs):
        self.resolves += method == "resolve"
        return await super().call(method, **kwargs)


def test_route_cache_follows_promotions_through_the_event_log(tmp_path):
    storage = open_root(str(tmp_path / "root"))
    registry = RegistryClient.local(PlatformConfig(root=str(tmp_path / "root")).registry_db_path())
    register_servable(registry, storage, "churn", seed=0)  # v1 -> PRODUCTION
    reader = CountingReader(registry)

    async def scenario():
        table = RouteTable(reader, lambda n, v, sha: (InputSchema(columns={}, input_dim=1), "binary"), refresh_s=0.05)
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
