"""``train_family(config)``: one model per entity of a feature set, as one job.

Order of work, so that a failure leaves nothing half-registered:

1. every check that can fail before anything runs (config, feature set, entity column, model);
2. fit every entity's model in parallel (:func:`mlplat.families.partition.run_by_entity`):
   entities too small, null, or without a usable name are skipped with the reason, a fit that
   raises or diverges marks that member FAILED, and neither ends the job;
3. write the pack (all members' weights in a few safetensors shards, index last);
4. registry batch 1: register one version per member (REGISTERED), one transaction;
5. one small ``bundle.json`` per member pointing into the pack (``save_bundle(placement=ref)``);
6. registry batch 2, one transaction: the family record (family version taken with a
   compare-and-set on the event log), then each member REGISTERED -> TRAINING -> TRAINED with
   its bundle artifact (or FAILED with its error).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlplat.errors import ConfigError, ConflictError, MlplatError
from mlplat.families.config import FamilyConfig, family_config_hash, parse_family_config
from mlplat.families.fit import FIT_FAILED, FIT_SKIPPED, FIT_TRAINED, fit_groups, weights_from_bytes
from mlplat.families.partition import data_files, default_partitions, run_by_entity
from mlplat.families.policy import MEMBER_SEPARATOR, plan_members
from mlplat.families.record import (
    FamilyMember,
    FamilyVersion,
    family_tag,
    next_family_version,
    register_family_call,
)
from mlplat.models import build_model, save_bundle
from mlplat.records import ArtifactRef, ModelState
from mlplat.registry import Registry
from mlplat.registry.protocol import BatchCall
from mlplat.storage import Storage
from mlplat.training.inputs import TRAIN, resolve_training_data
from mlplat.training.runner import json_safe
from mlplat.validation.inference import resolve_validation_split

__all__ = ["FamilyTrainResult", "train_family", "new_family_run_id", "pack_dir"]

log = logging.getLogger(__name__)
_BUNDLE_WRITERS = 8  # bundle.json writes are small and I/O bound (fsync locally, a PUT on S3)
_RECORD_ATTEMPTS = 5


@dataclass
class FamilyTrainResult:
    family: str
    version: int
    run_id: str
    pack: str
    members: dict[str, FamilyMember] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    shards: int = 0
    fit_s: float = 0.0
    duration_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)  # fit, pack, register, bundles, finish

    @property
    def trained(self) -> int:
        return sum(1 for m in self.members.values() if m.state == ModelState.TRAINED.value)

    @property
    def models_per_s(self) -> float:
        return self.trained / self.duration_s if self.duration_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "version": self.version, "run_id": self.run_id, "pack": self.pack,
                "trained": self.trained, "failed": self.failed, "skipped": self.skipped, "shards": self.shards,
                "fit_s": round(self.fit_s, 3), "duration_s": round(self.duration_s, 3),
                "phases_s": {k: round(v, 3) for k, v in self.phases_s.items()},
                "models_per_s": round(self.models_per_s, 2),
                "members": {k: v.model_dump(mode="json") for k, v in self.members.items()}}


def new_family_run_id(family: str) -> str:
    return f"{family}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def pack_dir(family: str, run_id: str) -> tuple[str, ...]:
    """``models/<family>/packs/<run-id>``: one immutable pack per training job."""
    return ("models", family, "packs", run_id)


@dataclass(frozen=True)
class _Inputs:
    cfg: FamilyConfig
    data: Any  # mlplat.training.inputs.TrainingData
    files: list[str]
    features: list[str]
    split_column: str | None


def _prepare(cfg: FamilyConfig, registry: Registry, storage: Storage) -> _Inputs:
    data = resolve_training_data(registry, storage, cfg.feature_set.name, cfg.feature_set.version, cfg.label)
    split = resolve_validation_split(registry, storage, data.feature_set)
    fs = f"feature set {data.feature_set.name} v{data.feature_set.version}"
    if cfg.entity_column not in split.columns:
        raise ConfigError(f"entity_column {cfg.entity_column!r} is not a column of {fs}; it has {sorted(split.columns)}")
    if cfg.entity_column == data.label:
        raise ConfigError(f"entity_column {cfg.entity_column!r} is the label of {fs}; pick the column that names the entity")
    features = [c for c in data.feature_columns if c != cfg.entity_column]
    if not features:
        raise ConfigError(f"{fs} has no feature column besides entity_column {cfg.entity_column!r}")
    missing = [c for c in (*features, data.label) if c not in split.columns]
    if missing:
        raise ConfigError(f"{fs} lacks column(s) {missing}; it has {sorted(split.columns)}")
    try:
        build_model(cfg.spec, len(features))
    except MlplatError:
        raise
    except Exception as exc:  # the user's factory raising
        raise ConfigError(f"family {cfg.family!r}: building {cfg.spec.architecture} failed: {type(exc).__name__}: {exc}") from None
    split_column = data.split_column if data.split_column in split.columns else None
    return _Inputs(cfg, data, data_files(storage, split.data_dir, split.files), features, split_column)


def train_family(config: FamilyConfig | Mapping[str, Any], *, registry: Registry, storage: Storage,
                 run_id: str | None = None) -> FamilyTrainResult:
    """Train family ``config.family`` on its feature set (Ray must be initialized); see the module doc.

    >>> train_family(load_family_config("configs/family.yaml"), registry=p.registry, storage=p.storage)  # doctest: +SKIP
    """
    started = time.perf_counter()
    cfg = parse_family_config(config)
    run_id = run_id or new_family_run_id(cfg.family)
    inputs = _prepare(cfg, registry, storage)
    data = inputs.data
    fit_started = time.perf_counter()
    fits = run_by_entity(storage, inputs.files, columns=[*inputs.features, data.label], entity_column=cfg.entity_column,
                         split_column=inputs.split_column, split_value=TRAIN if inputs.split_column else None,
                         partitions=cfg.fit.partitions or default_partitions(), fn=fit_groups,
                         fn_kwargs={"entity_column": cfg.entity_column, "feature_columns": inputs.features,
                                    "label": data.label, "spec": cfg.spec, "fit": cfg.fit.model_dump()})
    fit_s = time.perf_counter() - fit_started
    by_key = {f["entity"]: f for f in fits}
    plan = plan_members(cfg.family, [k for k, f in by_key.items() if f["status"] != FIT_SKIPPED])
    skipped = {**{k: f["reason"] for k, f in by_key.items() if f["status"] == FIT_SKIPPED}, **plan.skipped}
    chosen = {name: by_key[key] for name, key in plan.members.items()}
    trained = {name: f for name, f in chosen.items() if f["status"] == FIT_TRAINED}
    failed = {name: f["reason"] for name, f in chosen.items() if f["status"] == FIT_FAILED}
    if not trained:
        reasons = "; ".join(f"{k}: {r}" for k, r in list({**skipped, **failed}.items())[:5])
        raise ConfigError(f"family {cfg.family!r}: no entity of {len(by_key)} could be trained (nothing was registered); "
                          f"first reasons: {reasons or 'the training split has no rows'}")
    parts = pack_dir(cfg.family, run_id)
    from mlplat.models.packed import write_pack

    phases = {"prepare": fit_started - started, "fit": fit_s}
    mark = time.perf_counter()
    states = {name: weights_from_bytes(f["weights"]) for name, f in trained.items()}
    refs = write_pack(storage, states, *parts, shard_max_bytes=cfg.fit.shard_max_bytes)
    phases["pack"], mark = time.perf_counter() - mark, time.perf_counter()
    versions = _register(registry, cfg, data, run_id, chosen, "/".join(parts))
    phases["register"], mark = time.perf_counter() - mark, time.perf_counter()
    bundles = _write_bundles(storage, cfg, inputs, run_id, trained, versions, refs)
    phases["bundles"], mark = time.perf_counter() - mark, time.perf_counter()
    fv = _finish(registry, cfg, inputs, run_id, "/".join(parts), chosen, versions, bundles, skipped, failed)
    phases["finish"] = time.perf_counter() - mark
    return FamilyTrainResult(family=cfg.family, version=fv.version, run_id=run_id, pack="/".join(parts),
                             members=dict(fv.members), failed=failed, skipped=skipped,
                             shards=len({r.shard for r in refs.values()}), fit_s=fit_s,
                             duration_s=time.perf_counter() - started, phases_s=phases)


def _member_extra(cfg: FamilyConfig, run_id: str, key: str, pack: str) -> dict[str, Any]:
    return {"family": {"name": cfg.family, "entity": key, "entity_column": cfg.entity_column, "run_id": run_id,
                       "pack": pack}}


def _register(registry: Registry, cfg: FamilyConfig, data: Any, run_id: str, chosen: Mapping[str, Mapping[str, Any]],
              pack: str) -> dict[str, int]:
    """Batch 1: a REGISTERED version per member (and the member model, tagged, when new)."""
    existing = {m.name for m in registry.list_models(prefix=f"{cfg.family}{MEMBER_SEPARATOR}")}
    config_hash = family_config_hash(cfg)
    calls: list[BatchCall] = []
    names = sorted(chosen)
    for name in names:
        key = chosen[name]["entity"]
        if name not in existing:
            calls.append(("create_model", {"name": name, "tags": [family_tag(cfg.family)], "task_type": cfg.spec.task,
                                           "description": f"family {cfg.family}: {cfg.entity_column} = {key}"}))
        calls.append(("register_version", {"name": name, "config_hash": config_hash, "code_version": cfg.code_version,
                                           "datasets": [d.model_dump() for d in data.datasets],
                                           "feature_set": data.feature_set.model_dump(), "run_id": run_id,
                                           "extra": _member_extra(cfg, run_id, key, pack)}))
    results = registry.batch(calls, idempotency_key=f"family-register:{run_id}")
    registered = [r for (method, _), r in zip(calls, results, strict=True) if method == "register_version"]
    return {mv.name: mv.version for mv in registered}


def _write_bundles(storage: Storage, cfg: FamilyConfig, inputs: _Inputs, run_id: str,
                   trained: Mapping[str, Mapping[str, Any]], versions: Mapping[str, int],
                   refs: Mapping[str, Any]) -> dict[str, ArtifactRef]:
    """One bundle.json per member, written by Ray tasks in chunks (building each bundle's JSON is
    CPU work that threads of one process would serialize on the GIL; the chunks spread it over
    the cluster, and each chunk overlaps its files' fsyncs/PUTs with threads)."""
    import ray

    data = inputs.data
    common = {"spec": cfg.spec, "input_columns": inputs.features, "label_columns": [data.label],
              "encoder": data.encoder, "feature_set": data.feature_set.model_dump(),
              "extra": {"config_hash": family_config_hash(cfg), "code_version": cfg.code_version},
              "family": {"name": cfg.family, "entity_column": cfg.entity_column, "run_id": run_id}}
    items = [(name, versions[name], refs[name].to_dict(), trained[name]) for name in sorted(trained)]
    chunks = max(1, min(default_partitions(), -(-len(items) // _BUNDLES_PER_TASK_MIN)))
    task = ray.remote(num_cpus=1)(write_bundle_chunk).options(name="family-bundles")
    common_ref: Any = ray.put(common)
    out: dict[str, ArtifactRef] = {}
    for part in ray.get([task.remote(storage, items[i::chunks], common_ref) for i in range(chunks)]):
        out.update(part)
    return out


_BUNDLES_PER_TASK_MIN = 200  # below this, one task: starting another costs more than it saves


def write_bundle_chunk(storage: Storage, items: list[tuple[str, int, dict[str, Any], Mapping[str, Any]]],
                       common: Mapping[str, Any]) -> dict[str, ArtifactRef]:
    """Write the bundle.json of each ``(member, version, packed ref, fit result)``."""
    from mlplat.models.packed import PackedRef

    def write(item: tuple[str, int, dict[str, Any], Mapping[str, Any]]) -> tuple[str, ArtifactRef]:
        name, version, ref_dict, fit = item
        ref = PackedRef.from_dict(ref_dict)
        model = build_model(common["spec"], len(common["input_columns"]))
        model.load_state_dict(weights_from_bytes(fit["weights"]), strict=True)
        family = {**common["family"], "entity": fit["entity"], "pack": ref.pack}
        bundle = save_bundle(storage, name, version, model, spec=common["spec"], input_columns=list(common["input_columns"]),
                             label_columns=list(common["label_columns"]), encoder=common["encoder"],
                             feature_set=common["feature_set"],
                             metrics=json_safe({"train_loss": fit["train_loss"], "rows": fit["rows"]}),
                             extra={"family": family, **common["extra"]}, placement=ref)
        return name, bundle

    with ThreadPoolExecutor(_BUNDLE_WRITERS) as pool:
        return dict(pool.map(write, items))


def _finish(registry: Registry, cfg: FamilyConfig, inputs: _Inputs, run_id: str, pack: str,
            chosen: Mapping[str, Mapping[str, Any]], versions: Mapping[str, int], bundles: Mapping[str, ArtifactRef],
            skipped: Mapping[str, str], failed: Mapping[str, str]) -> FamilyVersion:
    """Batch 2: the family record, then every member's outcome, in one transaction."""
    data = inputs.data
    member_calls: list[BatchCall] = []
    for name in sorted(chosen):
        v, fit = versions[name], chosen[name]
        training = ("transition", {"name": name, "version": v, "state": ModelState.TRAINING.value,
                                   "expected_state": ModelState.REGISTERED.value})
        if name in bundles:
            member_calls += [
                ("update_version", {"name": name, "version": v, "artifacts": {"bundle": bundles[name].model_dump(mode="json")},
                                    "expected_state": ModelState.REGISTERED.value}),
                training,
                ("transition", {"name": name, "version": v, "state": ModelState.TRAINED.value,
                                "expected_state": ModelState.TRAINING.value,
                                "metrics": json_safe({"train_loss": fit["train_loss"], "rows": fit["rows"]})}),
            ]
        else:
            member_calls += [training, ("transition", {"name": name, "version": v, "state": ModelState.FAILED.value,
                                                       "expected_state": ModelState.TRAINING.value,
                                                       "error": failed.get(name, "fit failed")[:4000]})]
    members = {name: FamilyMember(entity=chosen[name]["entity"], version=versions[name],
                                  state=(ModelState.TRAINED if name in bundles else ModelState.FAILED).value)
               for name in sorted(chosen)}
    for attempt in range(_RECORD_ATTEMPTS):
        version, seq = next_family_version(registry, cfg.family)
        fv = FamilyVersion(name=cfg.family, version=version, run_id=run_id, feature_set=data.feature_set,
                           entity_column=cfg.entity_column, label=data.label, input_columns=tuple(inputs.features),
                           spec=cfg.spec.model_dump(mode="json"), pack=pack, members=members, skipped=dict(skipped),
                           failed=dict(failed), validation=cfg.validation.model_dump(mode="json"),
                           config_hash=family_config_hash(cfg), code_version=cfg.code_version)
        try:
            registry.batch([register_family_call(fv, seq), *member_calls], idempotency_key=f"family-finish:{run_id}")
            return fv
        except ConflictError as exc:  # another write came between the read and this batch: take the next number
            if attempt == _RECORD_ATTEMPTS - 1:
                raise ConflictError(f"family {cfg.family!r}: could not record family version after {_RECORD_ATTEMPTS} "
                                    f"attempts (the registry is busy): {exc}; members stay REGISTERED, re-run training") from None
            log.info("family %s: event log moved while recording (%s); retrying", cfg.family, exc)
    raise AssertionError("unreachable")
