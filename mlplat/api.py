"""The notebook facade: ``p = mlplat.connect()`` and everything hangs off ``p``.

Every CLI verb and every ``jobs/*.py`` script calls these same methods.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from mlplat.config import PlatformConfig, platform_config
from mlplat.registry import RegistryClient
from mlplat.storage import Storage, open_root

__all__ = ["Platform", "connect"]


class Platform:
    """A handle on one mlplat installation: its settings, storage root and Ray cluster."""

    def __init__(self, config: PlatformConfig):
        self.config = config

    def __repr__(self) -> str:
        return f"Platform(root={self.storage.uri!r}, ray={self.config.ray_address or 'local'!r})"

    @cached_property
    def storage(self) -> Storage:
        return open_root(self.config.root, self.config.s3)

    @cached_property
    def registry(self) -> RegistryClient:
        """The registry client, connected to the detached ``mlplat-registry`` actor.

        ``MLPLAT_REGISTRY_MODE=local`` skips Ray and opens the registry database in this
        process (single-user scripts, CLI tests); docs/registry.md.
        """
        if os.environ.get("MLPLAT_REGISTRY_MODE", "").lower() == "local":
            return RegistryClient.local(self.config.registry_db_path())
        self.ensure_ray()
        return RegistryClient.connect(self.config)

    def ensure_ray(self) -> None:
        """Connect to Ray once: the configured address, else an embedded local instance."""
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"namespace": self.config.namespace, "log_to_driver": True}
        if self.config.ray_address:
            kwargs["address"] = self.config.ray_address
        else:
            kwargs["include_dashboard"] = False
        # Workers must see the same settings as the driver (root, S3 endpoint, registry path).
        env = {var: os.environ[var] for var in _FORWARDED_ENV if var in os.environ}
        env.setdefault("MLPLAT_ROOT", self.config.root)
        kwargs["runtime_env"] = {"env_vars": env}
        ray.init(**kwargs)


_FORWARDED_ENV = (
    "MLPLAT_ROOT", "MLPLAT_REGISTRY_DB", "MLPLAT_S3_ENDPOINT", "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "MLPLAT_NAMESPACE",
)


def connect(root: str | None = None, address: str | None = None, config_path: str | None = None, **overrides: Any) -> Platform:
    """Open the platform. Defaults: local embedded Ray, storage under ``./.mlplat``.

    >>> p = connect(root="/tmp/mlplat-demo")  # doctest: +SKIP
    """
    config = platform_config(config_path, root=root, ray_address=address, **overrides)
    return Platform(config)
