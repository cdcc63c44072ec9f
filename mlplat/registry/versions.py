"""Models, their versions, version states and the human approval of a version."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mlplat.errors import AlreadyExists, ConflictError, InvalidTransition, NotFound, StorageError, ValidationError
from mlplat.names import validate_name
from mlplat.records import (
    Approval,
    ApprovalState,
    ArtifactRef,
    DatasetRef,
    FeatureSetRef,
    ModelInfo,
    ModelState,
    ModelVersion,
    check_approval,
    check_transition,
)
from mlplat.registry.backends import Row
from mlplat.registry.codec import dumps_json, int_version, loads_json, model_state, parse_tags, validate_alias
from mlplat.registry.events import emit
from mlplat.registry.tx import StoreCore, Tx, payload_dict, reads, writes

__all__ = ["VersionsPart", "version_row", "model_row", "version_record", "set_state", "alias_version", "name_and_tag_filters",
           "read_versions_ahead"]

_MODEL_SELECT = "SELECT m.*, (SELECT MAX(v.version) FROM versions v WHERE v.model = m.name) AS latest_version FROM models m"


def name_and_tag_filters(tx: Tx, table: str, prefix: str | None, tag: str | None) -> tuple[list[str], list[Any]]:
    """SQL conditions for "name starts with prefix" and "tags contain tag" on ``table``."""
    where: list[str] = []
    params: list[Any] = []
    if prefix:
        where.append(f"substr({table}.name, 1, ?) = ?")
        params += [len(prefix), prefix]
    if tag:
        where.append(tx.dialect.json_array_contains(f"{table}.tags"))
        params.append(tag)
    return where, params


def model_row(tx: Tx, name: str) -> Row:
    row = tx.one(_MODEL_SELECT + " WHERE m.name=?", (name,))
    if row is None:
        raise NotFound(f"model {name!r} is not registered; list models with `mlplat models list`")
    return row


def version_row(tx: Tx, name: str, version: int) -> Row:
    row = tx.snapshot_versions.get((name, version)) or tx.one("SELECT * FROM versions WHERE model=? AND version=?",
                                                              (name, version))
    if row is None:
        model_row(tx, name)
        raise NotFound(f"model {name!r} has no version {version}; list them with `mlplat models versions {name}`")
    return row


def version_record(row: Row) -> ModelVersion:
    return ModelVersion(
        name=row["model"], version=row["version"], state=ModelState(row["state"]),
        created_at=row["created_at"], updated_at=row["updated_at"], config_hash=row["config_hash"],
        code_version=row["code_version"], metrics=loads_json(row["metrics"], {}), artifacts=loads_json(row["artifacts"], {}),
        datasets=tuple(loads_json(row["datasets"], [])), feature_set=loads_json(row["feature_set"]),
        run_id=row["run_id"], error=row["error"], extra=loads_json(row["extra"], {}),
        approval=Approval(state=ApprovalState(row["approval_state"]), by=row["approval_by"], note=row["approval_note"],
                          at=row["approval_at"]),
    )


def _model_record(row: Row) -> ModelInfo:
    return ModelInfo(
        name=row["name"], description=row["description"], owner=row["owner"], tags=tuple(loads_json(row["tags"], [])),
        task_type=row["task_type"], serving_policy=loads_json(row["serving_policy"], {}), created_at=row["created_at"],
        updated_at=row["updated_at"], latest_version=row["latest_version"] or 0,
    )


def alias_version(tx: Tx, name: str, alias: str) -> int | None:
    """The version ``alias`` points at (None when unset)."""
    row = tx.one("SELECT version FROM aliases WHERE model=? AND alias=?", (name, validate_alias(alias)))
    return None if row is None else int(row["version"])


def read_versions_ahead(tx: Tx, refs: list[tuple[str, int]]) -> None:
    """Fetch many version rows in one query (one round trip) into the transaction's snapshot."""
    wanted = sorted(set(refs))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        pairs = ", ".join("(?, ?)" for _ in chunk)
        for row in tx.all(f"SELECT * FROM versions WHERE (model, version) IN (VALUES {pairs})",
                          [x for ref in chunk for x in ref]):
            tx.snapshot_versions[(row["model"], int(row["version"]))] = row


def set_state(tx: Tx, name: str, version: int, current: ModelState, target: ModelState | str, **fields: Any) -> ModelState:
    """Move a version's state after checking the transition table; extra columns in ``fields``."""
    new = check_transition(current, model_state(target))
    cols = {"state": new.value, "updated_at": tx.now, **fields}
    tx.execute(f"UPDATE versions SET {', '.join(f'{k}=?' for k in cols)} WHERE model=? AND version=?",
               (*cols.values(), name, version))
    return new


def _check_expected_state(name: str, version: int, current: ModelState, expected: ModelState | str | None) -> None:
    if expected is not None and model_state(expected, "expected_state") != current:
        raise ConflictError(f"{name} v{version} is {current.value}, not the expected {model_state(expected).value}: "
                            "somebody changed it first; re-read it and retry")


def _insert_model(tx: Tx, name: str, description: str, owner: str, tags: tuple[str, ...], task_type: str | None,
                  serving_policy: Mapping[str, Any] | None) -> None:
    policy = payload_dict(serving_policy, "serving_policy")
    tx.execute("INSERT INTO models(name, description, owner, tags, task_type, serving_policy, created_at, updated_at) "
               "VALUES (?,?,?,?,?,?,?,?)",
               (name, str(description), str(owner), dumps_json(list(tags)), task_type,
                dumps_json(policy, "serving_policy"), tx.now, tx.now))
    emit(tx, "model_created", f"model:{name}", None, {"tags": list(tags), "task_type": task_type})


def _artifacts(name: str, artifacts: Mapping[str, Any] | None, version: int | None = None) -> dict[str, Any]:
    try:
        return {k: ArtifactRef.model_validate(v).model_dump(mode="json") for k, v in dict(artifacts or {}).items()}
    except Exception as exc:  # pydantic's error -> ours, naming the version
        where = f"{name} v{version}" if version else f"model {name!r}"
        raise ValidationError(f"invalid artifacts for {where}: {exc}") from None


class VersionsPart(StoreCore):
    # -- models -------------------------------------------------------------------------------
    @writes
    def create_model(self, tx: Tx, name: str, *, description: str = "", owner: str = "", tags: Iterable[str] = (),
                     task_type: str | None = None, serving_policy: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> ModelInfo:
        validate_name(name, "model name")
        if tx.one("SELECT 1 AS x FROM models WHERE name=?", (name,)):
            raise AlreadyExists(f"model {name!r} exists already; use update_model() to change it")
        _insert_model(tx, name, description, owner, parse_tags(tags), task_type, serving_policy)
        return _model_record(model_row(tx, name))

    @writes
    def update_model(self, tx: Tx, name: str, *, description: str | None = None, owner: str | None = None,
                     tags: Iterable[str] | None = None, task_type: str | None = None,
                     serving_policy: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelInfo:
        validate_name(name, "model name")
        model_row(tx, name)
        changes: dict[str, Any] = {}
        if description is not None:
            changes["description"] = str(description)
        if owner is not None:
            changes["owner"] = str(owner)
        if tags is not None:
            changes["tags"] = dumps_json(list(parse_tags(tags)))
        if task_type is not None:
            changes["task_type"] = task_type
        if serving_policy is not None:
            changes["serving_policy"] = dumps_json(payload_dict(serving_policy, "serving_policy"), "serving_policy")
        if changes:
            tx.execute(f"UPDATE models SET {', '.join(f'{k}=?' for k in changes)}, updated_at=? WHERE name=?",
                       (*changes.values(), tx.now, name))
            emit(tx, "model_updated", f"model:{name}", None, {"changed": sorted(changes)})
        return _model_record(model_row(tx, name))

    @reads
    def get_model(self, tx: Tx, name: str) -> ModelInfo:
        validate_name(name, "model name")
        return _model_record(model_row(tx, name))

    @reads
    def list_models(self, tx: Tx, *, prefix: str | None = None, tag: str | None = None,
                    state: ModelState | str | None = None) -> list[ModelInfo]:
        where, params = name_and_tag_filters(tx, "m", prefix, tag)
        if state is not None:
            where.append("EXISTS (SELECT 1 FROM versions v WHERE v.model = m.name AND v.state = ?)")
            params.append(model_state(state).value)
        sql = _MODEL_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.name"
        return [_model_record(r) for r in tx.all(sql, params)]

    # -- versions -----------------------------------------------------------------------------
    @writes
    def register_version(self, tx: Tx, name: str, *, config_hash: str | None = None, code_version: str | None = None,
                         datasets: Iterable[DatasetRef | Mapping[str, Any]] = (),
                         feature_set: FeatureSetRef | Mapping[str, Any] | None = None, run_id: str | None = None,
                         extra: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
                         metrics: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        if name not in tx.known_models and not tx.one("SELECT 1 AS x FROM models WHERE name=?", (name,)):
            _insert_model(tx, name, "", "", (), None, None)
        tx.known_models.add(name)
        try:
            dataset_refs = [DatasetRef.model_validate(d).model_dump(mode="json") for d in datasets]
            fs_ref = None if feature_set is None else FeatureSetRef.model_validate(feature_set).model_dump(mode="json")
        except Exception as exc:  # pydantic's error -> ours
            raise ValidationError(f"invalid lineage for model {name!r}: {exc}") from None
        arts = _artifacts(name, artifacts)
        for d in dataset_refs:
            validate_name(d["name"], "dataset name")
        if fs_ref:
            validate_name(fs_ref["name"], "feature-set name")
        # One statement: the next number, the row, and the row back (RETURNING).
        row = tx.one(
            "INSERT INTO versions(model, version, state, created_at, updated_at, config_hash, code_version, metrics, "
            "artifacts, datasets, feature_set, run_id, error, extra) "
            "SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM versions WHERE model=? "
            "RETURNING *",
            (name, ModelState.REGISTERED.value, tx.now, tx.now, config_hash, code_version,
             dumps_json(payload_dict(metrics, "metrics"), "metrics"), dumps_json(arts), dumps_json(dataset_refs),
             dumps_json(fs_ref) if fs_ref else None, run_id, None, dumps_json(payload_dict(extra, "extra"), "extra"), name))
        if row is None:  # INSERT ... RETURNING always gives the row it inserted
            raise StorageError(f"registering a version of {name!r} returned no row; nothing was written")
        record = version_record(row)
        emit(tx, "version_registered", f"model:{name}", record.version,
             {"run_id": run_id, "datasets": dataset_refs, "feature_set": fs_ref, "artifacts": sorted(arts)})
        return record

    @reads
    def get_version(self, tx: Tx, name: str, version: int) -> ModelVersion:
        validate_name(name, "model name")
        return version_record(version_row(tx, name, int_version(version)))

    @reads
    def resolve(self, tx: Tx, name: str, ref: int | str) -> ModelVersion:
        validate_name(name, "model name")
        if isinstance(ref, str) and not ref.removeprefix("v").isdigit():
            found = alias_version(tx, name, ref)
            if found is None:
                model_row(tx, name)
                raise NotFound(f"model {name!r} has no alias {ref!r}; see `mlplat models show {name}`")
            ref = found
        return version_record(version_row(tx, name, int_version(ref)))

    @reads
    def list_versions(self, tx: Tx, name: str, *, state: ModelState | str | None = None) -> list[ModelVersion]:
        validate_name(name, "model name")
        model_row(tx, name)
        if state is None:
            rows = tx.all("SELECT * FROM versions WHERE model=? ORDER BY version", (name,))
        else:
            rows = tx.all("SELECT * FROM versions WHERE model=? AND state=? ORDER BY version", (name, model_state(state).value))
        return [version_record(r) for r in rows]

    @reads
    def find_versions(self, tx: Tx, *, state: ModelState | str, prefix: str | None = None) -> list[ModelVersion]:
        sql = "SELECT * FROM versions WHERE state=?"
        params: list[Any] = [model_state(state).value]
        if prefix:
            sql += " AND substr(model, 1, ?) = ?"
            params += [len(prefix), prefix]
        return [version_record(r) for r in tx.all(sql + " ORDER BY model, version", params)]

    @writes
    def transition(self, tx: Tx, name: str, version: int, state: ModelState | str, *,
                   expected_state: ModelState | str | None = None, error: str | None = None,
                   metrics: Mapping[str, Any] | None = None, require_approval: bool = False,
                   idempotency_key: str | None = None) -> ModelVersion:
        """This changes the state only; ``promote`` / ``rollback`` also move aliases."""
        validate_name(name, "model name")
        version = int_version(version)
        row = version_row(tx, name, version)
        current = ModelState(row["state"])
        _check_expected_state(name, version, current, expected_state)
        target = model_state(state)
        approval = ApprovalState(row["approval_state"])
        if target in (ModelState.CANARY, ModelState.PRODUCTION) and approval in (ApprovalState.PENDING, ApprovalState.REJECTED):
            raise InvalidTransition(f"{name} v{version} cannot take traffic: approval is {approval.value}; "
                                    f"a reviewer must approve it first: `mlplat models approve {name} {version}`")
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = str(error)
        if metrics:
            fields["metrics"] = dumps_json({**loads_json(row["metrics"], {}), **payload_dict(metrics, "metrics")}, "metrics")
        if require_approval:
            if target != ModelState.VALIDATED:
                raise ValidationError(f"require_approval applies to a move to VALIDATED, not to {target.value}")
            fields["approval_state"] = check_approval(row["approval_state"], ApprovalState.PENDING).value
        new = set_state(tx, name, version, current, target, **fields)
        payload: dict[str, Any] = {"from": current.value, "to": new.value}
        if error is not None:
            payload["error"] = str(error)
        if require_approval:
            payload["approval"] = ApprovalState.PENDING.value
        emit(tx, "state_changed", f"model:{name}", version, payload)
        return version_record(version_row(tx, name, version))

    @writes
    def update_version(self, tx: Tx, name: str, version: int, *, metrics: Mapping[str, Any] | None = None,
                       artifacts: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                       expected_state: ModelState | str | None = None,
                       idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        version = int_version(version)
        row = version_row(tx, name, version)
        _check_expected_state(name, version, ModelState(row["state"]), expected_state)
        sets: dict[str, str] = {}
        if metrics:
            sets["metrics"] = dumps_json({**loads_json(row["metrics"], {}), **payload_dict(metrics, "metrics")}, "metrics")
        if artifacts:
            sets["artifacts"] = dumps_json({**loads_json(row["artifacts"], {}), **_artifacts(name, artifacts, version)})
        if extra:
            sets["extra"] = dumps_json({**loads_json(row["extra"], {}), **payload_dict(extra, "extra")}, "extra")
        if sets:
            tx.execute(f"UPDATE versions SET {', '.join(f'{k}=?' for k in sets)}, updated_at=? WHERE model=? AND version=?",
                       (*sets.values(), tx.now, name, version))
            changed = {k: sorted(v) for k, v in (("metrics", metrics), ("artifacts", artifacts), ("extra", extra)) if v}
            emit(tx, "version_updated", f"model:{name}", version, changed)
        return version_record(version_row(tx, name, version))

    @writes
    def review(self, tx: Tx, name: str, version: int, verdict: ApprovalState | str, *, by: str, note: str = "",
               idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        version = int_version(version)
        if not isinstance(by, str) or not by.strip() or len(by) > 256:
            raise ValidationError(f"a review needs the reviewer's name in `by` (1-256 characters), got {by!r}")
        row = version_row(tx, name, version)
        current = ModelState(row["state"])
        try:
            target = check_approval(row["approval_state"], verdict)
        except InvalidTransition as exc:
            raise InvalidTransition(f"{name} v{version} ({current.value}, approval {row['approval_state']}): {exc}; "
                                    "only VALIDATED versions awaiting approval can be approved or rejected") from None
        if current != ModelState.VALIDATED:
            raise InvalidTransition(f"{name} v{version} is {current.value}: only VALIDATED versions awaiting approval "
                                    "can be approved or rejected")
        if target not in (ApprovalState.APPROVED, ApprovalState.REJECTED):
            raise ValidationError(f"a review's verdict is APPROVED or REJECTED, got {verdict!r}")
        fields: dict[str, Any] = {"approval_state": target.value, "approval_by": by.strip(), "approval_note": str(note),
                                  "approval_at": tx.now}
        payload: dict[str, Any] = {"approval": target.value, "by": by.strip(), "note": str(note)}
        if target == ApprovalState.REJECTED:
            reason = f"rejected by {by.strip()}" + (f": {note}" if note else "")
            set_state(tx, name, version, current, ModelState.REJECTED, error=reason, **fields)
            payload.update({"from": current.value, "to": ModelState.REJECTED.value})
        else:
            tx.execute(f"UPDATE versions SET {', '.join(f'{k}=?' for k in fields)}, updated_at=? WHERE model=? AND version=?",
                       (*fields.values(), tx.now, name, version))
        emit(tx, "version_reviewed", f"model:{name}", version, payload)
        return version_record(version_row(tx, name, version))
