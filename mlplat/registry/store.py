"""The registry's durable store: SQLite in WAL mode, one transaction per write.

:class:`RegistryStore` is the whole registry without Ray: the actor (``actor.py``) only
forwards calls to one instance of it, so unit tests and benchmarks use it directly.

Guarantees
- Every mutating call is one ``BEGIN IMMEDIATE ... COMMIT`` transaction that also appends its
  events and, when an ``idempotency_key`` is given, stores ``key -> result``: a retried call with
  the same key returns the first result and writes nothing again.
- ``synchronous=FULL`` by default: a call that returned survives a process kill and a power cut.
- Nothing lives only in memory: a new store on the same file sees everything.

Models, versions, states and aliases are here; the run queue (``runs.py``) and the catalog of
datasets and feature sets (``catalog.py``) are mixins whose methods get the same transaction
and read-lock wrappers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlplat.errors import (
    AlreadyExists,
    ConflictError,
    InvalidName,
    InvalidTransition,
    NotFound,
    StorageError,
    ValidationError,
)
from mlplat.names import validate_name
from mlplat.records import (
    ALIAS_CANARY,
    ALIAS_PREVIOUS,
    ALIAS_PRODUCTION,
    ArtifactRef,
    DatasetRef,
    Event,
    FeatureSetRef,
    ModelInfo,
    ModelState,
    ModelVersion,
    Record,
    check_transition,
)
from mlplat.registry.catalog import CATALOG_SCHEMA, CatalogStoreMixin
from mlplat.registry.runs import RUNS_SCHEMA, RunQueueStoreMixin
from mlplat.registry.sqlutil import dumps_json as _dumps
from mlplat.registry.sqlutil import int_version as _int_version
from mlplat.registry.sqlutil import name_and_tag_filters as _name_and_tag_filters
from mlplat.registry.sqlutil import parse_tags as _tags

__all__ = ["RegistryStore", "MUTATING_METHODS", "READ_METHODS", "validate_alias"]

_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}(\.[a-z][a-z0-9_-]{0,62})?$")
_EVENT_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,62}$")
_RECORD_TYPES: dict[str, type[Record]] = {"ModelVersion": ModelVersion, "Event": Event, "ModelInfo": ModelInfo}
#: Idempotency keys older than this are pruned (retries come within seconds, not days).
IDEMPOTENCY_TTL_S = 7 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, owner TEXT NOT NULL, tags TEXT NOT NULL,
    task_type TEXT, serving_policy TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL REFERENCES models(name), version INTEGER NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, config_hash TEXT, code_version TEXT,
    metrics TEXT NOT NULL, artifacts TEXT NOT NULL, datasets TEXT NOT NULL, feature_set TEXT,
    run_id TEXT, error TEXT, extra TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE INDEX IF NOT EXISTS versions_by_state ON versions(state, model);
CREATE TABLE IF NOT EXISTS aliases (
    model TEXT NOT NULL REFERENCES models(name), alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (model, alias));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    version INTEGER, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_subject ON events(subject, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, method TEXT NOT NULL, result TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at);
"""


# ----------------------------------------------------------------------------- helpers


def _encode(value: Any) -> Any:
    """A result as JSON, records tagged so :func:`_decode` rebuilds the same type."""
    if isinstance(value, Record):
        return {"__record__": type(value).__name__, "data": value.model_dump(mode="json")}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__record__", "data"} and value["__record__"] in _RECORD_TYPES:
            return _RECORD_TYPES[value["__record__"]].model_validate(value["data"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _state(value: ModelState | str, what: str = "state") -> ModelState:
    try:
        return ModelState(str(value).upper())
    except ValueError:
        valid = ", ".join(s.value for s in ModelState)
        raise ValidationError(f"unknown {what} {value!r}; states are: {valid}") from None


def validate_alias(alias: object) -> str:
    """Aliases are names, optionally with one ``.<region>`` part: ``production.eu-west``."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: expected a name like 'production', 'canary', 'previous' "
            "or 'production.<region>' (lowercase letters, digits, '_' or '-')"
        )
    return alias


def _mutation(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` in one transaction (or inside the caller's, in a batch), keyed by idempotency_key."""
    method = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: RegistryStore, *args: Any, **kwargs: Any) -> Any:
        key = kwargs.get("idempotency_key")
        with self._lock:
            if self._in_tx:
                return self._keyed(method, key, fn, args, kwargs)
            try:
                self._begin()
                try:
                    result = self._keyed(method, key, fn, args, kwargs)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                finally:
                    self._in_tx = False
            except sqlite3.OperationalError as exc:  # disk full, read-only file, locked too long
                raise StorageError(f"registry database {self.db_path!r}: {exc}; nothing was written") from None
            self._writes_since_prune += 1
            if self._writes_since_prune >= 10_000:
                self._prune_idempotency()
            return result

    wrapper.is_mutation = True  # type: ignore[attr-defined]
    return wrapper


def _read(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Reads take the lock too, so they never see another thread's open transaction."""

    @functools.wraps(fn)
    def wrapper(self: RegistryStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.OperationalError as exc:
                raise StorageError(f"registry database {self.db_path!r}: {exc}") from None

    wrapper.is_read = True  # type: ignore[attr-defined]
    return wrapper


# ----------------------------------------------------------------------------- the store


class RegistryStore(RunQueueStoreMixin, CatalogStoreMixin):
    """The registry over one SQLite file. Thread-safe; one writer at a time.

    >>> store = RegistryStore("/tmp/registry.db")  # doctest: +SKIP
    >>> store.register_version("churn").version  # doctest: +SKIP
    1
    """

    def __init__(self, db_path: str | os.PathLike[str], *, synchronous: str = "FULL"):
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValidationError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.db_path = str(db_path)
        self._lock = threading.RLock()
        self._in_tx = False
        self._writes_since_prune = 0
        try:
            if self.db_path != ":memory:":
                Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.row_factory = sqlite3.Row
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if self.db_path != ":memory:" and str(mode).lower() != "wal":
                raise StorageError(f"registry database {self.db_path!r} could not switch to WAL mode (got {mode!r})")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA + RUNS_SCHEMA + CATALOG_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"registry database {self.db_path!r} cannot be opened: {exc}") from None
        self._prune_idempotency()

    def __repr__(self) -> str:
        return f"RegistryStore({self.db_path!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- transaction plumbing -------------------------------------------------------------

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_tx = True

    def _keyed(self, method: str, key: str | None, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > 256:
                raise ValidationError(f"invalid idempotency_key {key!r}: expected a non-empty string of at most 256 characters")
            row = self._conn.execute("SELECT method, result FROM idempotency WHERE key=?", (key,)).fetchone()
            if row is not None:
                if row["method"] != method:
                    raise ConflictError(
                        f"idempotency key {key!r} was already used for {row['method']}(), not {method}(); use a new key"
                    )
                return _decode(json.loads(row["result"]))
        result = fn(self, *args, **kwargs)
        if key is not None:
            self._conn.execute(
                "INSERT INTO idempotency(key, method, result, created_at) VALUES (?,?,?,?)",
                (key, method, _dumps(_encode(result), "result"), time.time()),
            )
        return result

    def _prune_idempotency(self) -> None:
        with self._lock:
            if self._in_tx:
                return
            self._conn.execute("DELETE FROM idempotency WHERE created_at < ?", (time.time() - IDEMPOTENCY_TTL_S,))
            self._writes_since_prune = 0

    def _emit(self, kind: str, subject: str, version: int | None = None, payload: Mapping[str, Any] | None = None) -> Event:
        ts = time.time()
        body = dict(payload or {})
        cur = self._conn.execute(
            "INSERT INTO events(ts, kind, subject, version, payload) VALUES (?,?,?,?,?)",
            (ts, kind, subject, version, _dumps(body, "event payload")),
        )
        return Event(seq=cur.lastrowid, ts=ts, kind=kind, subject=subject, version=version, payload=body)

    # -- row conversion ---------------------------------------------------------------------

    @staticmethod
    def _version_record(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            name=row["model"],
            version=row["version"],
            state=ModelState(row["state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            config_hash=row["config_hash"],
            code_version=row["code_version"],
            metrics=json.loads(row["metrics"]),
            artifacts=json.loads(row["artifacts"]),
            datasets=tuple(json.loads(row["datasets"])),
            feature_set=json.loads(row["feature_set"]) if row["feature_set"] else None,
            run_id=row["run_id"],
            error=row["error"],
            extra=json.loads(row["extra"]),
        )

    @staticmethod
    def _model_record(row: sqlite3.Row) -> ModelInfo:
        return ModelInfo(
            name=row["name"],
            description=row["description"],
            owner=row["owner"],
            tags=tuple(json.loads(row["tags"])),
            task_type=row["task_type"],
            serving_policy=json.loads(row["serving_policy"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            latest_version=row["latest_version"] or 0,
        )

    _MODEL_SELECT = (
        "SELECT m.*, (SELECT MAX(v.version) FROM versions v WHERE v.model = m.name) AS latest_version FROM models m"
    )

    def _model_row(self, name: str) -> sqlite3.Row:
        row = self._conn.execute(self._MODEL_SELECT + " WHERE m.name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} is not registered; list models with `mlplat models list`")
        return row

    def _version_row(self, name: str, version: int) -> sqlite3.Row:
        row = self._conn.execute("SELECT * FROM versions WHERE model=? AND version=?", (name, version)).fetchone()
        if row is None:
            self._model_row(name)
            raise NotFound(f"model {name!r} has no version {version}; list them with `mlplat models versions {name}`")
        return row

    def _alias_version(self, name: str, alias: str) -> int | None:
        row = self._conn.execute("SELECT version FROM aliases WHERE model=? AND alias=?", (name, alias)).fetchone()
        return None if row is None else row["version"]

    def _put_alias(self, name: str, alias: str, version: int | None) -> None:
        if version is None:
            self._conn.execute("DELETE FROM aliases WHERE model=? AND alias=?", (name, alias))
        else:
            self._conn.execute(
                "INSERT INTO aliases(model, alias, version, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(model, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
                (name, alias, version, time.time()),
            )

    def _set_state(self, name: str, version: int, current: ModelState, target: ModelState | str, **fields: Any) -> ModelState:
        new = check_transition(current, str(target).upper())
        sets = ["state=?", "updated_at=?"] + [f"{k}=?" for k in fields]
        self._conn.execute(
            f"UPDATE versions SET {', '.join(sets)} WHERE model=? AND version=?",
            (new.value, time.time(), *fields.values(), name, version),
        )
        return new

    def _insert_model(self, name: str, description: str, owner: str, tags: tuple[str, ...], task_type: str | None,
                      serving_policy: Mapping[str, Any] | None) -> None:
        if serving_policy is not None and not isinstance(serving_policy, Mapping):
            raise ValidationError(f"serving_policy must be a dict, got {type(serving_policy).__name__}")
        now = time.time()
        self._conn.execute(
            "INSERT INTO models(name, description, owner, tags, task_type, serving_policy, created_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (name, str(description), str(owner), _dumps(list(tags)), task_type,
             _dumps(dict(serving_policy or {}), "serving_policy"), now, now),
        )
        self._emit("model_created", f"model:{name}", None, {"tags": list(tags), "task_type": task_type})

    # -- models ---------------------------------------------------------------------------------

    @_mutation
    def create_model(self, name: str, *, description: str = "", owner: str = "", tags: Iterable[str] = (),
                     task_type: str | None = None, serving_policy: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> ModelInfo:
        """Create a model; :class:`AlreadyExists` if the name is taken."""
        validate_name(name, "model name")
        if self._conn.execute("SELECT 1 FROM models WHERE name=?", (name,)).fetchone():
            raise AlreadyExists(f"model {name!r} exists already; use update_model() to change it")
        self._insert_model(name, description, owner, _tags(tags), task_type, serving_policy)
        return self._model_record(self._model_row(name))

    @_mutation
    def update_model(self, name: str, *, description: str | None = None, owner: str | None = None,
                     tags: Iterable[str] | None = None, task_type: str | None = None,
                     serving_policy: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelInfo:
        """Change a model's descriptive fields; ``serving_policy`` replaces the old one."""
        validate_name(name, "model name")
        self._model_row(name)
        changes: dict[str, Any] = {}
        if description is not None:
            changes["description"] = str(description)
        if owner is not None:
            changes["owner"] = str(owner)
        if tags is not None:
            changes["tags"] = list(_tags(tags))
        if task_type is not None:
            changes["task_type"] = task_type
        if serving_policy is not None:
            if not isinstance(serving_policy, Mapping):
                raise ValidationError(f"serving_policy must be a dict, got {type(serving_policy).__name__}")
            changes["serving_policy"] = dict(serving_policy)
        if changes:
            cols = {k: (_dumps(v) if k in ("tags", "serving_policy") else v) for k, v in changes.items()}
            self._conn.execute(
                f"UPDATE models SET {', '.join(f'{k}=?' for k in cols)}, updated_at=? WHERE name=?",
                (*cols.values(), time.time(), name),
            )
            self._emit("model_updated", f"model:{name}", None, {"changed": sorted(changes)})
        return self._model_record(self._model_row(name))

    @_read
    def get_model(self, name: str) -> ModelInfo:
        validate_name(name, "model name")
        return self._model_record(self._model_row(name))

    @_read
    def list_models(self, *, prefix: str | None = None, tag: str | None = None,
                    state: ModelState | str | None = None) -> list[ModelInfo]:
        """Models by name prefix, tag, and/or the state of any of their versions."""
        where, params = _name_and_tag_filters("m", prefix, tag)
        if state is not None:
            where.append("EXISTS (SELECT 1 FROM versions v WHERE v.model = m.name AND v.state = ?)")
            params.append(_state(state).value)
        sql = self._MODEL_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.name"
        return [self._model_record(r) for r in self._conn.execute(sql, params)]

    # -- versions -------------------------------------------------------------------------------

    @_mutation
    def register_version(self, name: str, *, config_hash: str | None = None, code_version: str | None = None,
                         datasets: Iterable[DatasetRef | Mapping[str, Any]] = (),
                         feature_set: FeatureSetRef | Mapping[str, Any] | None = None, run_id: str | None = None,
                         extra: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
                         metrics: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelVersion:
        """Add the next version of ``name`` (creating the model if missing) in state REGISTERED.

        ``artifacts`` and ``metrics`` may be given here so a version and its files are
        registered in one transaction (absent or complete, never half).
        """
        validate_name(name, "model name")
        if not self._conn.execute("SELECT 1 FROM models WHERE name=?", (name,)).fetchone():
            self._insert_model(name, "", "", (), None, None)
        try:
            dataset_refs = [DatasetRef.model_validate(d).model_dump(mode="json") for d in datasets]
            fs_ref = None if feature_set is None else FeatureSetRef.model_validate(feature_set).model_dump(mode="json")
            arts = {k: ArtifactRef.model_validate(v).model_dump(mode="json") for k, v in dict(artifacts or {}).items()}
        except Exception as exc:  # pydantic.ValidationError -> our ValidationError
            raise ValidationError(f"invalid lineage or artifacts for model {name!r}: {exc}") from None
        for d in dataset_refs:
            validate_name(d["name"], "dataset name")
        if fs_ref:
            validate_name(fs_ref["name"], "feature-set name")
        row = self._conn.execute("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM versions WHERE model=?", (name,)).fetchone()
        version, now = row["v"], time.time()
        self._conn.execute(
            "INSERT INTO versions(model, version, state, created_at, updated_at, config_hash, code_version, metrics, "
            "artifacts, datasets, feature_set, run_id, error, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (name, version, ModelState.REGISTERED.value, now, now, config_hash, code_version,
             _dumps(dict(metrics or {}), "metrics"), _dumps(arts), _dumps(dataset_refs),
             _dumps(fs_ref) if fs_ref else None, run_id, None, _dumps(dict(extra or {}), "extra")),
        )
        self._emit("version_registered", f"model:{name}", version,
                   {"run_id": run_id, "datasets": dataset_refs, "feature_set": fs_ref, "artifacts": sorted(arts)})
        return self._version_record(self._version_row(name, version))

    @_read
    def get_version(self, name: str, version: int) -> ModelVersion:
        validate_name(name, "model name")
        return self._version_record(self._version_row(name, _int_version(version)))

    @_read
    def resolve(self, name: str, ref: int | str) -> ModelVersion:
        """A version by number (``3``, ``"v3"``) or by alias (``"production"``)."""
        validate_name(name, "model name")
        if isinstance(ref, str) and not ref.removeprefix("v").isdigit():
            version = self._alias_version(name, validate_alias(ref))
            if version is None:
                self._model_row(name)
                raise NotFound(f"model {name!r} has no alias {ref!r}; see `mlplat models show {name}`")
            ref = version
        return self.get_version(name, ref)

    @_read
    def list_versions(self, name: str, *, state: ModelState | str | None = None) -> list[ModelVersion]:
        validate_name(name, "model name")
        self._model_row(name)
        if state is None:
            rows = self._conn.execute("SELECT * FROM versions WHERE model=? ORDER BY version", (name,))
        else:
            rows = self._conn.execute("SELECT * FROM versions WHERE model=? AND state=? ORDER BY version",
                                      (name, _state(state).value))
        return [self._version_record(r) for r in rows]

    @_read
    def find_versions(self, *, state: ModelState | str, prefix: str | None = None) -> list[ModelVersion]:
        """Versions of every model in ``state`` (e.g. all CANARY versions), by model then version."""
        sql, params = "SELECT * FROM versions WHERE state=?", [_state(state).value]
        if prefix:
            sql += " AND substr(model, 1, ?) = ?"
            params += [len(prefix), prefix]
        return [self._version_record(r) for r in self._conn.execute(sql + " ORDER BY model, version", params)]

    def _check_expected_state(self, name: str, version: int, current: ModelState, expected: ModelState | str | None) -> None:
        if expected is not None and _state(expected, "expected_state") != current:
            raise ConflictError(
                f"{name} v{version} is {current.value}, not the expected {_state(expected).value}: "
                "somebody changed it first; re-read it and retry"
            )

    @_mutation
    def transition(self, name: str, version: int, state: ModelState | str, *, expected_state: ModelState | str | None = None,
                   error: str | None = None, metrics: Mapping[str, Any] | None = None,
                   idempotency_key: str | None = None) -> ModelVersion:
        """Move a version to ``state`` (InvalidTransition if the state machine forbids it).

        This changes the state only; :meth:`promote` / :meth:`rollback` also move aliases.
        """
        validate_name(name, "model name")
        version = _int_version(version)
        row = self._version_row(name, version)
        current = ModelState(row["state"])
        self._check_expected_state(name, version, current, expected_state)
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = str(error)
        if metrics:
            fields["metrics"] = _dumps({**json.loads(row["metrics"]), **dict(metrics)}, "metrics")
        new = self._set_state(name, version, current, state, **fields)
        payload: dict[str, Any] = {"from": current.value, "to": new.value}
        if error is not None:
            payload["error"] = str(error)
        self._emit("state_changed", f"model:{name}", version, payload)
        return self._version_record(self._version_row(name, version))

    @_mutation
    def update_version(self, name: str, version: int, *, metrics: Mapping[str, Any] | None = None,
                       artifacts: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                       expected_state: ModelState | str | None = None, idempotency_key: str | None = None) -> ModelVersion:
        """Merge ``metrics`` / ``artifacts`` / ``extra`` into a version (top-level keys)."""
        validate_name(name, "model name")
        version = _int_version(version)
        row = self._version_row(name, version)
        self._check_expected_state(name, version, ModelState(row["state"]), expected_state)
        sets: dict[str, str] = {}
        if metrics:
            sets["metrics"] = _dumps({**json.loads(row["metrics"]), **dict(metrics)}, "metrics")
        if artifacts:
            try:
                arts = {k: ArtifactRef.model_validate(v).model_dump(mode="json") for k, v in dict(artifacts).items()}
            except Exception as exc:
                raise ValidationError(f"invalid artifacts for {name} v{version}: {exc}") from None
            sets["artifacts"] = _dumps({**json.loads(row["artifacts"]), **arts})
        if extra:
            sets["extra"] = _dumps({**json.loads(row["extra"]), **dict(extra)}, "extra")
        if sets:
            self._conn.execute(
                f"UPDATE versions SET {', '.join(f'{k}=?' for k in sets)}, updated_at=? WHERE model=? AND version=?",
                (*sets.values(), time.time(), name, version),
            )
            changed = {k: sorted(v) for k, v in (("metrics", metrics), ("artifacts", artifacts), ("extra", extra)) if v}
            self._emit("version_updated", f"model:{name}", version, changed)
        return self._version_record(self._version_row(name, version))

    # -- aliases ---------------------------------------------------------------------------------

    @_mutation
    def set_alias(self, name: str, alias: str, version: int, *, expected_version: int | None = None,
                  idempotency_key: str | None = None) -> int:
        """Point ``alias`` at ``version`` atomically; returns the version it now points at.

        ``expected_version``: the version the alias must point at now (0 = must be unset), else
        :class:`ConflictError`. ``production*`` and ``canary*`` aliases only point at servable
        versions (CANARY or PRODUCTION).
        """
        validate_name(name, "model name")
        validate_alias(alias)
        version = _int_version(version)
        state = ModelState(self._version_row(name, version)["state"])
        if alias.split(".")[0] in (ALIAS_PRODUCTION, ALIAS_CANARY) and not state.is_servable:
            raise ConflictError(
                f"alias {alias!r} of {name!r} may only point at a CANARY or PRODUCTION version; v{version} is {state.value} "
                f"(use `mlplat models promote {name} {version}` to promote it)"
            )
        current = self._alias_version(name, alias)
        self._check_expected_alias(name, alias, current, expected_version)
        if current != version:
            self._put_alias(name, alias, version)
            self._emit("alias_moved", f"model:{name}", version, {"alias": alias, "from": current, "to": version})
        return version

    @_mutation
    def delete_alias(self, name: str, alias: str, *, expected_version: int | None = None,
                     idempotency_key: str | None = None) -> int | None:
        """Remove an alias; returns the version it pointed at (None if it was unset)."""
        validate_name(name, "model name")
        validate_alias(alias)
        self._model_row(name)
        current = self._alias_version(name, alias)
        self._check_expected_alias(name, alias, current, expected_version)
        if current is not None:
            self._put_alias(name, alias, None)
            self._emit("alias_removed", f"model:{name}", current, {"alias": alias, "from": current, "to": None})
        return current

    @staticmethod
    def _check_expected_alias(name: str, alias: str, current: int | None, expected: int | None) -> None:
        if expected is not None and (current or 0) != int(expected):
            now = f"v{current}" if current else "unset"
            want = f"v{expected}" if expected else "unset"
            raise ConflictError(f"alias {name}:{alias} is {now}, not the expected {want}: somebody moved it first; re-read and retry")

    @_read
    def get_alias(self, name: str, alias: str) -> int | None:
        validate_name(name, "model name")
        validate_alias(alias)
        self._model_row(name)
        return self._alias_version(name, alias)

    @_read
    def aliases(self, name: str) -> dict[str, int]:
        validate_name(name, "model name")
        self._model_row(name)
        rows = self._conn.execute("SELECT alias, version FROM aliases WHERE model=? ORDER BY alias", (name,))
        return {r["alias"]: r["version"] for r in rows}

    @_mutation
    def promote(self, name: str, version: int, *, expected_production: int | None = None,
                idempotency_key: str | None = None) -> ModelVersion:
        """Make ``version`` the production version, in one transaction with one ``promoted`` event.

        The old production version becomes ARCHIVED and ``previous`` points at it; ``production``
        points at ``version``; a ``canary`` alias on ``version`` is removed.
        ``expected_production``: the version ``production`` must point at now (0 = unset).
        """
        validate_name(name, "model name")
        version = _int_version(version)
        row = self._version_row(name, version)
        target = ModelState(row["state"])
        old = self._alias_version(name, ALIAS_PRODUCTION)
        self._check_expected_alias(name, ALIAS_PRODUCTION, old, expected_production)
        check_transition(target, ModelState.PRODUCTION)
        # A human gate (validation's require_approval) lives in extra.approval: the state
        # machine has no VALIDATED -> REJECTED move for a reviewer's "no", so it is held here.
        approval = json.loads(row["extra"]).get("approval")
        if approval in ("pending", "rejected"):
            hint = f"`mlplat approve {name} {version}` first" if approval == "pending" else "a reviewer rejected it"
            raise InvalidTransition(f"{name} v{version} cannot be promoted: approval is {approval!r}; {hint}")
        transitions, alias_moves = [], {}
        if old is not None and old != version:
            old_state = ModelState(self._version_row(name, old)["state"])
            if old_state == ModelState.PRODUCTION:
                self._set_state(name, old, old_state, ModelState.ARCHIVED)
                transitions.append({"version": old, "from": old_state.value, "to": ModelState.ARCHIVED.value})
            prev = self._alias_version(name, ALIAS_PREVIOUS)
            self._put_alias(name, ALIAS_PREVIOUS, old)
            alias_moves[ALIAS_PREVIOUS] = [prev, old]
        self._set_state(name, version, target, ModelState.PRODUCTION)
        transitions.append({"version": version, "from": target.value, "to": ModelState.PRODUCTION.value})
        self._put_alias(name, ALIAS_PRODUCTION, version)
        alias_moves[ALIAS_PRODUCTION] = [old, version]
        if self._alias_version(name, ALIAS_CANARY) == version:
            self._put_alias(name, ALIAS_CANARY, None)
            alias_moves[ALIAS_CANARY] = [version, None]
        self._emit("promoted", f"model:{name}", version,
                   {"previous": old, "transitions": transitions, "aliases": alias_moves})
        return self._version_record(self._version_row(name, version))

    @_mutation
    def rollback(self, name: str, *, expected_production: int | None = None, idempotency_key: str | None = None) -> ModelVersion:
        """Swap back: production -> ARCHIVED, ``previous`` -> PRODUCTION, aliases swapped; one event."""
        validate_name(name, "model name")
        self._model_row(name)
        current = self._alias_version(name, ALIAS_PRODUCTION)
        self._check_expected_alias(name, ALIAS_PRODUCTION, current, expected_production)
        prev = self._alias_version(name, ALIAS_PREVIOUS)
        if current is None or prev is None:
            missing = ALIAS_PRODUCTION if current is None else ALIAS_PREVIOUS
            raise NotFound(f"cannot roll back {name!r}: it has no {missing!r} alias")
        cur_state = ModelState(self._version_row(name, current)["state"])
        prev_state = ModelState(self._version_row(name, prev)["state"])
        check_transition(prev_state, ModelState.PRODUCTION)  # previous must be ARCHIVED
        transitions = []
        if cur_state != ModelState.ARCHIVED:
            self._set_state(name, current, cur_state, ModelState.ARCHIVED)
            transitions.append({"version": current, "from": cur_state.value, "to": ModelState.ARCHIVED.value})
        self._set_state(name, prev, prev_state, ModelState.PRODUCTION)
        transitions.append({"version": prev, "from": prev_state.value, "to": ModelState.PRODUCTION.value})
        self._put_alias(name, ALIAS_PRODUCTION, prev)
        self._put_alias(name, ALIAS_PREVIOUS, current)
        self._emit("rolled_back", f"model:{name}", prev, {
            "from_version": current, "to_version": prev, "transitions": transitions,
            "aliases": {ALIAS_PRODUCTION: [current, prev], ALIAS_PREVIOUS: [prev, current]},
        })
        return self._version_record(self._version_row(name, prev))

    # -- events ---------------------------------------------------------------------------------

    @_mutation
    def append_event(self, kind: str, subject: str, payload: Mapping[str, Any] | None = None, *,
                     version: int | None = None, expected_seq: int | None = None,
                     idempotency_key: str | None = None) -> Event:
        """Append a custom event. ``expected_seq``: the log's last seq must be this, else ConflictError."""
        if not isinstance(kind, str) or not _EVENT_KIND.fullmatch(kind):
            raise ValidationError(f"invalid event kind {kind!r}: expected lowercase letters, digits, '_' or '.'")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise ValidationError(f"invalid event subject {subject!r}: expected e.g. 'model:churn' (1-256 characters)")
        if payload is not None and not isinstance(payload, Mapping):
            raise ValidationError(f"event payload must be a dict, got {type(payload).__name__}")
        if expected_seq is not None and self._last_seq() != int(expected_seq):
            raise ConflictError(f"event log is at seq {self._last_seq()}, not the expected {expected_seq}: re-read and retry")
        return self._emit(kind, subject, None if version is None else _int_version(version), payload)

    def _last_seq(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        return 0 if row is None else int(row[0])

    @_read
    def last_seq(self) -> int:
        """The highest sequence number ever assigned (0 for an empty log)."""
        return self._last_seq()

    @_read
    def events_since(self, seq: int = 0, *, limit: int = 1000, subject: str | None = None,
                     kinds: Iterable[str] | str | None = None) -> list[Event]:
        """Events with sequence number > ``seq``, oldest first, at most ``limit``."""
        where, params = ["seq > ?"], [int(seq)]
        if subject:
            where.append("subject = ?")
            params.append(subject)
        if kinds:
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params += kinds
        rows = self._conn.execute(
            f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", (*params, max(0, int(limit))))
        return [Event(seq=r["seq"], ts=r["ts"], kind=r["kind"], subject=r["subject"], version=r["version"],
                      payload=json.loads(r["payload"])) for r in rows]

    # -- batching -------------------------------------------------------------------------------

    @_mutation
    def batch(self, calls: Iterable[tuple[str, Mapping[str, Any]]], *, idempotency_key: str | None = None) -> list[Any]:
        """Run several calls in ONE transaction; all apply or none. Returns each call's result.

        >>> store.batch([("register_version", {"name": "churn"}), ("append_event", {"kind": "x", "subject": "s"})])
        ... # doctest: +SKIP
        """
        results = []
        for i, call in enumerate(calls):
            try:
                method, kwargs = call
            except (TypeError, ValueError):
                raise ValidationError(f"batch call #{i} must be a (method, kwargs) pair, got {call!r}") from None
            if method not in MUTATING_METHODS and method not in READ_METHODS or method in ("batch", "read_batch"):
                raise ValidationError(f"batch call #{i}: unknown method {method!r}")
            results.append(getattr(self, method)(**dict(kwargs or {})))
        return results

    @_read
    def read_batch(self, calls: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Several read calls against one consistent snapshot; nothing is written."""
        calls = list(calls)
        for i, (method, _) in enumerate(calls):
            if method not in READ_METHODS or method == "read_batch":
                raise ValidationError(f"read_batch call #{i}: {method!r} is not a read method")
        own = not self._in_tx
        if own:
            self._conn.execute("BEGIN")
        try:
            return [getattr(self, method)(**dict(kwargs or {})) for method, kwargs in calls]
        finally:
            if own:
                self._conn.execute("COMMIT")

    def dispatch(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        """Call a public method by name (how the actor serves its one ``call`` entry point)."""
        if method not in MUTATING_METHODS and method not in READ_METHODS:
            raise ValidationError(f"unknown registry method {method!r}")
        return getattr(self, method)(**dict(kwargs))


# The run queue (mlplat.registry.runs) and the catalog (mlplat.registry.catalog): their methods
# get the same transaction / read-lock wrappers.
for _mixin in (RunQueueStoreMixin, CatalogStoreMixin):
    for _name, _fn in vars(_mixin).items():
        if getattr(_fn, "store_kind", None) == "write":
            setattr(RegistryStore, _name, _mutation(_fn))
        elif getattr(_fn, "store_kind", None) == "read":
            setattr(RegistryStore, _name, _read(_fn))

MUTATING_METHODS = frozenset(
    n for n, f in vars(RegistryStore).items() if callable(f) and getattr(f, "is_mutation", False)
)
READ_METHODS = frozenset(n for n, f in vars(RegistryStore).items() if callable(f) and getattr(f, "is_read", False))
