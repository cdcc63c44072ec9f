"""Telemetry files into the data catalog, on a daemon thread of their own.

The ingress's flush thread writes telemetry Parquet (:mod:`mlplat.serving.telemetry`) and hands
the files to :class:`CatalogSync` (a lock and a list append); this thread registers them in the
catalog (dataset ``telemetry-<model>``, kind ``telemetry``), batched per (model, day), every
registry call under a timeout, failures counted and retried with backoff.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlplat.errors import InvalidName, MlplatError, NotFound, SchemaMismatch, ValidationError
from mlplat.serving.telemetry import TELEMETRY_DIR, TELEMETRY_KIND, TelemetryFile, log, telemetry_dataset_name
from mlplat.storage import Storage

__all__ = ["CatalogSync", "CatalogUnavailable", "RegistryTimeout", "MAX_ABANDONED_CALLS", "catalog_registrar", "Registrar"]


# -- the catalog (its own thread) ---------------------------------------------------------------

#: ``(model, partition, [file paths relative to telemetry/<model>]) -> None``; raises on failure.
Registrar = Callable[[str, str, list[str]], None]
#: Errors that retrying cannot fix (a file the catalog refuses, or that is gone): the files leave the queue.
_PERMANENT = (SchemaMismatch, ValidationError, InvalidName, NotFound)
#: The longest the catalog thread sleeps before it looks at its queue again.
_MAX_WAIT_S = 1.0


class CatalogUnavailable(MlplatError):
    """The data catalog cannot register files in place (``mlplat.data.catalog.add_files``)."""


class RegistryTimeout(MlplatError, TimeoutError):
    """A registry call of the catalog thread took longer than its timeout and was abandoned."""


@dataclass
class _Group:
    files: list[str] = field(default_factory=list)
    attempts: int = 0
    next_try: float = 0.0


class CatalogSync:
    """Registers flushed telemetry files in the data catalog, on a daemon thread of its own.

    The flush thread only hands files over (:meth:`add`: a lock and a list append); it never
    waits for the registry. Files queue per (model, partition); the thread (:meth:`start`)
    registers a group with one call of ``register`` -- all its queued files -- at most every
    ``interval_s`` per group (a group's first files go at once). A failed group stays queued
    and is retried after ``max(interval_s, backoff)``, the backoff ``retry_s`` doubling up to
    ``max_retry_s``; every failure is counted in ``errors``. When the catalog refuses a batch
    for good (a schema conflict, a file that is gone), the batch is registered file by file,
    so one bad file does not drop the others: the refused files leave the queue, counted in
    ``rejected``. Past ``max_files`` queued files the oldest are dropped (they stay on disk,
    unlisted) and counted in ``dropped_files``. The registrar must be idempotent per file (a
    retry after an unknown outcome -- a timeout -- sends the same files again)."""

    def __init__(self, register: Registrar, *, interval_s: float = 60.0, retry_s: float = 5.0,
                 max_retry_s: float = 300.0, max_files: int = 10_000, on_error: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._register, self._interval_s, self._retry_s, self._max_retry_s = register, interval_s, retry_s, max_retry_s
        self._max_files, self._on_error, self._clock = max_files, on_error, clock
        self._groups: dict[tuple[str, str], _Group] = {}
        self._last_call: dict[tuple[str, str], float] = {}  # when each group was last sent (the interval)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._syncing = threading.Lock()  # one sync at a time (the thread, or a caller without it)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._requested = 0  # sync_now() requests
        self._served = 0  # ... and how many the thread has answered
        self.registered_files = 0
        self.errors = 0
        self.rejected = 0
        self.dropped_files = 0
        #: Why syncing stopped for good (the catalog cannot take the files at all), else None.
        self.disabled: str | None = None

    @property
    def pending_files(self) -> int:
        return sum(len(g.files) for g in self._groups.values())

    def add(self, files: Iterable[TelemetryFile]) -> None:
        """Queue flushed files (the flush thread: never waits for the registry)."""
        with self._lock:
            if self.disabled is not None:
                return
            for f in files:
                self._groups.setdefault((f.model, f.partition), _Group()).files.append(f.relative_path)
            excess = self.pending_files - self._max_files
            for key in list(self._groups):  # oldest groups first (insertion order)
                if excess <= 0:
                    break
                group = self._groups[key]
                cut = min(excess, len(group.files))
                del group.files[:cut]
                excess -= cut
                self.dropped_files += cut
                if not group.files:
                    del self._groups[key]
            self._cv.notify_all()

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the registration thread (a daemon; idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="mlplat-telemetry-catalog", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after the registration in progress (if any)."""
        with self._lock:
            self._stopping = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sync_now(self, timeout_s: float = 60.0) -> bool:
        """Register everything queued now, ignoring the interval and backoff (tests, shutdown);
        waits up to ``timeout_s`` for the thread to finish it. Without a running thread, this
        call registers. Returns whether it finished in time."""
        if not self.running:
            self.sync(force=True)
            return True
        with self._cv:
            self._requested += 1
            ticket = self._requested
            self._cv.notify_all()
            return self._cv.wait_for(lambda: self._served >= ticket or self._stopping, timeout_s)

    def _wait_s(self) -> float | None:  # under the lock: seconds until a group is due, None: none queued
        if not any(g.files for g in self._groups.values()):
            return None
        now = self._clock()
        return max(0.0, min(self._due_at(k, g) for k, g in self._groups.items() if g.files) - now)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    if self._requested > self._served:
                        break
                    wait = self._wait_s()
                    if wait is not None and wait <= 0:
                        break
                    self._cv.wait(_MAX_WAIT_S if wait is None else min(wait, _MAX_WAIT_S))
                if self._stopping:
                    return
                ticket = self._requested
                force = ticket > self._served
            try:
                with self._syncing:  # waits for a sync another caller runs, rather than spinning
                    self._sync(force)
            except Exception:  # never let the thread die: the queue is retried next round
                log.exception("telemetry catalog registration failed")
            with self._cv:
                self._served = max(self._served, ticket)
                self._cv.notify_all()

    # -- one round ---------------------------------------------------------------------------------
    def _due_at(self, key: tuple[str, str], group: _Group) -> float:
        last = self._last_call.get(key)
        return max(group.next_try, -math.inf if last is None else last + self._interval_s)

    def sync(self, *, force: bool = False) -> int:
        """Register every due group (every group with ``force``); returns how many files were
        registered (0 while another sync runs). The thread calls it; so can a test."""
        if not self._syncing.acquire(blocking=False):
            return 0
        try:
            return self._sync(force)
        finally:
            self._syncing.release()

    def _sync(self, force: bool) -> int:
        now = self._clock()
        with self._lock:
            due = [(key, group, list(group.files)) for key, group in self._groups.items()
                   if group.files and (force or self._due_at(key, group) <= now)]
            for key in [k for k, t in self._last_call.items() if t + self._interval_s < now and k not in self._groups]:
                del self._last_call[key]  # an idle group's interval has passed: forget it
        done = 0
        for (model, partition), group, files in due:
            with self._lock:
                self._last_call[(model, partition)] = self._clock()
            try:
                self._register(model, partition, files)
            except CatalogUnavailable as exc:
                self._disable(exc)
                return done
            except _PERMANENT as exc:
                if len(files) == 1:
                    self._reject(model, partition, files, exc)
                    continue
                log.warning("catalog refused a batch of %d telemetry files of %s %s (%s); registering them one by one",
                            len(files), model, partition, exc)
                try:
                    done += self._one_by_one(model, partition, group, files)
                except CatalogUnavailable as exc2:
                    self._disable(exc2)
                    return done
            except Exception as exc:
                self._retry_later(model, partition, group, exc)
            else:
                done += self._registered(model, partition, files)
        return done

    def _one_by_one(self, model: str, partition: str, group: _Group, files: list[str]) -> int:
        """A refused batch, file by file: the good files are registered, the refused ones leave
        the queue (counted); a transient failure leaves the rest queued for the next round."""
        done = 0
        for f in files:
            try:
                self._register(model, partition, [f])
            except CatalogUnavailable:
                raise
            except _PERMANENT as exc:
                self._reject(model, partition, [f], exc)
            except Exception as exc:
                self._retry_later(model, partition, group, exc)
                break
            else:
                done += self._registered(model, partition, [f])
        return done

    def _registered(self, model: str, partition: str, files: list[str]) -> int:
        self.registered_files += len(files)
        self._forget(model, partition, files, reset=True)
        return len(files)

    def _reject(self, model: str, partition: str, files: list[str], exc: BaseException) -> None:
        log.error("catalog refused telemetry file(s) of %s %s (%d dropped from the queue, left on disk unlisted): %s",
                  model, partition, len(files), exc)
        self.rejected += len(files)
        self._forget(model, partition, files, reset=False)
        self._failed()

    def _retry_later(self, model: str, partition: str, group: _Group, exc: BaseException) -> None:
        with self._lock:
            group.attempts += 1
            group.next_try = self._clock() + min(self._max_retry_s, self._retry_s * 2 ** (group.attempts - 1))
            attempts = group.attempts
        log.warning("registering telemetry of %s %s in the catalog failed (attempt %d, retried): %s: %s",
                    model, partition, attempts, type(exc).__name__, exc)
        self._failed()

    def _disable(self, exc: BaseException) -> None:
        log.error("telemetry is not registered in the data catalog: %s", exc)
        self.disabled = str(exc)
        self._failed()
        with self._lock:
            self._groups.clear()

    def _failed(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error()

    def _forget(self, model: str, partition: str, files: list[str], *, reset: bool) -> None:
        with self._lock:
            group = self._groups.get((model, partition))
            if group is None:
                return
            sent = set(files)
            group.files = [f for f in group.files if f not in sent]
            if reset:
                group.attempts, group.next_try = 0, 0.0
            if not group.files:
                del self._groups[(model, partition)]


#: Abandoned registry calls (past their timeout, still running) a registrar tolerates; past
#: it, calls fail at once until one of them returns.
MAX_ABANDONED_CALLS = 4


class _TimedCalls:
    """Calls that return within ``timeout_s``: each runs on a daemon worker thread, and one still
    running after ``timeout_s`` is abandoned (it may still finish) with :class:`RegistryTimeout`.
    For the synchronous registry, whose transport has no per-call timeout (an actor call waits
    as long as it takes)."""

    def __init__(self, timeout_s: float):
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self.abandoned = 0  # still running past their timeout

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.abandoned >= MAX_ABANDONED_CALLS:
                raise RegistryTimeout(f"registry call {name}() not sent: {self.abandoned} earlier calls are still "
                                      f"running past their {self._timeout_s:g} s timeout")
        done = threading.Event()
        box: dict[str, Any] = {}
        abandoned = [False]

        def work() -> None:
            try:
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            finally:
                with self._lock:
                    done.set()
                    if abandoned[0]:
                        self.abandoned -= 1

        threading.Thread(target=work, name=f"mlplat-registry-{name}", daemon=True).start()
        if not done.wait(self._timeout_s):
            with self._lock:
                if not done.is_set():
                    abandoned[0] = True
                    self.abandoned += 1
                    raise RegistryTimeout(f"registry call {name}() took longer than {self._timeout_s:g} s; abandoned "
                                          "(its files are sent again)")
        if "error" in box:
            raise box["error"]
        return box["result"]


class _TimedRegistry:
    """A registry whose every call goes through :class:`_TimedCalls`."""

    def __init__(self, registry: Any, calls: _TimedCalls):
        self._registry, self._calls = registry, calls

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._registry, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._calls.run(name, fn, *args, **kwargs)

        return call


def catalog_registrar(storage: Storage, registry: Callable[[], Any], *, timeout_s: float = 30.0) -> Registrar:
    """The registrar of :class:`CatalogSync` on the data catalog: the files of a (model,
    partition) join partition ``date=...`` of dataset ``telemetry-<model>`` (kind
    ``telemetry``, directory ``telemetry/<model>``), registered where they lie, with one
    ``add_files`` call. ``registry``: builds the (synchronous) registry on first use, in the
    catalog thread; building it and every registry call then gets ``timeout_s`` (else
    :class:`RegistryTimeout`: counted and retried like any failure)."""
    holder: list[Any] = []
    calls = _TimedCalls(timeout_s)

    def register(model: str, partition: str, files: list[str]) -> None:
        try:
            from mlplat.data.catalog import add_files
        except ImportError:
            raise CatalogUnavailable("the data catalog has no add_files (register files in place): telemetry "
                                     "files are written but not registered") from None
        if not holder:
            holder.append(_TimedRegistry(calls.run("connect", registry), calls))
        add_files(storage, holder[0], telemetry_dataset_name(model), f"{TELEMETRY_DIR}/{model}", files,
                  partition=partition, kind=TELEMETRY_KIND,
                  description=f"inference telemetry of model {model} (one row per prediction)")

    return register
