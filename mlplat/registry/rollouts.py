"""Promotion, rollback and deployments (blue-green and canary), globally or per region.

The rules for regions (docs/rollout.md):
- a region's ingress serves ``production.<region>`` when that alias exists, else ``production``;
- a regional promote or deploy moves only ``production.<region>`` (and ``previous.<region>``);
  version states describe the global lifecycle and do not change for a regional move;
- a promote or rollback *without* a region removes every ``production.<region>`` and
  ``previous.<region>`` alias in the same transaction: every region then serves the new global
  production, and no regional alias is left pointing at a version that was just archived.

A deployment row records each rollout: PREWARMING while replicas load and probe the version,
then LIVE (it is production) or CANARY (it takes a share of traffic) or FAILED (the version
moves to REJECTED; nothing else moved). One active deployment per model and region at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from mlplat.errors import ConflictError, InvalidName, InvalidTransition, NotFound, ValidationError
from mlplat.names import validate_name
from mlplat.records import (
    ALIAS_CANARY,
    ALIAS_PREVIOUS,
    ALIAS_PRODUCTION,
    Approval,
    ApprovalState,
    Deployment,
    DeploymentState,
    ModelState,
    ModelVersion,
    Traffic,
    allowed_transitions,
    canary_alias,
    check_deployment_transition,
    check_transition,
    previous_alias,
    production_alias,
)
from mlplat.registry.aliases import check_expected_alias, put_alias
from mlplat.registry.backends import Row
from mlplat.registry.codec import dumps_json, int_version, loads_json
from mlplat.registry.events import emit
from mlplat.registry.tx import StoreCore, Tx, reads, writes
from mlplat.registry.versions import alias_version, model_row, set_state, version_record, version_row

__all__ = ["RolloutsPart", "DEPLOYABLE_STATES", "FORCE_DEPLOYABLE_STATES"]

#: States a version may be deployed from; FORCE_DEPLOYABLE_STATES need ``force=True`` (an event says who).
DEPLOYABLE_STATES = frozenset({ModelState.VALIDATED, ModelState.CANARY})
FORCE_DEPLOYABLE_STATES = frozenset({ModelState.ARCHIVED, ModelState.PRODUCTION})
#: States a regional alias may point at (explicitly addressable versions).
_REGION_SERVABLE = frozenset({ModelState.VALIDATED, ModelState.CANARY, ModelState.PRODUCTION, ModelState.ARCHIVED})


def _region(region: str | None) -> str | None:
    if region is None or region == "":
        return None
    try:
        return validate_name(region, "region")
    except InvalidName as exc:
        raise InvalidName(f"{exc} (regions name serving cells, e.g. 'eu' or 'us-east')") from None


def _deployment_record(row: Row) -> Deployment:
    return Deployment(
        id=row["id"], name=row["model"], version=row["version"], region=row["region"] or None,
        canary_percent=row["canary_percent"], state=DeploymentState(row["state"]), previous_version=row["previous_version"],
        reason=row["reason"], by=row["by_user"], forced=bool(row["forced"]), targets=loads_json(row["targets"], {}),
        deadline_at=row["deadline_at"], created_at=row["created_at"], updated_at=row["updated_at"])


def _deployment_row(tx: Tx, deployment_id: str) -> Row:
    if not isinstance(deployment_id, str) or not deployment_id:
        raise ValidationError(f"deployment id must be a non-empty string like 'd-1a2b3c4d5e6f', got {deployment_id!r}")
    row = tx.one("SELECT * FROM deployments WHERE id=?", (deployment_id,))
    if row is None:
        raise NotFound(f"no deployment {deployment_id!r}; list them with `mlplat deployments`")
    return row


def _active_row(tx: Tx, name: str, region: str | None) -> Row | None:
    return tx.one("SELECT * FROM deployments WHERE model=? AND region=? AND state IN (?, ?) ORDER BY created_at DESC LIMIT 1",
                  (name, region or "", DeploymentState.PREWARMING.value, DeploymentState.CANARY.value))


def _set_deployment(tx: Tx, row: Row, target: DeploymentState, reason: str | None = None) -> Deployment:
    check_deployment_transition(row["id"], row["state"], target)
    tx.execute("UPDATE deployments SET state=?, reason=COALESCE(?, reason), updated_at=? WHERE id=?",
               (target.value, reason, tx.now, row["id"]))
    return _deployment_record(_deployment_row(tx, row["id"]))


def _check_approval(name: str, version: int, approval: Approval) -> None:
    if approval.blocks_promotion:
        hint = (f"a reviewer must approve it first: `mlplat models approve {name} {version}`"
                if approval.state == ApprovalState.PENDING else f"{approval.by or 'a reviewer'} rejected it")
        raise InvalidTransition(f"{name} v{version} cannot be promoted: approval is {approval.state.value}; {hint}")


def _clear_regional(tx: Tx, name: str, moves: dict[str, list[int | None]]) -> None:
    """Remove every ``production.<region>`` / ``previous.<region>`` alias (a global move)."""
    rows = tx.all("SELECT alias, version FROM aliases WHERE model=? AND (substr(alias, 1, 11) = 'production.' "
                  "OR substr(alias, 1, 9) = 'previous.')", (name,))
    for r in rows:
        put_alias(tx, name, r["alias"], None)
        moves[r["alias"]] = [int(r["version"]), None]


def _reject(tx: Tx, name: str, version: int, reason: str, transitions: list[dict[str, Any]]) -> None:
    """REJECTED, unless a ``production*`` alias still serves the version somewhere (a region)."""
    serving = tx.one("SELECT alias FROM aliases WHERE model=? AND version=? AND (alias = 'production' OR "
                     "substr(alias, 1, 11) = 'production.')", (name, version))
    if serving is not None:
        return
    state = ModelState(version_row(tx, name, version)["state"])
    if ModelState.REJECTED in allowed_transitions(state):
        set_state(tx, name, version, state, ModelState.REJECTED, error=reason[:2000])
        transitions.append({"version": version, "from": state.value, "to": ModelState.REJECTED.value})


def _go_live_problem(tx: Tx, name: str, version: int, region: str | None) -> str | None:
    """Why a pre-warmed version may no longer take traffic (None when it may)."""
    mv = version_record(version_row(tx, name, version))
    if mv.approval.blocks_promotion:
        return f"approval became {mv.approval.state.value} during pre-warm"
    allowed = DEPLOYABLE_STATES | FORCE_DEPLOYABLE_STATES
    if mv.state not in allowed or (region is None and mv.state != ModelState.PRODUCTION
                                    and ModelState.PRODUCTION not in allowed_transitions(mv.state)):
        return f"the version became {mv.state.value} during pre-warm"
    return None


class RolloutsPart(StoreCore):
    # -- promotion and rollback ------------------------------------------------------------------
    def _promote_global(self, tx: Tx, name: str, version: int, expected_production: int | None,
                        moves: dict[str, list[int | None]], transitions: list[dict[str, Any]]) -> int | None:
        mv = version_record(version_row(tx, name, version))
        old = alias_version(tx, name, ALIAS_PRODUCTION)
        check_expected_alias(name, ALIAS_PRODUCTION, old, expected_production)
        check_transition(mv.state, ModelState.PRODUCTION)
        _check_approval(mv.name, mv.version, mv.approval)
        if old is not None and old != version:
            old_state = ModelState(version_row(tx, name, old)["state"])
            if old_state == ModelState.PRODUCTION:
                set_state(tx, name, old, old_state, ModelState.ARCHIVED)
                transitions.append({"version": old, "from": old_state.value, "to": ModelState.ARCHIVED.value})
            moves[ALIAS_PREVIOUS] = [alias_version(tx, name, ALIAS_PREVIOUS), old]
            put_alias(tx, name, ALIAS_PREVIOUS, old)
        set_state(tx, name, version, mv.state, ModelState.PRODUCTION)
        transitions.append({"version": version, "from": mv.state.value, "to": ModelState.PRODUCTION.value})
        put_alias(tx, name, ALIAS_PRODUCTION, version)
        moves[ALIAS_PRODUCTION] = [old, version]
        if alias_version(tx, name, ALIAS_CANARY) == version:
            put_alias(tx, name, ALIAS_CANARY, None)
            moves[ALIAS_CANARY] = [version, None]
        _clear_regional(tx, name, moves)
        return old

    def _promote_regional(self, tx: Tx, name: str, version: int, region: str,
                          moves: dict[str, list[int | None]]) -> int | None:
        mv = version_record(version_row(tx, name, version))
        if mv.state not in _REGION_SERVABLE:
            raise InvalidTransition(f"{name} v{version} is {mv.state.value}; only VALIDATED, CANARY, PRODUCTION or "
                                    f"ARCHIVED versions can serve a region")
        _check_approval(mv.name, mv.version, mv.approval)
        prod_r, prev_r = production_alias(region), previous_alias(region)
        regional, global_prod = alias_version(tx, name, prod_r), alias_version(tx, name, ALIAS_PRODUCTION)
        effective = regional if regional is not None else global_prod
        if effective == version:
            return effective
        if version == global_prod:  # the region follows the global production again
            put_alias(tx, name, prod_r, None)
        else:
            put_alias(tx, name, prod_r, version)
        moves[prod_r] = [regional, None if version == global_prod else version]
        if effective is not None:
            moves[prev_r] = [alias_version(tx, name, prev_r), effective]
            put_alias(tx, name, prev_r, effective)
        return effective

    @writes
    def promote(self, tx: Tx, name: str, version: int, *, region: str | None = None, expected_production: int | None = None,
                by: str = "", idempotency_key: str | None = None) -> ModelVersion:
        validate_name(name, "model name")
        version, region = int_version(version), _region(region)
        moves: dict[str, list[int | None]] = {}
        transitions: list[dict[str, Any]] = []
        if region is None:
            old = self._promote_global(tx, name, version, expected_production, moves, transitions)
        else:
            check_expected_alias(name, production_alias(region), alias_version(tx, name, production_alias(region)),
                                 expected_production)
            old = self._promote_regional(tx, name, version, region, moves)
        emit(tx, "promoted", f"model:{name}", version, {"previous": old, "region": region, "by": by,
                                                       "transitions": transitions, "aliases": moves})
        return version_record(version_row(tx, name, version))

    @writes
    def rollback(self, tx: Tx, name: str, *, region: str | None = None, expected_production: int | None = None,
                 by: str = "", idempotency_key: str | None = None) -> ModelVersion:
        """Undo the last change of ``name`` (in ``region``): an active canary ends (its version
        REJECTED, production untouched); else production swaps with ``previous``."""
        validate_name(name, "model name")
        model_row(tx, name)
        region = _region(region)
        active = _active_row(tx, name, region)
        if active is not None:
            self._end_canary(tx, active, promote=False, reason="rolled back by command", by=by)
            current = alias_version(tx, name, production_alias(region)) or alias_version(tx, name, ALIAS_PRODUCTION)
            return version_record(version_row(tx, name, current if current is not None else int(active["version"])))
        if region is not None:
            return self._rollback_regional(tx, name, region, expected_production, by)
        current = alias_version(tx, name, ALIAS_PRODUCTION)
        check_expected_alias(name, ALIAS_PRODUCTION, current, expected_production)
        prev = alias_version(tx, name, ALIAS_PREVIOUS)
        if current is None or prev is None:
            missing = ALIAS_PRODUCTION if current is None else ALIAS_PREVIOUS
            raise NotFound(f"cannot roll back {name!r}: it has no {missing!r} alias (nothing was changed)")
        cur_state = ModelState(version_row(tx, name, current)["state"])
        prev_state = ModelState(version_row(tx, name, prev)["state"])
        check_transition(prev_state, ModelState.PRODUCTION)  # previous must be ARCHIVED
        transitions = []
        if cur_state != ModelState.ARCHIVED:
            set_state(tx, name, current, cur_state, ModelState.ARCHIVED)
            transitions.append({"version": current, "from": cur_state.value, "to": ModelState.ARCHIVED.value})
        set_state(tx, name, prev, prev_state, ModelState.PRODUCTION)
        transitions.append({"version": prev, "from": prev_state.value, "to": ModelState.PRODUCTION.value})
        put_alias(tx, name, ALIAS_PRODUCTION, prev)
        put_alias(tx, name, ALIAS_PREVIOUS, current)
        moves: dict[str, list[int | None]] = {ALIAS_PRODUCTION: [current, prev], ALIAS_PREVIOUS: [prev, current]}
        _clear_regional(tx, name, moves)
        emit(tx, "rolled_back", f"model:{name}", prev, {
            "from_version": current, "to_version": prev, "region": None, "by": by, "transitions": transitions,
            "aliases": moves})
        return version_record(version_row(tx, name, prev))

    def _rollback_regional(self, tx: Tx, name: str, region: str, expected: int | None, by: str) -> ModelVersion:
        prod_r, prev_r = production_alias(region), previous_alias(region)
        regional, prev, global_prod = (alias_version(tx, name, prod_r), alias_version(tx, name, prev_r),
                                       alias_version(tx, name, ALIAS_PRODUCTION))
        check_expected_alias(name, prod_r, regional, expected)
        current = regional if regional is not None else global_prod
        target = prev if prev is not None else (global_prod if regional is not None else None)
        if target is None or target == current or current is None:
            raise NotFound(f"cannot roll back {name!r} in region {region!r}: the region follows the global production "
                           f"(v{global_prod}) and has no earlier regional version; roll back globally with "
                           f"`mlplat rollback {name}` (nothing was changed)")
        state = ModelState(version_row(tx, name, target)["state"])
        if state not in _REGION_SERVABLE:
            raise ConflictError(f"cannot roll back {name!r} in region {region!r} to v{target}: it is {state.value} "
                                "(nothing was changed)")
        put_alias(tx, name, prod_r, None if target == global_prod else target)
        put_alias(tx, name, prev_r, current)
        moves = {prod_r: [regional, None if target == global_prod else target], prev_r: [prev, current]}
        emit(tx, "rolled_back", f"model:{name}", target, {"from_version": current, "to_version": target, "region": region,
                                                         "by": by, "transitions": [], "aliases": moves})
        return version_record(version_row(tx, name, target))

    # -- deployments -----------------------------------------------------------------------------
    @writes
    def start_deployment(self, tx: Tx, name: str, version: int, *, region: str | None = None, canary_percent: float = 0.0,
                         by: str = "", force: bool = False, targets: Mapping[str, int] | None = None,
                         prewarm_timeout_s: float = 120.0, idempotency_key: str | None = None) -> Deployment:
        validate_name(name, "model name")
        version, region = int_version(version), _region(region)
        try:
            canary_percent = float(canary_percent)
        except (TypeError, ValueError):
            raise ValidationError(f"canary percent must be a number from 0 to 100, got {canary_percent!r}") from None
        if not 0.0 <= canary_percent <= 100.0:
            raise ValidationError(f"canary percent must be from 0 to 100, got {canary_percent:g} (nothing was changed)")
        if not 0 < float(prewarm_timeout_s) <= 86_400:
            raise ValidationError(f"prewarm_timeout_s must be in (0, 86400], got {prewarm_timeout_s!r}")
        mv = version_record(version_row(tx, name, version))
        if mv.state not in DEPLOYABLE_STATES and not (force and mv.state in FORCE_DEPLOYABLE_STATES):
            hint = ("; pass force=True (`--force`) to redeploy it" if mv.state in FORCE_DEPLOYABLE_STATES else
                    f"; only {', '.join(sorted(s.value for s in DEPLOYABLE_STATES))} versions deploy"
                    + (" (ARCHIVED/PRODUCTION with --force)" if not force else ""))
            raise InvalidTransition(f"{name} v{version} is {mv.state.value}, not VALIDATED{hint} (nothing was changed)")
        if mv.state in (ModelState.ARCHIVED, ModelState.PRODUCTION) and canary_percent not in (0.0, 100.0) and region is None:
            raise InvalidTransition(f"{name} v{version} is {mv.state.value}: it can be redeployed, not canaried "
                                    "(drop --canary) (nothing was changed)")
        _check_approval(name, version, mv.approval)
        if "bundle" not in mv.artifacts:
            raise ConflictError(f"{name} v{version} has no bundle registered; nothing to deploy (nothing was changed)")
        active = _active_row(tx, name, region)
        if active is not None and active["state"] == DeploymentState.PREWARMING.value and active["deadline_at"] < tx.now:
            _set_deployment(tx, active, DeploymentState.FAILED, "pre-warm did not finish before its deadline")
            emit(tx, "deployment_failed", f"model:{name}", active["version"],
                 {"deployment": active["id"], "region": region, "reason": "pre-warm did not finish before its deadline"})
            active = None
        if active is not None:
            raise ConflictError(f"{name} has deployment {active['id']} (v{active['version']}, {active['state']}) in progress "
                                f"in {('region ' + region) if region else 'all regions'}; wait for it, or end it with "
                                f"`mlplat rollback {name}` (nothing was changed)")
        clean_targets = {str(k): int(v) for k, v in (targets or {}).items()}
        previous = alias_version(tx, name, production_alias(region)) or alias_version(tx, name, ALIAS_PRODUCTION)
        deployment_id = "d-" + uuid.uuid4().hex[:12]
        tx.execute("INSERT INTO deployments(id, model, version, region, canary_percent, state, previous_version, reason, "
                   "by_user, forced, targets, deadline_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (deployment_id, name, version, region or "", canary_percent, DeploymentState.PREWARMING.value, previous,
                    None, str(by or "")[:200], int(bool(force)), dumps_json(clean_targets, "targets"),
                    tx.now + float(prewarm_timeout_s), tx.now, tx.now))
        record = _deployment_record(_deployment_row(tx, deployment_id))
        if force and mv.state not in DEPLOYABLE_STATES:
            emit(tx, "deployment_forced", f"model:{name}", version, {"deployment": deployment_id, "by": record.by,
                                                                    "state": mv.state.value})
        emit(tx, "deployment_started", f"model:{name}", version, {"deployment": deployment_id, **_event_body(record)})
        return record

    @writes
    def finish_prewarm(self, tx: Tx, deployment_id: str, *, ok: bool, reason: str = "", reject: bool = True,
                       idempotency_key: str | None = None) -> Deployment:
        """Pre-warm is over: on success the version takes traffic (LIVE, or CANARY with its
        percent; LIVE when nothing serves the scope yet); on failure the deployment is FAILED with
        ``reason`` and, with ``reject`` (the version's own fault), the version REJECTED. A success
        that may no longer be applied (approval or state changed meanwhile) is recorded FAILED."""
        row = _deployment_row(tx, deployment_id)
        name, version, region = row["model"], int(row["version"]), row["region"] or None
        if row["state"] != DeploymentState.PREWARMING.value:
            raise ConflictError(f"deployment {deployment_id} is {row['state']}, not PREWARMING; nothing was changed")
        if ok:
            problem = _go_live_problem(tx, name, version, region)
            if problem is not None:
                ok, reason, reject = False, problem, False
        if not ok:
            transitions: list[dict[str, Any]] = []
            if reject:
                _reject(tx, name, version, f"deployment {deployment_id} failed: {reason}", transitions)
            record = _set_deployment(tx, row, DeploymentState.FAILED, str(reason)[:2000] or "pre-warm failed")
            emit(tx, "deployment_failed", f"model:{name}", version, {"deployment": deployment_id, "region": region,
                                                                    "reason": record.reason, "transitions": transitions})
            return record
        percent = float(row["canary_percent"])
        serves = alias_version(tx, name, production_alias(region)) or alias_version(tx, name, ALIAS_PRODUCTION)
        if 0.0 < percent < 100.0 and serves is not None:  # a first version has nothing to share traffic with
            state = ModelState(version_row(tx, name, version)["state"])
            transitions = []
            if region is None and state == ModelState.VALIDATED:
                set_state(tx, name, version, state, ModelState.CANARY)
                transitions.append({"version": version, "from": state.value, "to": ModelState.CANARY.value})
            alias = canary_alias(region)
            before = alias_version(tx, name, alias)
            put_alias(tx, name, alias, version)
            record = _set_deployment(tx, row, DeploymentState.CANARY)
            emit(tx, "canary_started", f"model:{name}", version, {
                "deployment": deployment_id, "region": region, "percent": percent, "transitions": transitions,
                "aliases": {alias: [before, version]}})
            return record
        self._go_live(tx, row, by=row["by_user"] or "")
        return _deployment_record(_deployment_row(tx, deployment_id))

    def _go_live(self, tx: Tx, row: Row, *, by: str) -> None:
        """``by``: who made the version live (the deployment's author, or whoever ended its canary)."""
        name, version, region = row["model"], int(row["version"]), row["region"] or None
        moves: dict[str, list[int | None]] = {}
        transitions: list[dict[str, Any]] = []
        if region is None:
            current = alias_version(tx, name, ALIAS_PRODUCTION)
            if current == version:  # a forced redeploy of the production version: regions follow it again
                old: int | None = current
                _clear_regional(tx, name, moves)
            else:
                old = self._promote_global(tx, name, version, None, moves, transitions)
        else:
            old = self._promote_regional(tx, name, version, region, moves)
        if alias_version(tx, name, canary_alias(region)) == version:
            put_alias(tx, name, canary_alias(region), None)
            moves[canary_alias(region)] = [version, None]
        record = _set_deployment(tx, row, DeploymentState.LIVE)
        emit(tx, "promoted", f"model:{name}", version, {"previous": old, "region": region, "deployment": record.id,
                                                       "by": by, "transitions": transitions, "aliases": moves})

    def _end_canary(self, tx: Tx, row: Row, *, promote: bool, reason: str, by: str) -> Deployment:
        name, version, region = row["model"], int(row["version"]), row["region"] or None
        if row["state"] == DeploymentState.PREWARMING.value and not promote:
            record = _set_deployment(tx, row, DeploymentState.FAILED, f"cancelled during pre-warm: {reason}")
            emit(tx, "deployment_failed", f"model:{name}", version, {"deployment": row["id"], "region": region,
                                                                    "reason": record.reason, "by": by})
            return record
        if row["state"] != DeploymentState.CANARY.value:
            raise ConflictError(f"deployment {row['id']} is {row['state']}, not CANARY; nothing was changed")
        if promote:
            self._go_live(tx, row, by=by)
            return _deployment_record(_deployment_row(tx, row["id"]))
        alias = canary_alias(region)
        before = alias_version(tx, name, alias)
        if before == version:
            put_alias(tx, name, alias, None)
        transitions: list[dict[str, Any]] = []
        _reject(tx, name, version, f"canary {row['id']} rolled back: {reason}", transitions)
        record = _set_deployment(tx, row, DeploymentState.ROLLED_BACK, reason[:2000])
        emit(tx, "canary_rolled_back", f"model:{name}", version, {
            "deployment": row["id"], "region": region, "reason": reason, "by": by, "transitions": transitions,
            "aliases": {alias: [before, None]}})
        return record

    @writes
    def finish_canary(self, tx: Tx, deployment_id: str, *, promote: bool, reason: str = "", by: str = "",
                      idempotency_key: str | None = None) -> Deployment:
        """End a canary: ``promote`` makes its version production (in its region); otherwise the
        canary alias goes and the version is REJECTED with ``reason``."""
        row = _deployment_row(tx, deployment_id)
        return self._end_canary(tx, row, promote=bool(promote), reason=str(reason or ("promoted" if promote else "rolled back")),
                                by=str(by or ""))

    @reads
    def get_deployment(self, tx: Tx, deployment_id: str) -> Deployment:
        return _deployment_record(_deployment_row(tx, deployment_id))

    @reads
    def list_deployments(self, tx: Tx, *, name: str | None = None, active: bool | None = None,
                         limit: int = 50) -> list[Deployment]:
        where: list[str] = []
        params: list[Any] = []
        if name is not None:
            where.append("model=?")
            params.append(validate_name(name, "model name"))
        if active is not None:
            where.append("state IN (?, ?)" if active else "state NOT IN (?, ?)")
            params += [DeploymentState.PREWARMING.value, DeploymentState.CANARY.value]
        sql = "SELECT * FROM deployments" + (" WHERE " + " AND ".join(where) if where else "")
        rows = tx.all(sql + " ORDER BY created_at DESC, id LIMIT ?", (*params, max(0, int(limit))))
        return [_deployment_record(r) for r in rows]

    @reads
    def traffic(self, tx: Tx, name: str, *, region: str | None = None) -> Traffic:
        """What the ingress of ``region`` sends where for ``name`` (one read, one snapshot)."""
        validate_name(name, "model name")
        region = _region(region)
        model = model_row(tx, name)
        production = (alias_version(tx, name, production_alias(region)) if region else None) \
            or alias_version(tx, name, ALIAS_PRODUCTION)
        canary: Row | None = None
        for scope in ([region, None] if region else [None]):
            found = _active_row(tx, name, scope)
            if found is not None and found["state"] == DeploymentState.CANARY.value:
                canary = found
                break
        return Traffic(name=name, region=region, production=production,
                       canary=None if canary is None else int(canary["version"]),
                       canary_percent=0.0 if canary is None else float(canary["canary_percent"]),
                       canary_deployment=None if canary is None else canary["id"],
                       serving_policy=loads_json(model["serving_policy"], {}))


def _event_body(record: Deployment) -> dict[str, Any]:
    return {"region": record.region, "canary_percent": record.canary_percent, "by": record.by, "forced": record.forced,
            "targets": record.targets, "previous_version": record.previous_version, "deadline_at": record.deadline_at}
