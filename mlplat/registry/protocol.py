"""The registry port: one typed definition of every registry call, records in and records out.

:class:`Registry` is what every layer receives (constructor or argument typed ``Registry``).
Its implementations:
- :class:`~mlplat.registry.store.RegistryStore`: the store itself, in this process
  (SQLite or PostgreSQL, chosen by ``registry.url``);
- :class:`~mlplat.registry.transport.ActorRegistry`: the same calls through the detached
  registry actor, built from this class (:data:`REGISTRY_CALLS`), never re-declared by hand.

A method that takes ``idempotency_key`` writes: it runs in one transaction, and a retried
call with the same key returns the first result and writes nothing again. Every other method
only reads. Adding a method here adds it to both transports; ``tests/unit/test_registry_port.py``
checks that the store implements each one with the same signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from mlplat.records import (
    ApprovalState,
    CatalogEntry,
    DatasetRef,
    Deployment,
    Event,
    FeatureSetRef,
    ModelInfo,
    ModelState,
    ModelVersion,
    Run,
    RunState,
    Traffic,
)

__all__ = ["Registry", "RegistryCall", "REGISTRY_CALLS", "BatchCall"]

#: One call of :meth:`Registry.batch` / :meth:`Registry.read_batch`: ``(method, kwargs)``.
BatchCall = tuple[str, Mapping[str, Any]]


@runtime_checkable
class Registry(Protocol):
    """Models, versions, states, approvals, aliases, runs, catalog and events."""

    # -- models -------------------------------------------------------------------------------
    def create_model(self, name: str, *, description: str = "", owner: str = "", tags: Iterable[str] = (),
                     task_type: str | None = None, serving_policy: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> ModelInfo:
        """Create a model; AlreadyExists if the name is taken."""
        ...

    def update_model(self, name: str, *, description: str | None = None, owner: str | None = None,
                     tags: Iterable[str] | None = None, task_type: str | None = None,
                     serving_policy: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelInfo:
        """Change a model's descriptive fields; ``serving_policy`` replaces the old one."""
        ...

    def get_model(self, name: str) -> ModelInfo: ...

    def list_models(self, *, prefix: str | None = None, tag: str | None = None,
                    state: ModelState | str | None = None) -> list[ModelInfo]:
        """Models by name prefix, tag, and/or the state of any of their versions."""
        ...

    # -- versions -----------------------------------------------------------------------------
    def register_version(self, name: str, *, config_hash: str | None = None, code_version: str | None = None,
                         datasets: Iterable[DatasetRef | Mapping[str, Any]] = (),
                         feature_set: FeatureSetRef | Mapping[str, Any] | None = None, run_id: str | None = None,
                         extra: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
                         metrics: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelVersion:
        """Add the next version of ``name`` (creating the model if missing) in state REGISTERED;
        ``artifacts`` given here land in the same transaction (absent or complete, never half)."""
        ...

    def get_version(self, name: str, version: int) -> ModelVersion: ...

    def resolve(self, name: str, ref: int | str) -> ModelVersion:
        """A version by number (``3``, ``"v3"``) or alias (``"production"``)."""
        ...

    def list_versions(self, name: str, *, state: ModelState | str | None = None) -> list[ModelVersion]: ...

    def find_versions(self, *, state: ModelState | str, prefix: str | None = None) -> list[ModelVersion]:
        """Versions of every model in ``state``, by model then version."""
        ...

    def transition(self, name: str, version: int, state: ModelState | str, *,
                   expected_state: ModelState | str | None = None, error: str | None = None,
                   metrics: Mapping[str, Any] | None = None, require_approval: bool = False,
                   idempotency_key: str | None = None) -> ModelVersion:
        """Move a version to ``state`` (InvalidTransition if the state machine forbids it).
        ``require_approval`` (moving to VALIDATED only): the approval becomes PENDING."""
        ...

    def update_version(self, name: str, version: int, *, metrics: Mapping[str, Any] | None = None,
                       artifacts: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                       expected_state: ModelState | str | None = None,
                       idempotency_key: str | None = None) -> ModelVersion:
        """Merge ``metrics`` / ``artifacts`` / ``extra`` into a version (top-level keys)."""
        ...

    def review(self, name: str, version: int, verdict: ApprovalState | str, *, by: str, note: str = "",
               idempotency_key: str | None = None) -> ModelVersion:
        """A reviewer's decision on a VALIDATED version awaiting approval: APPROVED (promotable)
        or REJECTED (the version moves VALIDATED -> REJECTED); records who, why and when."""
        ...

    # -- aliases and promotion ----------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int, *, expected_version: int | None = None,
                  idempotency_key: str | None = None) -> int:
        """Point ``alias`` at ``version``; ``expected_version`` (0 = unset) guards a concurrent move."""
        ...

    def delete_alias(self, name: str, alias: str, *, expected_version: int | None = None,
                     idempotency_key: str | None = None) -> int | None: ...

    def get_alias(self, name: str, alias: str) -> int | None: ...

    def aliases(self, name: str) -> dict[str, int]: ...

    # -- promotion, rollback and deployments (rollouts.py) ---------------------------------------
    def promote(self, name: str, version: int, *, region: str | None = None, expected_production: int | None = None,
                by: str = "", idempotency_key: str | None = None) -> ModelVersion:
        """Make ``version`` PRODUCTION in one transaction: the old one ARCHIVED and ``previous``;
        every regional alias is removed. With ``region``: only ``production.<region>`` moves.
        ``by``: who promotes, recorded in the ``promoted`` event."""
        ...

    def rollback(self, name: str, *, region: str | None = None, expected_production: int | None = None, by: str = "",
                 idempotency_key: str | None = None) -> ModelVersion:
        """Undo the last change: an active canary ends (its version REJECTED); else production ->
        ARCHIVED, ``previous`` -> PRODUCTION (in ``region``: the regional aliases swap)."""
        ...

    def start_deployment(self, name: str, version: int, *, region: str | None = None, canary_percent: float = 0.0,
                         by: str = "", force: bool = False, targets: Mapping[str, int] | None = None,
                         prewarm_timeout_s: float = 120.0, idempotency_key: str | None = None) -> Deployment:
        """Begin a rollout (PREWARMING): replicas following the event log load and probe the version."""
        ...

    def finish_prewarm(self, deployment_id: str, *, ok: bool, reason: str = "", reject: bool = True,
                       idempotency_key: str | None = None) -> Deployment:
        """LIVE or CANARY when ``ok``; else FAILED (and the version REJECTED with ``reject``)."""
        ...

    def finish_canary(self, deployment_id: str, *, promote: bool, reason: str = "", by: str = "",
                      idempotency_key: str | None = None) -> Deployment: ...

    def get_deployment(self, deployment_id: str) -> Deployment: ...

    def list_deployments(self, *, name: str | None = None, active: bool | None = None, limit: int = 50) -> list[Deployment]: ...

    def traffic(self, name: str, *, region: str | None = None) -> Traffic:
        """Production and canary versions of ``name`` for the ingress of ``region``."""
        ...

    # -- training runs ------------------------------------------------------------------------
    def enqueue_run(self, run_id: str, *, kind: str, model: str, request: Mapping[str, Any],
                    version: int | None = None, priority: int = 0, idempotency_key: str | None = None) -> Run:
        """Add a request in state QUEUED; AlreadyExists if ``run_id`` is taken."""
        ...

    def claim_next_run(self, worker: str, *, run_id: str | None = None, kinds: Sequence[str] | None = None,
                       idempotency_key: str | None = None) -> Run | None:
        """Move the next QUEUED run (or ``run_id``) to RUNNING for ``worker``; never claimed twice."""
        ...

    def update_run(self, run_id: str, *, state: RunState | str | None = None,
                   expected_state: RunState | str | None = None, claimed_by: str | None = None,
                   version: int | None = None, progress: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None, result: Mapping[str, Any] | None = None,
                   error: str | None = None, idempotency_key: str | None = None) -> Run:
        """Record progress (a heartbeat too) and/or move the run along :data:`RUN_TRANSITIONS`."""
        ...

    def cancel_run(self, run_id: str, *, idempotency_key: str | None = None) -> Run:
        """QUEUED -> CANCELLED at once; RUNNING: ``cancel_requested`` is set for the scheduler."""
        ...

    def get_run(self, run_id: str) -> Run: ...

    def list_runs(self, *, state: RunState | str | None = None, model: str | None = None,
                  limit: int = 100) -> list[Run]:
        """Runs, newest first (QUEUED ones carry their ``queue_position``)."""
        ...

    # -- catalog of datasets and feature sets -------------------------------------------------
    def catalog_register(self, kind: str, name: str, payload: Mapping[str, Any], *, tags: Iterable[str] = (),
                         idempotency_key: str | None = None) -> CatalogEntry: ...

    def catalog_update(self, kind: str, name: str, version: int, patch: Mapping[str, Any], *,
                       expected_updated_at: float | None = None, idempotency_key: str | None = None) -> CatalogEntry:
        """Shallow-merge ``patch`` into one version's payload; ``expected_updated_at``: the entry's
        ``updated_at`` must still be this value (compare-and-set), else ConflictError and nothing
        is written. Each update moves ``updated_at`` strictly forward."""
        ...

    def catalog_get(self, kind: str, name: str, version: int | None = None, *,
                    status: str | None = None) -> CatalogEntry:
        """One version; the latest when ``version`` is None, or the latest with payload ``status``."""
        ...

    def catalog_list(self, kind: str, *, prefix: str | None = None, tag: str | None = None,
                     latest_only: bool = True) -> list[CatalogEntry]: ...

    # -- events -------------------------------------------------------------------------------
    def append_event(self, kind: str, subject: str, payload: Mapping[str, Any] | None = None, *,
                     version: int | None = None, expected_seq: int | None = None,
                     idempotency_key: str | None = None) -> Event:
        """Append a custom event; ``expected_seq``: the log must end at this seq, else ConflictError."""
        ...

    def events_since(self, seq: int = 0, *, limit: int = 1000, subject: str | None = None,
                     kinds: Iterable[str] | str | None = None) -> list[Event]:
        """Events with seq > ``seq``, oldest first; seqs are gap-free and in commit order."""
        ...

    def last_seq(self) -> int: ...

    def get_cursor(self, consumer: str) -> int | None: ...

    def set_cursor(self, consumer: str, seq: int, *, idempotency_key: str | None = None) -> int: ...

    # -- batches and the backend --------------------------------------------------------------
    def batch(self, calls: Iterable[BatchCall], *, idempotency_key: str | None = None) -> list[Any]:
        """Several write or read calls in ONE transaction: all apply or none."""
        ...

    def read_batch(self, calls: Iterable[BatchCall]) -> list[Any]:
        """Several read calls against one consistent snapshot."""
        ...

    def backend_url(self) -> str:
        """The database this registry runs on (``sqlite:///...`` / ``postgresql://...``, no password)."""
        ...


class RegistryCall:
    """One method of :class:`Registry`: its name, signature and whether it writes."""

    __slots__ = ("name", "signature", "writes")

    def __init__(self, name: str, signature: inspect.Signature):
        self.name, self.signature = name, signature
        self.writes = "idempotency_key" in signature.parameters

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments as keywords (TypeError for a wrong call, as a direct call gives)."""
        bound = self.signature.bind(None, *args, **kwargs)
        bound.apply_defaults()
        out = dict(bound.arguments)
        out.pop("self")
        return out


def _calls() -> dict[str, RegistryCall]:
    out = {}
    for name, fn in vars(Registry).items():
        if not name.startswith("_") and inspect.isfunction(fn):
            out[name] = RegistryCall(name, inspect.signature(fn))
    return out


#: Every registry call by name: what the actor serves and the actor transport forwards.
REGISTRY_CALLS: dict[str, RegistryCall] = _calls()
