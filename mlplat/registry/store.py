"""The registry store: every :class:`~mlplat.registry.protocol.Registry` call, in this process.

It is the parts composed, plus the calls that span them (``batch``, ``read_batch``) — models and versions (``versions.py``), aliases
(``aliases.py``), promotion, rollback and deployments (``rollouts.py``), runs (``runs.py``), catalog (``catalog.py``), events and batches
(``events.py``) — over one backend (``backends.py``) whose schema ``schema.py`` migrates on open.
Each call is one transaction (``tx.py``). Nothing lives only in memory: a new store on the same
database sees everything, which is what lets the registry actor restart without losing a write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlplat.config import redact_url
from mlplat.errors import ValidationError
from mlplat.registry.aliases import AliasesPart
from mlplat.registry.backends import Backend, open_backend
from mlplat.registry.catalog import CatalogPart
from mlplat.registry.events import EventsPart
from mlplat.registry.protocol import REGISTRY_CALLS, BatchCall
from mlplat.registry.rollouts import RolloutsPart
from mlplat.registry.runs import RunsPart
from mlplat.registry.schema import migrate, schema_version
from mlplat.registry.tx import StoreCore, Tx, writes
from mlplat.registry.versions import VersionsPart, read_versions_ahead

__all__ = ["RegistryStore"]


class RegistryStore(VersionsPart, AliasesPart, RolloutsPart, RunsPart, CatalogPart, EventsPart, StoreCore):
    """The registry over SQLite or PostgreSQL. Thread-safe; one write transaction at a time.

    >>> store = RegistryStore("sqlite:////tmp/registry.db")  # or a path, or postgresql://...  # doctest: +SKIP
    >>> store.register_version("churn").version  # doctest: +SKIP
    1
    """

    def __init__(self, url: str | Path | Backend, *, synchronous: str = "FULL"):
        backend = url if isinstance(url, Backend) else open_backend(url, synchronous=synchronous)
        super().__init__(backend)
        try:
            migrate(backend)
            self.prune_idempotency()
        except BaseException as exc:
            backend.close()
            clean = backend.storage_error(exc)
            if clean is not None:
                raise clean from None
            raise

    def __repr__(self) -> str:
        return f"RegistryStore({redact_url(self._backend.url)!r})"

    @writes
    def batch(self, tx: Tx, calls: Iterable[BatchCall], *, idempotency_key: str | None = None) -> list[Any]:
        """Several calls in ONE transaction; all apply or none.

        >>> store.batch([("register_version", {"name": "churn"}), ("append_event", {"kind": "x", "subject": "s"})])
        ... # doctest: +SKIP
        """
        results = []
        for i, method, kwargs in _checked(calls, "batch"):
            if method in ("batch", "read_batch"):
                raise ValidationError(f"batch call #{i}: {method}() cannot be nested")
            results.append(getattr(self, method)(**kwargs))
        return results

    def read_batch(self, calls: Iterable[BatchCall]) -> list[Any]:
        """Several reads against one consistent snapshot; nothing is written."""
        checked = _checked(calls, "read_batch")
        for i, method, _ in checked:
            if REGISTRY_CALLS[method].writes or method in ("batch", "read_batch"):
                raise ValidationError(f"read_batch call #{i}: {method!r} is not a read call")

        def run(tx: Tx) -> list[Any]:
            # get_version calls are answered from one query of the same snapshot (one round trip).
            refs = [(kw["name"], kw["version"]) for _, m, kw in checked if m == "get_version" and
                    isinstance(kw.get("name"), str) and isinstance(kw.get("version"), int) and not isinstance(kw["version"], bool)]
            if len(refs) > 1:
                read_versions_ahead(tx, refs)
            return [getattr(self, m)(**kw) for _, m, kw in checked]

        result: list[Any] = self._run_read(run)
        return result

    def backend_url(self) -> str:
        return redact_url(self._backend.url)

    def schema_version(self) -> int:
        """The migration the database is at (``schema.SCHEMA_VERSION`` once open)."""
        version: int = self._run_read(lambda tx: schema_version(self._backend))
        return version


def _checked(calls: Iterable[BatchCall], what: str) -> list[tuple[int, str, dict[str, Any]]]:
    out = []
    for i, call in enumerate(calls):
        try:
            method, kwargs = call
        except (TypeError, ValueError):
            raise ValidationError(f"{what} call #{i} must be a (method, kwargs) pair, got {call!r}") from None
        if method not in REGISTRY_CALLS:
            raise ValidationError(f"{what} call #{i}: unknown method {method!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValidationError(f"{what} call #{i}: kwargs must be a dict, got {type(kwargs).__name__}")
        out.append((i, str(method), dict(kwargs or {})))
    return out
