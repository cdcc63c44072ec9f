"""The registry through its detached Ray actor, built from the protocol rather than by hand.

:class:`ActorRegistry` answers every :data:`~mlplat.registry.protocol.REGISTRY_CALLS` name:
the call is bound against the protocol's signature here (a wrong call is a TypeError at the
caller, as with the in-process store), sent to the actor's one ``call`` entry point, and its
mlplat error re-raised as itself. Every write carries an idempotency key (the caller's, else a
fresh one), so the transport resends it through an actor restart and Ray's own retries stay
exactly-once.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, cast

from mlplat.config import PlatformConfig, normalize_registry_url, redact_url
from mlplat.errors import ConfigError, DatabaseUnavailable, MlplatError
from mlplat.registry.actor import ACTOR_OPTIONS, REGISTRY_ACTOR_NAME, RegistryActor
from mlplat.registry.protocol import REGISTRY_CALLS, Registry, RegistryCall

__all__ = ["ActorRegistry", "connect_actor", "remote_cause"]

def remote_cause(exc: BaseException) -> BaseException | None:
    """The error a registry call raised on the actor, when it is the caller's to see (an mlplat
    error, or TypeError/ValueError for a bad call); None for anything else (a crash, a Ray error)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, MlplatError | TypeError | ValueError) else None


def _sendable(value: Any) -> Any:
    """Arguments cross a process boundary: iterators and dict views become lists (they do not
    pickle)."""
    if isinstance(value, Iterator | KeysView | ValuesView | ItemsView):
        return list(value)
    return value


#: Pins the registry actor to the head node (the resource Ray gives the head; Ray Train's state
#: actor uses it the same way): a SQLite registry's file lives on the head's disk, and the head
#: is the node that outlives the workers. The actor needs no CPU, so a head started with
#: ``--num-cpus 0`` (cluster.yaml) still takes it.
HEAD_NODE_RESOURCE = {"node:__internal_head__": 0.001}


class ActorRegistry:
    """The :class:`Registry` calls, answered by the registry actor (see :meth:`connect`)."""

    def __init__(self, actor: Any, *, retry_s: float = 120.0, description: str = ""):
        self._actor, self._retry_s, self._description = actor, retry_s, description

    def __repr__(self) -> str:
        return f"ActorRegistry({self._description})"

    @classmethod
    def connect(cls, config: PlatformConfig, *, actor_name: str | None = None, url: str | None = None,
                retry_s: float = 120.0) -> ActorRegistry:
        """Get or create the detached registry actor of ``config.namespace`` and a transport to it.

        ``url`` overrides ``config.registry_url()`` (a path, ``sqlite:///...`` or
        ``postgresql://...``); ``actor_name`` the default ``mlplat-registry`` (isolated tests).
        An actor already running on another database is a ConfigError naming both.
        """
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": config.namespace}
            if config.ray_address:
                kwargs["address"] = config.ray_address
            else:  # as Platform.ensure_ray: Ray Train's placement-group cleanup needs the state API
                kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
                if not os.environ.get("RAY_ADDRESS"):  # our own instance, never the newest Ray on the machine
                    kwargs["address"] = "local"
            ray.init(**kwargs)
        name = actor_name or REGISTRY_ACTOR_NAME
        want = normalize_registry_url(url) if url else config.registry_url()
        actor: Any = (ray.remote(**ACTOR_OPTIONS)(RegistryActor)
                 .options(name=name, namespace=config.namespace, lifetime="detached", get_if_exists=True,
                          resources=HEAD_NODE_RESOURCE)
                 .remote(want))
        transport = cls(actor, retry_s=retry_s, description=f"actor {config.namespace}/{name}")
        running = transport._send(lambda: actor.backend_url.remote())
        if running != redact_url(want):
            raise ConfigError(
                f"registry actor {config.namespace}/{name} already runs on {running!r}, but this process is set to "
                f"{redact_url(want)!r}; set registry.url (MLPLAT_REGISTRY_URL) to the same database or use another namespace")
        transport._send(lambda: actor.open.remote(), retry_unavailable=False)  # a database that is down: say so now
        return transport

    @property
    def actor(self) -> Any:
        """The Ray actor handle."""
        return self._actor

    def getpid(self) -> int:
        """The pid of the actor process (fault tests kill it)."""
        pid: int = self._send(lambda: self._actor.getpid.remote())
        return pid

    def ping(self) -> bool:
        return bool(self._send(lambda: self._actor.ping.remote()))

    def wait_events(self, seq: int, *, limit: int = 1000, kinds: list[str] | None = None, timeout_s: float = 10.0,
                    poll_s: float = 0.2) -> list[Any]:
        """``events_since(seq)``, waiting in the actor up to ``timeout_s`` for an event when there
        is none yet (:meth:`~mlplat.registry.actor.RegistryActor.wait_events`, a long poll: any
        write through the actor ends it at once): how a controller waits while it has nothing to do."""
        return list(self._send(lambda: self._actor.wait_events.remote(seq, limit, kinds, timeout_s, poll_s)))

    def _send(self, submit: Callable[[], Any], *, retry_unavailable: bool = True) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        deadline, delay = time.monotonic() + self._retry_s, 0.05
        while True:
            try:
                return ray.get(submit())
            except RayTaskError as exc:
                cause = remote_cause(exc)
                # The database was unreachable: resending is safe (writes carry an idempotency key).
                if isinstance(cause, DatabaseUnavailable) and retry_unavailable and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if cause is not None:
                    raise cause from None
                raise
            except (RayActorError, GetTimeoutError):
                # The actor died or is restarting; resending is safe: writes carry an idempotency key.
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _invoke(self, call: RegistryCall, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        sent = {k: _sendable(v) for k, v in call.bind(args, kwargs).items()}
        if call.writes and sent.get("idempotency_key") is None:
            sent["idempotency_key"] = f"auto:{uuid.uuid4().hex}"
        if call.name in ("batch", "read_batch"):
            sent["calls"] = [(str(m), {k: _sendable(v) for k, v in dict(kw or {}).items()}) for m, kw in sent["calls"]]
        return self._send(lambda: self._actor.call.remote(call.name, sent))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = REGISTRY_CALLS.get(name)
        if call is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (not a Registry call)")

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._invoke(call, args, kwargs)

        method.__name__ = method.__qualname__ = name
        method.__doc__ = getattr(Registry, name).__doc__
        return method

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *REGISTRY_CALLS})


def connect_actor(config: PlatformConfig, **kwargs: Any) -> Registry:
    """:meth:`ActorRegistry.connect`, typed as the port every layer takes."""
    return cast(Registry, ActorRegistry.connect(config, **kwargs))
