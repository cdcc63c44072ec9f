"""The model registry (layer 1): durable metadata in SQLite behind one named Ray actor.

- :class:`RegistryStore`: the SQLite store, usable without Ray (tests, benchmarks).
- :class:`RegistryClient`: the typed client; ``RegistryClient.connect(config)`` talks to the
  detached actor, ``RegistryClient.local(db_path)`` calls a store in-process.
- ``registry_actor_name``: the actor's name, ``"mlplat-registry"`` (a string; calling it,
  ``registry_actor_name()``, returns the same string).

See docs/registry.md.
"""

from mlplat.registry.client import RegistryClient, registry_actor_name
from mlplat.registry.store import RegistryStore

__all__ = ["RegistryStore", "RegistryClient", "registry_actor_name"]
