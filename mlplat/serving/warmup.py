"""Pre-warm: every replica named in a deployment's targets loads the new version and answers a
probe before any traffic reaches it, then reports to the registry.

Replicas do not receive calls for this: each follows the registry's event log (as the route
table does) and acts on ``deployment_started`` events whose ``targets`` name its own Serve
deployment (``<app>/<deployment>``). Its answer is one ``deployment_replica`` event on subject
``deployment:<id>`` (ok, or the reason it failed), which the deployer counts
(``mlplat.lifecycle.deploy``). The probe rows come from the feature set's reference statistics
(quantile edges of numeric columns, the most frequent categories), else from the input schema.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mlplat.records import Event
from mlplat.serving.request import InputSchema
from mlplat.serving.routes import next_events

__all__ = ["probe_rows", "check_probe", "Prewarmer", "replica_identity", "reference_stats_of", "DEPLOYMENT_STARTED", "REPLICA_REPORT",
           "PIN_EVENTS"]

log = logging.getLogger("mlplat.serving")

DEPLOYMENT_STARTED = "deployment_started"
REPLICA_REPORT = "deployment_replica"
#: Events after which a replica pins the version that just stopped serving as ``previous``.
PIN_EVENTS = ("promoted", "rolled_back")
#: Events after which a replica unpins the candidate of a rollout that failed or was rolled back.
UNPIN_EVENTS = ("deployment_failed", "canary_rolled_back")


def probe_rows(schema: InputSchema, reference: Mapping[str, Any] | None = None, *, n: int = 8) -> list[dict[str, Any]]:
    """``n`` rows a version must answer before it takes traffic.

    ``reference``: a feature set's ``stats.json`` ``raw`` section (column -> reference stats).
    Numeric columns walk their quantile edges (min ... max); categorical ones their most
    frequent categories; a column without reference stats gets 0.0/1.0 or a missing value.

    >>> s = InputSchema(columns={"amount": "number", "country": "category"}, input_dim=4)
    >>> ref = {"amount": {"type": "numeric", "histogram": {"edges": [1.0, 5.0, 9.0]}},
    ...        "country": {"type": "categorical", "frequencies": {"fr": 0.7, "de": 0.3}}}
    >>> probe_rows(s, ref, n=3)
    [{'amount': 1.0, 'country': 'fr'}, {'amount': 5.0, 'country': 'de'}, {'amount': 9.0, 'country': 'fr'}]
    """
    reference = reference or {}
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for column, kind in schema.columns.items():
        stats = reference.get(column) or {}
        edges = (stats.get("histogram") or {}).get("edges") or []
        categories = list((stats.get("frequencies") or {}).keys())
        for i, row in enumerate(rows):
            if kind.startswith("number") and edges:
                row[column] = float(edges[round(i * (len(edges) - 1) / max(1, n - 1))])
            elif kind.startswith("number"):
                row[column] = float(i % 2) if kind == "number" or i % 3 else None
            elif categories:
                row[column] = categories[i % len(categories)]
            else:
                row[column] = None if i % 2 else "probe"
    return rows


def check_probe(predictions: list[Any], rows: int) -> None:
    """A probe's answer must have one finite prediction per row (non-finite values already
    raise in ``ServableModel.predict_matrix``)."""
    if len(predictions) != rows:
        raise ValueError(f"probe answered {len(predictions)} predictions for {rows} rows")


def replica_identity() -> tuple[str, str]:
    """``(<app>/<deployment>, replica id)`` of the Serve replica this runs in."""
    from ray import serve

    ctx = serve.get_replica_context()
    return f"{ctx.app_name}/{ctx.deployment}", ctx.replica_tag


#: ``warm(name, version, bundle_sha256, feature_set) -> None``: load, probe, pin; raises on failure.
WarmFn = Callable[[str, int, "str | None", "tuple[str, int] | None"], Awaitable[None]]
#: ``pin_previous(name, version)``: keep ``version`` loaded for keep_previous_s.
PinFn = Callable[[str, int], object]
#: On start, a follower looks this many events back (pre-warm requests only) for those still before their deadline.
LOOKBACK_EVENTS = 10_000


def reference_stats_of(storage: Any, feature_set: tuple[str, int] | None) -> dict[str, Any] | None:
    """The raw-column reference statistics of a feature set version (None when unknown)."""
    if feature_set is None:
        return None
    try:
        raw = storage.read_json(f"features/{feature_set[0]}/v{feature_set[1]}", "stats.json").get("raw")
    except Exception:
        return None
    return raw if isinstance(raw, dict) else None


class Prewarmer:
    """Follows the event log in one replica; pre-warms what names this replica's deployment.

    It never sits on a request's path: it runs as a background task that retries while the
    registry is unreachable (a replica keeps serving what it has), and each pre-warm runs as its
    own task (at most ``max_concurrent`` at once), so a slow load never delays another model's
    pre-warm or a pin."""

    def __init__(self, client: Any, *, target: str, replica: str, warm: WarmFn, pin_previous: PinFn | None = None,
                 unpin: PinFn | None = None, refresh_s: float = 0.25, max_concurrent: int = 2, wait_s: float = 10.0):
        self._client, self._target, self._replica = client, target, replica
        self._warm, self._pin_previous, self._unpin, self._refresh_s = warm, pin_previous, unpin, refresh_s
        self._wait_s = wait_s
        self._max_concurrent = max_concurrent
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self.following = False
        self.warmed: list[str] = []

    def start_soon(self) -> None:
        """Start the background follower if an event loop runs here (a Serve replica's
        constructor, a request); otherwise the next call from a coroutine does it."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run())

    ensure_running = start_soon

    async def stop(self) -> None:
        for task in [self._task, *self._jobs]:
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        while True:  # the registry may be restarting: keep trying, never fail the replica for it
            try:
                last = await self._client.last_seq()
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("pre-warm follower: registry unreachable", exc_info=True)
                await asyncio.sleep(max(1.0, self._refresh_s))
        self._seq = last
        try:  # pre-warm requests from before this replica started, still before their deadline
            recent = await self._client.events_since(max(0, last - LOOKBACK_EVENTS), limit=LOOKBACK_EVENTS,
                                                     kinds=[DEPLOYMENT_STARTED])
            for event in recent:
                if event.seq <= last and _pending(event):
                    await self._apply(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("pre-warm follower: look-back failed", exc_info=True)
        self.following = True
        await self._follow()

    async def _follow(self) -> None:
        while True:
            try:
                events = await next_events(self._client, self._seq, limit=1000, wait_s=self._wait_s,
                                           poll_s=self._refresh_s)
                for event in events:
                    self._seq = max(self._seq, event.seq)
                    await self._apply(event)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # registry restarting: try again
                log.debug("pre-warm follower: registry read failed", exc_info=True)
            await asyncio.sleep(self._refresh_s)

    async def _apply(self, event: Event) -> None:
        """Pin the version a swap replaced; pre-warm what names this replica's deployment."""
        name = event.subject.removeprefix("model:")
        payload = event.payload
        if event.kind in UNPIN_EVENTS and self._unpin is not None and event.version is not None:
            self._unpin(name, event.version)
            return
        if event.kind in PIN_EVENTS and self._pin_previous is not None:
            previous = payload.get("previous", payload.get("from_version"))
            if isinstance(previous, int):
                try:
                    pinned = self._pin_previous(name, previous)
                    if inspect.isawaitable(pinned):
                        await pinned
                except Exception:  # pinning is an optimisation: never stop following for it
                    log.debug("could not pin %s v%s", name, previous, exc_info=True)
            return
        if event.kind != DEPLOYMENT_STARTED or self._target not in (payload.get("targets") or {}):
            return
        job = asyncio.get_running_loop().create_task(self._prewarm(event))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _prewarm(self, event: Event) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrent)
        async with self._slots:
            await self._prewarm_one(event)

    async def _prewarm_one(self, event: Event) -> None:
        name, payload = event.subject.removeprefix("model:"), event.payload
        deployment, version = str(payload.get("deployment")), int(event.version or 0)
        started = time.monotonic()
        timeout_s = max(1.0, float(payload.get("deadline_at", time.time() + 120)) - time.time())
        try:
            record = await self._client.resolve(name, version)
            bundle = record.artifacts.get("bundle")
            feature_set = (record.feature_set.name, record.feature_set.version) if record.feature_set else None
            await asyncio.wait_for(self._warm(name, version, bundle.sha256 if bundle else None, feature_set), timeout_s)
            ok, reason = True, ""
        except TimeoutError:
            ok, reason = False, f"did not load and answer the probe within {timeout_s:.0f} s"
        except Exception as exc:  # the version's fault: report it, keep serving the old one
            cause = getattr(exc, "cause", None) or exc
            ok, reason = False, f"{type(cause).__name__}: {str(cause)[:500]}"
        load_s = round(time.monotonic() - started, 4)
        if ok:
            self.warmed.append(f"{name}@v{version}")
        for attempt in range(3):
            try:
                await self._client.append_event(REPLICA_REPORT, f"deployment:{deployment}", {
                    "target": self._target, "replica": self._replica, "ok": ok, "reason": reason, "load_s": load_s,
                    "name": name, "version": version})
                return
            except Exception:
                await asyncio.sleep(0.2 * (attempt + 1))
        log.warning("could not report pre-warm of %s v%s for deployment %s", name, version, deployment)


def _pending(event: Event) -> bool:
    """A pre-warm request whose deadline has not passed (replayed by a replica that just started)."""
    return event.kind == DEPLOYMENT_STARTED and float(event.payload.get("deadline_at") or 0) > time.time()
