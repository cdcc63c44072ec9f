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
            # Serve's throughput/HAProxy modes act only if set before Ray starts.
            from mlplat.serving import apply_serve_env

            apply_serve_env(self.config)
        # Workers must see the same settings as the driver (root, S3 endpoint, registry path);
        # the root goes as an absolute URI since workers run in other directories.
        env = {var: os.environ[var] for var in _FORWARDED_ENV if var in os.environ}
        env["MLPLAT_ROOT"] = self.storage.uri
        kwargs["runtime_env"] = {"env_vars": env}
        ray.init(**kwargs)


    # -- serving ---------------------------------------------------------------------------
    def serve_start(self, *, blocking: bool = False) -> str:
        """Deploy the Serve app (ingress + pool + a deployment per model whose serving policy
        says ``dedicated: true``); returns the base URL. Redeploying restarts every replica."""
        from mlplat.registry import registry_actor_name
        from mlplat.serving import start_serving

        registry = self.registry
        dedicated = [m.name for m in registry.list_models() if m.serving_policy.get("dedicated")]
        return start_serving(self.config, registry_actor=str(registry_actor_name), dedicated_models=dedicated,
                             blocking=blocking)

    def serve_status(self) -> dict[str, Any]:
        from mlplat.serving import serving_status

        self.ensure_ray()
        return serving_status(self.config)

    def serve_stop(self) -> None:
        from mlplat.serving import stop_serving

        self.ensure_ray()
        stop_serving(self.config)

    def predict(self, name: str, rows: list[dict[str, Any]], *, version: int | None = None,
                url: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        """Predict raw feature rows over HTTP, through the same path as every client
        (auth, validation, telemetry). Returns ``{"model_version", "predictions", ...}``.

        >>> p.predict("churn", [{"amount": 12.5, "age": 31, "country": "fr"}])  # doctest: +SKIP
        """
        import json
        import urllib.error
        import urllib.request

        from mlplat.errors import NotFound, ValidationError
        from mlplat.names import validate_name

        validate_name(name, "model name")
        base = url or f"http://{self.config.serve.host}:{self.config.serve.port}{self.config.serve.route_prefix.rstrip('/')}"
        if version is None:
            path, body = f"/v1/models/{name}:predict", {"instances": rows}
        else:  # v1 has no version form; v2 takes one tensor per raw feature
            columns = list(rows[0]) if rows else []
            path = f"/v2/models/{name}/versions/{int(version)}/infer"
            body = {"inputs": [{"name": c, "shape": [len(rows)], "datatype": "BYTES", "data": [r.get(c) for r in rows]}
                               for c in columns]}
        headers = {"content-type": "application/json"}
        if self.config.api_token:
            headers["authorization"] = f"Bearer {self.config.api_token.get_secret_value()}"
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
            if exc.code == 404:
                raise NotFound(f"predict {name}: {detail}") from None
            raise ValidationError(f"predict {name}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"no mlplat server at {base} ({exc.reason}); start one with `mlplat serve start`") from None


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
