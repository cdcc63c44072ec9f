"""The family record and where it lives in the registry.

A family version is immutable once written: which members (model name, version, entity) a
training job produced, which entities it skipped and why, the pack holding their weights, the
recipe. It is the payload of one ``family_registered`` event (subject ``family:<name>``,
``version`` = the family version), appended in the same registry transaction that records the
members' outcomes. Member *state* is never copied here: each member is an ordinary model
version, so its state, aliases and approval are read from the registry, where they live.

The event log is the store because the registry's catalog takes only the kinds it knows
(datasets and feature sets); a ``family`` catalog kind would replace :func:`family_versions`
and the version numbering here, and nothing else (docs/families.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from mlplat.errors import NotFound
from mlplat.families.policy import validate_family_name
from mlplat.records import FeatureSetRef, Record
from mlplat.registry import Registry
from mlplat.registry.protocol import BatchCall

__all__ = ["FAMILY_REGISTERED", "FAMILY_VALIDATED", "FAMILY_PROMOTED", "FAMILY_ROLLED_BACK", "FAMILY_EVENTS",
           "FamilyMember", "FamilyVersion", "family_subject", "family_tag", "family_versions", "get_family",
           "list_families", "next_family_version", "register_family_call", "family_event_call", "member_states"]

FAMILY_REGISTERED = "family_registered"
FAMILY_VALIDATED = "family_validated"
FAMILY_PROMOTED = "family_promoted"
FAMILY_ROLLED_BACK = "family_rolled_back"
FAMILY_EVENTS = (FAMILY_REGISTERED, FAMILY_VALIDATED, FAMILY_PROMOTED, FAMILY_ROLLED_BACK)
_ALL_EVENTS = 1_000_000  # events_since limit: every version of one family in one read


class FamilyMember(Record):
    """One member of a family version: the entity it serves and its model version."""

    entity: str
    version: int = Field(ge=1)
    state: str | None = None  # at registration (TRAINING -> TRAINED or FAILED); live state: the registry


class FamilyVersion(Record):
    """One training job's family: members (model name -> member), skipped entities (entity ->
    reason), the pack (directory relative to the storage root) and the recipe."""

    name: str
    version: int = Field(ge=1)
    run_id: str
    feature_set: FeatureSetRef
    entity_column: str
    label: str
    input_columns: tuple[str, ...]
    spec: dict[str, Any]
    pack: str
    members: dict[str, FamilyMember] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    failed: dict[str, str] = Field(default_factory=dict)  # member -> fit error (the member is FAILED)
    validation: dict[str, Any] = Field(default_factory=dict)  # the ValidationPolicy members are validated with
    config_hash: str = ""
    code_version: str | None = None
    created_at: float = Field(default_factory=time.time)

    def member_versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self.members.items()}


def family_subject(name: str) -> str:
    return f"family:{validate_family_name(name)}"


def family_tag(name: str) -> str:
    """The tag every member model carries: ``mlplat models list --tag family:<name>``."""
    return family_subject(name)


def family_versions(registry: Registry, name: str) -> list[FamilyVersion]:
    """Every version of family ``name``, oldest first (empty when there is none)."""
    events = registry.events_since(0, subject=family_subject(name), kinds=[FAMILY_REGISTERED], limit=_ALL_EVENTS)
    return [FamilyVersion.model_validate(e.payload) for e in events]


def get_family(registry: Registry, name: str, version: int | None = None) -> FamilyVersion:
    """Family ``name`` at ``version`` (the latest when None); NotFound saying what exists."""
    versions = family_versions(registry, name)
    if not versions:
        raise NotFound(f"family {name!r} does not exist; train it with `mlplat family train --config configs/family.yaml`")
    if version is None:
        return versions[-1]
    for fv in versions:
        if fv.version == int(version):
            return fv
    raise NotFound(f"family {name!r} has no version {version}; it has versions "
                   f"{', '.join(str(v.version) for v in versions)} (`mlplat family show {name}`)")


def list_families(registry: Registry) -> list[FamilyVersion]:
    """The latest version of every family, by name."""
    latest: dict[str, FamilyVersion] = {}
    for event in registry.events_since(0, kinds=[FAMILY_REGISTERED], limit=_ALL_EVENTS):
        fv = FamilyVersion.model_validate(event.payload)
        latest[fv.name] = fv
    return [latest[k] for k in sorted(latest)]


def next_family_version(registry: Registry, name: str) -> tuple[int, int]:
    """``(next family version, event-log seq)`` read in one snapshot: appending the record with
    ``expected_seq`` = that seq (:func:`register_family_call`) fails with ConflictError if any
    write came in between, so two jobs never take the same family version."""
    seq, events = registry.read_batch([
        ("last_seq", {}),
        ("events_since", {"seq": 0, "subject": family_subject(name), "kinds": [FAMILY_REGISTERED], "limit": _ALL_EVENTS}),
    ])
    return max((int(e.version or 0) for e in events), default=0) + 1, int(seq)


def register_family_call(fv: FamilyVersion, expected_seq: int) -> BatchCall:
    """The batch call that records ``fv``; first in its batch, so ``expected_seq`` guards it."""
    return ("append_event", {"kind": FAMILY_REGISTERED, "subject": family_subject(fv.name),
                             "payload": fv.model_dump(mode="json"), "version": fv.version, "expected_seq": expected_seq})


def family_event_call(kind: str, fv: FamilyVersion, payload: Mapping[str, Any]) -> BatchCall:
    """An audit event of a bulk step on family version ``fv`` (validated, promoted, rolled back)."""
    return ("append_event", {"kind": kind, "subject": family_subject(fv.name), "payload": dict(payload),
                             "version": fv.version})


def member_states(registry: Registry, fv: FamilyVersion) -> list[dict[str, Any]]:
    """Each member's live state, approval, production version and error (one registry read)."""
    names = sorted(fv.members)
    calls: list[BatchCall] = [("get_version", {"name": n, "version": fv.members[n].version}) for n in names]
    calls += [("aliases", {"name": n}) for n in names]
    out = registry.read_batch(calls) if names else []
    rows = []
    for name, mv, aliases in zip(names, out[:len(names)], out[len(names):], strict=True):
        rows.append({"member": name, "entity": fv.members[name].entity, "version": mv.version, "state": mv.state.value,
                     "approval": mv.approval.state.value, "production": aliases.get("production"),
                     "validation": (mv.metrics or {}).get("validation"), "error": mv.error})
    return rows
