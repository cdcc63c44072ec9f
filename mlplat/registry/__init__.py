"""The model registry (layer 1): one typed port, two databases, two transports.

- :class:`Registry`: the protocol every layer receives (records in, records out).
- :class:`RegistryStore`: the registry in this process over SQLite or PostgreSQL
  (``registry.url``); it implements :class:`Registry` itself.
- :class:`ActorRegistry`: the same calls through the detached actor ``mlplat-registry``
  (:data:`REGISTRY_ACTOR_NAME`); ``ActorRegistry.connect(config)``.

See docs/registry.md.
"""

from mlplat.registry.actor import REGISTRY_ACTOR_NAME
from mlplat.registry.protocol import REGISTRY_CALLS, Registry
from mlplat.registry.schema import SCHEMA_VERSION
from mlplat.registry.store import RegistryStore
from mlplat.registry.transport import ActorRegistry, connect_actor

__all__ = ["Registry", "RegistryStore", "ActorRegistry", "connect_actor", "REGISTRY_ACTOR_NAME", "REGISTRY_CALLS",
           "SCHEMA_VERSION"]
