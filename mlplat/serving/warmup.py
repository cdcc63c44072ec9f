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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mlplat.records import Event
from mlplat.serving.request import InputSchema

__all__ = ["probe_rows", "check_probe", "Prewarmer", "replica_identity", "reference_stats_of", "DEPLOYMENT_STARTED", "REPLICA_REPORT",
           "PIN_EVENTS"]

log = logging.getLogger("mlplat.serving")

DEPLOYMENT_STARTED = "deployment_started"
REPLICA_REPORT = "deployment_replica"
#: Events after which a replica pins the version that just stopped serving as ``previous``.
PIN_EVENTS = ("promoted", "rolled_back", "canary_started", "canary_rolled_back")


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
#: On start, a follower looks this many events back for pre-warm requests still before their deadline.
LOOKBACK_EVENTS = 1000


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
    """Follows the event log in one replica; pre-warms what names this replica's deployment."""

    def __init__(self, client: Any, *, target: str, replica: str, warm: WarmFn, pin_previous: PinFn | None = None,
                 refresh_s: float = 0.25):
        self._client, self._target, self._replica = client, target, replica
        self._warm, self._pin_previous, self._refresh_s = warm, pin_previous, refresh_s
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self.warmed: list[str] = []

    def start_soon(self) -> None:
        """Start following from a constructor when an event loop runs (Serve replicas); else the
        first :meth:`ensure_started` does it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._starting = loop.create_task(self.start())

    async def ensure_started(self) -> None:
        if self._task is not None:
            return
        if self._starting is None or (self._starting.done() and self._starting.exception() is not None):
            self._starting = asyncio.get_running_loop().create_task(self.start())
        await asyncio.shield(self._starting)

    async def start(self) -> None:
        """Follow from now on, after serving any pre-warm request still before its deadline
        (a replica that starts while a deployment pre-warms takes part in it)."""
        last = await self._client.last_seq()
        self._seq = max(0, last - LOOKBACK_EVENTS)
        self._task = asyncio.get_running_loop().create_task(self._follow(only_pending_until=last))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _follow(self, only_pending_until: int = 0) -> None:
        while True:
            try:
                events = await self._client.events_since(self._seq, limit=1000)
                for event in events:
                    self._seq = max(self._seq, event.seq)
                    if event.seq <= only_pending_until and not _pending(event):
                        continue
                    await self._apply(event)
                if len(events) == 1000:
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
        if event.kind in PIN_EVENTS and self._pin_previous is not None:
            previous = payload.get("previous", payload.get("from_version"))
            if isinstance(previous, int):
                self._pin_previous(name, previous)
            return
        if event.kind != DEPLOYMENT_STARTED or self._target not in (payload.get("targets") or {}):
            return
        deployment, version = str(payload.get("deployment")), int(event.version or 0)
        started = time.monotonic()
        timeout_s = max(1.0, float(payload.get("deadline_at", time.time() + 120)) - time.time())
        try:
            record = await self._client.resolve(name, version)
            bundle = record.artifacts.get("bundle")
            feature_set = (record.feature_set.name, record.feature_set.version) if record.feature_set else None
            await asyncio.wait_for(self._warm(name, version, bundle.sha256 if bundle else None, feature_set), timeout_s)
            ok, reason = True, ""
        except asyncio.TimeoutError:
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
