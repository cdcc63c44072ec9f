"""One explicit transaction object, and the decorators that give each store call one.

Every part of the store (models and versions, aliases, runs, catalog, events) is written as
methods ``def call(self, tx: Tx, ...)``: :func:`writes` opens a write transaction that excludes
other writers (or joins the caller's, inside :meth:`batch`), checks and records the call's
idempotency key in it, and commits; :func:`reads` gives a read transaction. The decorated
method's public signature is the one without ``tx`` — the one :class:`~mlplat.registry.protocol.Registry`
declares.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from mlplat.errors import ConflictError, ValidationError
from mlplat.registry.backends import Backend, Row
from mlplat.registry.codec import decode_result, dumps_json, encode_result, loads_json

__all__ = ["Tx", "StoreCore", "writes", "reads", "IDEMPOTENCY_TTL_S"]

log = logging.getLogger(__name__)
#: Idempotency keys older than this are pruned (retries come within seconds, not days).
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
_PRUNE_EVERY_WRITES = 10_000

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="StoreCore")


class Tx:
    """The open transaction of one registry call: statements, the dialect, and the clock."""

    __slots__ = ("_backend", "dialect", "now", "writable", "known_models", "snapshot_versions")

    def __init__(self, backend: Backend, *, writable: bool):
        self._backend, self.dialect, self.writable = backend, backend.dialect, writable
        self.now = time.time()
        #: Model names seen to exist in this transaction (models are never deleted).
        self.known_models: set[str] = set()
        #: Version rows read ahead by ``read_batch`` from its snapshot (read transactions only).
        self.snapshot_versions: dict[tuple[str, int], Row] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        return int(self._backend.execute(sql, params).rowcount)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._backend.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._backend.execute(sql, params).fetchall())

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._backend.execute(sql, params).fetchone()
        return None if row is None else next(iter(dict(row).values()))


class StoreCore:
    """The backend, the lock, and the transaction in progress (one at a time per store)."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self._lock = threading.RLock()
        self._tx: Tx | None = None
        self._writes_since_prune = 0

    def close(self) -> None:
        with self._lock:
            self._backend.close()

    def _run_write(self, method: str, key: object, body: Callable[[Tx], Any], *, counted: bool = True) -> Any:
        """Run ``body`` in a write transaction; ``counted`` writes bring the next prune closer."""
        with self._lock:
            if self._tx is not None:  # inside batch(): the caller's transaction
                if not self._tx.writable:
                    raise ValidationError(f"{method}() writes; it cannot run inside read_batch()")
                return self._keyed(self._tx, method, key, body)
            try:
                try:  # a failure anywhere after BEGIN (the lock, the body, COMMIT) rolls back
                    self._backend.begin_write()
                    self._tx = tx = Tx(self._backend, writable=True)
                    result = self._keyed(tx, method, key, body)
                    self._backend.commit()
                except BaseException:
                    self._backend.rollback()
                    raise
                finally:
                    self._tx = None
            except Exception as exc:
                clean = self._backend.storage_error(exc)
                if clean is not None:
                    raise clean from None
                raise
            self._writes_since_prune += counted
            if self._writes_since_prune >= _PRUNE_EVERY_WRITES:
                self._writes_since_prune = 0
                try:  # housekeeping: never fails the write that just committed
                    self.prune_idempotency()
                except Exception as exc:  # the next round retries
                    log.warning("pruning old idempotency keys failed: %s", exc)
            return result

    def _run_read(self, body: Callable[[Tx], Any]) -> Any:
        """Every read sees one snapshot: a call of several statements (an alias, then its
        version) never mixes two commits."""
        with self._lock:
            if self._tx is not None:
                return body(self._tx)
            try:
                try:
                    self._backend.begin_read()
                    self._tx = tx = Tx(self._backend, writable=False)
                    return body(tx)
                finally:
                    self._tx = None
                    self._backend.rollback()
            except Exception as exc:
                clean = self._backend.storage_error(exc)
                if clean is not None:
                    raise clean from None
                raise

    @staticmethod
    def _keyed(tx: Tx, method: str, key: object, body: Callable[[Tx], Any]) -> Any:
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > 256:
                raise ValidationError(f"invalid idempotency_key {key!r}: expected a non-empty string of at most 256 characters")
            row = tx.one("SELECT method, result FROM idempotency WHERE key=?", (key,))
            if row is not None:
                if row["method"] != method:
                    raise ConflictError(f"idempotency key {key!r} was already used for {row['method']}(), not {method}(); "
                                        "use a new key")
                return decode_result(loads_json(row["result"]))
        result = body(tx)
        if key is not None:
            tx.execute("INSERT INTO idempotency(key, method, result, created_at) VALUES (?,?,?,?)",
                       (key, method, dumps_json(encode_result(result), "result"), tx.now))
        return result

    def prune_idempotency(self) -> int:
        """Forget idempotency keys older than :data:`IDEMPOTENCY_TTL_S`; returns how many."""
        with self._lock:
            if self._tx is not None:
                return 0
            pruned: int = self._run_write("prune_idempotency", None, lambda tx: tx.execute(
                "DELETE FROM idempotency WHERE created_at < ?", (tx.now - IDEMPOTENCY_TTL_S,)), counted=False)
            return pruned


def _public_signature(fn: Callable[..., Any]) -> inspect.Signature:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    return sig.replace(parameters=[params[0], *params[2:]])  # drop ``tx``


def writes(fn: Callable[Concatenate[S, Tx, P], R]) -> Callable[Concatenate[S, P], R]:
    """A registry write: one transaction, keyed by the call's ``idempotency_key``."""
    method = fn.__name__

    @functools.wraps(fn)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._run_write(method, kwargs.get("idempotency_key"), lambda tx: fn(self, tx, *args, **kwargs))
        return result

    del call.__wrapped__
    call.__signature__ = _public_signature(fn)  # type: ignore[attr-defined]
    return call


def reads(fn: Callable[Concatenate[S, Tx, P], R]) -> Callable[Concatenate[S, P], R]:
    """A registry read: never writes; sees no other call's transaction half done."""

    @functools.wraps(fn)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._run_read(lambda tx: fn(self, tx, *args, **kwargs))
        return result

    del call.__wrapped__
    call.__signature__ = _public_signature(fn)  # type: ignore[attr-defined]
    return call


def payload_dict(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what} must be a dict, got {type(value).__name__}")
    return dict(value)
