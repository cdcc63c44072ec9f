"""The typed registry client used by the API, the CLI and every later stage.

Two modes, same methods, same records, same :mod:`mlplat.errors`:
- ``RegistryClient.connect(config)``: calls the detached actor ``mlplat-registry``.
- ``RegistryClient.local(db_path)``: calls a :class:`RegistryStore` in this process (no Ray).

In actor mode every mutating call carries an idempotency key (the caller's, else a fresh one),
so the client can retry through an actor restart and Ray's own task retries stay exactly-once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from mlplat.config import PlatformConfig
from mlplat.errors import ConfigError, MlplatError
from mlplat.names import validate_name
from mlplat.records import DatasetRef, Event, FeatureSetRef, ModelInfo, ModelState, ModelVersion
from mlplat.registry.runs import RunQueueClientMixin
from mlplat.registry.store import RegistryStore

__all__ = ["RegistryClient", "registry_actor_name"]


class _ActorName(str):
    """``registry_actor_name`` is the string ``"mlplat-registry"``; calling it returns the same."""

    def __call__(self, config: PlatformConfig | None = None) -> str:
        return str(self)


registry_actor_name = _ActorName("mlplat-registry")


class RegistryClient(RunQueueClientMixin):
    """Typed access to the registry; build it with :meth:`connect` or :meth:`local`."""

    def __init__(self, *, store: RegistryStore | None = None, actor: Any = None, retry_s: float = 120.0,
                 description: str = ""):
        if (store is None) == (actor is None):
            raise ValueError("RegistryClient needs exactly one of store= or actor=; use connect() or local()")
        self._store, self._actor, self._retry_s = store, actor, retry_s
        self._description = description

    def __repr__(self) -> str:
        return f"RegistryClient({self._description})"

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def local(cls, db_path: str, *, synchronous: str = "FULL") -> RegistryClient:
        """A client over a store in this process (no Ray)."""
        return cls(store=RegistryStore(db_path, synchronous=synchronous), description=f"local {db_path!r}")

    @classmethod
    def connect(cls, config: PlatformConfig, *, actor_name: str | None = None, db_path: str | None = None,
                retry_s: float = 120.0) -> RegistryClient:
        """Get or create the detached registry actor and return a client for it.

        ``actor_name`` / ``db_path`` override the defaults (``mlplat-registry``,
        ``config.registry_db_path()``), e.g. for isolated tests.
        """
        import ray

        from mlplat.registry.actor import ACTOR_OPTIONS, RegistryActor

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": config.namespace}
            if config.ray_address:
                kwargs["address"] = config.ray_address
            else:  # same as Platform.ensure_ray: Ray Train's placement-group cleanup needs the state API
                kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
            ray.init(**kwargs)
        name = actor_name or str(registry_actor_name)
        path = db_path or config.registry_db_path()
        actor = (
            ray.remote(**ACTOR_OPTIONS)(RegistryActor)
            .options(name=name, namespace=config.namespace, lifetime="detached", get_if_exists=True)
            .remote(path)
        )
        client = cls(actor=actor, retry_s=retry_s, description=f"actor {config.namespace}/{name}")
        running = client._remote("db_path", None, retry=True)
        if running != path:
            raise ConfigError(
                f"registry actor {config.namespace}/{name} already runs on {running!r}, but this config uses {path!r}; "
                "point MLPLAT_REGISTRY_DB at the same file or use another namespace"
            )
        return client

    @property
    def actor(self) -> Any:
        """The Ray actor handle (None in local mode)."""
        return self._actor

    @property
    def is_local(self) -> bool:
        return self._store is not None

    # -- plumbing -------------------------------------------------------------------------------

    def _remote(self, method: str, args: Any, *, retry: bool) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        deadline, delay = time.monotonic() + self._retry_s, 0.05
        while True:
            try:
                if method in ("db_path", "getpid", "ping"):
                    return ray.get(getattr(self._actor, method).remote())
                return ray.get(self._actor.call.remote(method, args))
            except RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, MlplatError):
                    raise cause from None
                if isinstance(cause, (TypeError, ValueError)):
                    raise cause from None
                raise
            except (RayActorError, GetTimeoutError):
                # The actor died or is restarting; safe to resend: the call carries an idempotency key.
                if not retry or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _read(self, method: str, **kwargs: Any) -> Any:
        if self._store is not None:
            return getattr(self._store, method)(**kwargs)
        return self._remote(method, kwargs, retry=True)

    def _write(self, method: str, **kwargs: Any) -> Any:
        if self._store is not None:
            return getattr(self._store, method)(**kwargs)
        if kwargs.get("idempotency_key") is None:
            kwargs["idempotency_key"] = f"auto:{uuid.uuid4().hex}"
        return self._remote(method, kwargs, retry=True)

    def getpid(self) -> int:
        """The pid of the process serving the registry (the actor's, or this one's in local mode)."""
        import os

        return os.getpid() if self._store is not None else self._remote("getpid", None, retry=True)

    def ping(self) -> bool:
        return True if self._store is not None else self._remote("ping", None, retry=True)

    # -- models ---------------------------------------------------------------------------------

    def create_model(self, name: str, *, description: str = "", owner: str = "", tags: Iterable[str] = (),
                     task_type: str | None = None, serving_policy: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> ModelInfo:
        validate_name(name, "model name")
        return self._write("create_model", name=name, description=description, owner=owner, tags=tuple(tags),
                           task_type=task_type, serving_policy=serving_policy, idempotency_key=idempotency_key)

    def update_model(self, name: str, *, description: str | None = None, owner: str | None = None,
                     tags: Iterable[str] | None = None, task_type: str | None = None,
                     serving_policy: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelInfo:
        validate_name(name, "model name")
        return self._write("update_model", name=name, description=description, owner=owner,
                           tags=None if tags is None else tuple(tags), task_type=task_type,
                           serving_policy=serving_policy, idempotency_key=idempotency_key)

    def get_model(self, name: str) -> ModelInfo:
        validate_name(name, "model name")
        return self._read("get_model", name=name)

    def list_models(self, *, prefix: str | None = None, tag: str | None = None,
                    state: ModelState | str | None = None) -> list[ModelInfo]:
        return self._read("list_models", prefix=prefix, tag=tag, state=state)

    # -- versions -------------------------------------------------------------------------------

    def register_version(self, name: str, *, config_hash: str | None = None, code_version: str | None = None,
                         datasets: Iterable[DatasetRef | Mapping[str, Any]] = (),
                         feature_set: FeatureSetRef | Mapping[str, Any] | None = None, run_id: str | None = None,
                         extra: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
                         metrics: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        return self._write("register_version", name=name, config_hash=config_hash, code_version=code_version,
                           datasets=tuple(datasets), feature_set=feature_set, run_id=run_id, extra=extra,
                           artifacts=artifacts, metrics=metrics, idempotency_key=idempotency_key)

    def get_version(self, name: str, version: int) -> ModelVersion:
        validate_name(name, "model name")
        return self._read("get_version", name=name, version=version)

    def resolve(self, name: str, ref: int | str) -> ModelVersion:
        """A version by number or alias: ``resolve("churn", "production")``."""
        validate_name(name, "model name")
        return self._read("resolve", name=name, ref=ref)

    def list_versions(self, name: str, *, state: ModelState | str | None = None) -> list[ModelVersion]:
        validate_name(name, "model name")
        return self._read("list_versions", name=name, state=state)

    def find_versions(self, *, state: ModelState | str, prefix: str | None = None) -> list[ModelVersion]:
        return self._read("find_versions", state=state, prefix=prefix)

    def transition(self, name: str, version: int, state: ModelState | str, *, expected_state: ModelState | str | None = None,
                   error: str | None = None, metrics: Mapping[str, Any] | None = None,
                   idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        return self._write("transition", name=name, version=version, state=state, expected_state=expected_state,
                           error=error, metrics=metrics, idempotency_key=idempotency_key)

    def update_version(self, name: str, version: int, *, metrics: Mapping[str, Any] | None = None,
                       artifacts: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                       expected_state: ModelState | str | None = None, idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        return self._write("update_version", name=name, version=version, metrics=metrics, artifacts=artifacts,
                           extra=extra, expected_state=expected_state, idempotency_key=idempotency_key)

    # -- aliases ---------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, *, expected_version: int | None = None,
                  idempotency_key: str | None = None) -> int:
        validate_name(name, "model name")
        return self._write("set_alias", name=name, alias=alias, version=version, expected_version=expected_version,
                           idempotency_key=idempotency_key)

    def delete_alias(self, name: str, alias: str, *, expected_version: int | None = None,
                     idempotency_key: str | None = None) -> int | None:
        validate_name(name, "model name")
        return self._write("delete_alias", name=name, alias=alias, expected_version=expected_version,
                           idempotency_key=idempotency_key)

    def get_alias(self, name: str, alias: str) -> int | None:
        validate_name(name, "model name")
        return self._read("get_alias", name=name, alias=alias)

    def aliases(self, name: str) -> dict[str, int]:
        validate_name(name, "model name")
        return self._read("aliases", name=name)

    def promote(self, name: str, version: int, *, expected_production: int | None = None,
                idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        return self._write("promote", name=name, version=version, expected_production=expected_production,
                           idempotency_key=idempotency_key)

    def rollback(self, name: str, *, expected_production: int | None = None,
                 idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        return self._write("rollback", name=name, expected_production=expected_production,
                           idempotency_key=idempotency_key)

    # -- catalog ---------------------------------------------------------------------------------

    def catalog_register(self, kind: str, name: str, payload: Mapping[str, Any], *, tags: Iterable[str] = (),
                         idempotency_key: str | None = None) -> dict[str, Any]:
        return self._write("catalog_register", kind=kind, name=name, payload=dict(payload), tags=tuple(tags),
                           idempotency_key=idempotency_key)

    def catalog_update(self, kind: str, name: str, version: int, patch: Mapping[str, Any], *,
                       idempotency_key: str | None = None) -> dict[str, Any]:
        return self._write("catalog_update", kind=kind, name=name, version=version, patch=dict(patch),
                           idempotency_key=idempotency_key)

    def catalog_get(self, kind: str, name: str, version: int | None = None, *, status: str | None = None) -> dict[str, Any]:
        return self._read("catalog_get", kind=kind, name=name, version=version, status=status)

    def catalog_list(self, kind: str, *, prefix: str | None = None, tag: str | None = None,
                     latest_only: bool = True) -> list[dict[str, Any]]:
        return self._read("catalog_list", kind=kind, prefix=prefix, tag=tag, latest_only=latest_only)

    # -- events ---------------------------------------------------------------------------------

    def append_event(self, kind: str, subject: str, payload: Mapping[str, Any] | None = None, *,
                     version: int | None = None, expected_seq: int | None = None,
                     idempotency_key: str | None = None) -> Event:
        return self._write("append_event", kind=kind, subject=subject, payload=payload, version=version,
                           expected_seq=expected_seq, idempotency_key=idempotency_key)

    def events_since(self, seq: int = 0, *, limit: int = 1000, subject: str | None = None,
                     kinds: Iterable[str] | str | None = None) -> list[Event]:
        if kinds is not None and not isinstance(kinds, str):
            kinds = tuple(kinds)
        return self._read("events_since", seq=seq, limit=limit, subject=subject, kinds=kinds)

    def last_seq(self) -> int:
        return self._read("last_seq")

    # -- batching ---------------------------------------------------------------------------------

    def batch(self, calls: list[tuple[str, dict[str, Any]]], *, idempotency_key: str | None = None) -> list[Any]:
        """Run several calls (``(method, kwargs)`` pairs) in ONE transaction and one round trip."""
        calls = [(str(m), dict(kw or {})) for m, kw in calls]
        return self._write("batch", calls=calls, idempotency_key=idempotency_key)

    def read_batch(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several read calls in one round trip (no transaction, nothing written)."""
        return self._read("read_batch", calls=[(str(m), dict(kw or {})) for m, kw in calls])

