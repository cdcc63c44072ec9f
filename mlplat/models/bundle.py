"""The model bundle: ``models/<name>/v<N>/bundle.json`` plus the weights, placed by size.

``bundle.json`` is written last and holds the sha256 of every weights byte it points at, so it
doubles as the completion marker: a directory without it is an unfinished write. The registry
records the sha256 of ``bundle.json`` itself, which closes the chain: registry -> bundle ->
weights, for every placement (``placement.kind`` in bundle.json; docs/weights.md):

- ``file``: ``model.safetensors`` next to bundle.json (bundles without ``placement`` are this).
- ``packed``: either ``{"ref": PackedRef}``, a member of a pack another writer made (model
  families: :func:`mlplat.models.packed.write_pack` then ``save_bundle(placement=ref)``), or,
  for a lone small model, ``{"inline": ...}``: the safetensors bytes base64-encoded inside
  bundle.json. Inline is the layout with the fewest reads on a cold load: one (bundle.json),
  against two for a file or a one-member pack beside it (bundle.json, then the weights), and it
  writes one object instead of two or three. The cost, a third more bytes for base64 and a
  bigger bundle.json for readers that only want the schema, is bounded by
  ``weights.packed_max_bytes`` (1 MiB by default).
- ``sharded``: ``model-00001-of-0000N.safetensors`` + ``model.safetensors.index.json`` (the
  Hugging Face layout, for tools); bundle.json lists the shards with their sha256, so a load
  reads no index and streams shard by shard, verifying each before its tensors are used.

:func:`load_bundle` is the one place that dispatches on the placement.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from mlplat.config import WeightStorageSettings
from mlplat.errors import IntegrityError, NotFound
from mlplat.models.packed import PackedRef, read_member, tensor_nbytes
from mlplat.models.placement import PlacementKind, choose_placement
from mlplat.models.zoo import ModelSpec, build_model
from mlplat.names import validate_name
from mlplat.records import ArtifactRef
from mlplat.storage import Storage, load_weights, load_weights_bytes, save_weights, sha256_bytes

__all__ = ["BUNDLE_FILE", "WEIGHTS_FILE", "SHARD_INDEX_FILE", "BUNDLE_FORMAT", "LoadedBundle", "bundle_dir",
           "save_bundle", "load_bundle", "state_dict_bytes", "placement_for", "sharded_file_name"]

BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
SHARD_INDEX_FILE = "model.safetensors.index.json"
#: 1: weights in model.safetensors (readable by every mlplat); 2: any placement, named in ``placement``.
BUNDLE_FORMAT = 1
_PLACED_FORMAT = 2


def bundle_dir(name: str, version: int) -> tuple[str, str, str]:
    return ("models", validate_name(name, "model name"), f"v{int(version)}")


def sharded_file_name(index: int, count: int) -> str:
    """``model-00001-of-00003.safetensors`` for the first of three shards (``index`` from 0)."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def state_dict_bytes(state: dict[str, Any]) -> int:
    """Bytes of tensor data in a state dict (what ``choose_placement`` measures)."""
    return sum(tensor_nbytes(t) for t in state.values())


def placement_for(weight_bytes: int, weights: WeightStorageSettings | None) -> PlacementKind:
    """The placement :func:`save_bundle` uses: by size with ``weights``, ``file`` without (today's
    layout, for callers that pass no settings)."""
    return choose_placement(weight_bytes, weights) if weights is not None else "file"


@dataclass(frozen=True)
class LoadedBundle:
    """A model ready for inference (eval mode, on the device it was loaded to) and its bundle metadata."""

    model: Any
    spec: ModelSpec
    meta: dict[str, Any]

    @property
    def input_columns(self) -> list[str]:
        return list(self.meta["input_columns"])

    @property
    def encoder(self) -> dict[str, Any] | None:
        return self.meta.get("encoder")

    @property
    def placement(self) -> str:
        return str((self.meta.get("placement") or {}).get("kind", "file"))

    @property
    def weights_sha256(self) -> str:
        """The sha256 that identifies these weights whatever their placement: the file's, the
        pack member's byte range, the inline blob's, or the sharded index's."""
        placed = self.meta.get("placement") or {}
        files = self.meta.get("files") or {}
        if placed.get("kind") == "packed":
            return str(placed["ref"]["sha256"] if "ref" in placed else placed["inline"]["sha256"])
        if placed.get("kind") == "sharded":
            return str(files[placed.get("index", SHARD_INDEX_FILE)])
        return str(files[WEIGHTS_FILE])


def save_bundle(
    storage: Storage,
    name: str,
    version: int,
    model: Any,
    *,
    spec: ModelSpec,
    input_columns: list[str],
    label_columns: list[str] | None = None,
    encoder: dict[str, Any] | None = None,
    feature_set: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    weights: WeightStorageSettings | None = None,
    placement: PackedRef | None = None,
) -> ArtifactRef:
    """Write the weights, then bundle.json (atomically each); return the ref of bundle.json.

    ``placement``: the weights are already in a pack (``write_pack``); bundle.json records the
    ref and no weights file is written. Otherwise ``weights`` (the platform's
    ``WeightStorageSettings``) picks the placement by size; None keeps ``model.safetensors``.
    """
    parts = bundle_dir(name, version)
    state = model.state_dict()
    weight_bytes = state_dict_bytes(state)
    label = f"{name}@v{version}"
    files: dict[str, str] = {}
    if placement is not None:
        _check_ref_fits(placement, state, label)
        placed: dict[str, Any] = {"kind": "packed", "ref": placement.to_dict()}
    else:
        kind = placement_for(weight_bytes, weights)
        if kind == "packed":
            placed = {"kind": "packed", "inline": _inline(state, label)}
        elif kind == "file":
            ref = save_weights(storage, state, *parts, WEIGHTS_FILE, metadata={"mlplat_model": label})
            files[WEIGHTS_FILE] = ref.sha256
            placed = {"kind": "file", "file": WEIGHTS_FILE}
        else:
            assert weights is not None  # placement_for gives "sharded" only with settings
            placed = _save_sharded(storage, parts, state, weights.shard_max_bytes, label, weight_bytes, files)
    meta = {
        "format": BUNDLE_FORMAT if placed["kind"] == "file" else _PLACED_FORMAT,
        "name": name,
        "version": int(version),
        "spec": spec.model_dump(mode="json"),
        "input_columns": list(input_columns),
        "input_dim": len(input_columns),
        "label_columns": list(label_columns or []),
        "encoder": encoder,
        "feature_set": feature_set,
        "metrics": metrics or {},
        "extra": extra or {},
        "placement": placed,
        "weight_bytes": weight_bytes,
        "files": files,
        "created_at": time.time(),
    }
    return storage.write_bytes(json.dumps(meta, indent=2, sort_keys=True, default=str).encode(), *parts, BUNDLE_FILE)


def _check_ref_fits(ref: PackedRef, state: dict[str, Any], label: str) -> None:
    """The packed member must hold exactly this model's tensors: caught at save, not at the first load."""
    table = {t.name: (t.shape, t.end - t.start) for t in ref.tensors}
    model_side = {k: (tuple(int(d) for d in v.shape), tensor_nbytes(v)) for k, v in state.items()}
    if table != model_side:
        differ = sorted(k for k in set(table) | set(model_side) if table.get(k) != model_side.get(k))
        raise IntegrityError(f"packed member {ref.member!r} of pack {ref.pack!r} does not hold the weights of {label}: "
                             f"tensors {differ[:5]} differ in name, shape or size; pass the ref write_pack returned "
                             "for this model")


def _inline(state: dict[str, Any], label: str) -> dict[str, Any]:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata={"mlplat_model": label})
    return {"format": "safetensors", "encoding": "base64", "sha256": sha256_bytes(data), "size_bytes": len(data),
            "data": base64.b64encode(data).decode("ascii")}


def _save_sharded(storage: Storage, parts: tuple[str, ...], state: dict[str, Any], shard_max_bytes: int, label: str,
                  weight_bytes: int, files: dict[str, str]) -> dict[str, Any]:
    groups: list[dict[str, Any]] = [{}]
    used = 0
    for key, tensor in state.items():
        n = tensor_nbytes(tensor)
        if groups[-1] and used + n > shard_max_bytes:
            groups.append({})
            used = 0
        groups[-1][key] = tensor
        used += n
    shards, weight_map = [], {}
    for i, group in enumerate(groups):
        file = sharded_file_name(i, len(groups))
        ref = save_weights(storage, group, *parts, file, metadata={"format": "pt", "mlplat_model": label})
        files[file] = ref.sha256
        shards.append({"file": file, "sha256": ref.sha256, "size_bytes": ref.size_bytes, "tensors": len(group)})
        weight_map.update(dict.fromkeys(group, file))
    index = storage.write_json({"metadata": {"total_size": weight_bytes, "mlplat_model": label}, "weight_map": weight_map},
                               *parts, SHARD_INDEX_FILE)
    files[SHARD_INDEX_FILE] = index.sha256
    return {"kind": "sharded", "index": SHARD_INDEX_FILE, "shards": shards}


def load_bundle(storage: Storage, name: str, version: int, *, expected_sha256: str | None,
                device: str = "cpu") -> LoadedBundle:
    """Load and verify a bundle: bundle.json against ``expected_sha256`` (from the registry),
    the weights against bundle.json, whatever their placement; safetensors only. The model is
    returned in eval mode on ``device`` (sharded weights stream there shard by shard).
    Raises NotFound / IntegrityError."""
    parts = bundle_dir(name, version)
    where = storage.uri_of(*parts, BUNDLE_FILE)
    try:
        raw = storage.read_bytes(*parts, BUNDLE_FILE)
    except NotFound:
        raise NotFound(f"model {name} v{version} has no bundle at {storage.uri_of(*parts)}/ (never completed?)") from None
    if expected_sha256 is not None and sha256_bytes(raw) != expected_sha256:
        raise IntegrityError(
            f"{where} has sha256 {sha256_bytes(raw)[:12]}..., the registry recorded "
            f"{expected_sha256[:12]}...: the bundle was changed after registration"
        )
    try:
        meta = json.loads(raw)
        spec = ModelSpec.model_validate(meta["spec"])
        input_dim = int(meta["input_dim"])
        placed = meta.get("placement") or {"kind": "file", "file": WEIGHTS_FILE}  # format 1 bundles have none
        kind = placed["kind"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{where} is not a valid bundle: {exc}") from None
    model = build_model(spec, input_dim)
    label = f"{name} v{version}"
    if kind == "sharded":
        _load_sharded(storage, parts, placed, model.to(device), label, where)
    else:
        if kind == "file":
            try:
                state = load_weights(storage, *parts, WEIGHTS_FILE, expected_sha256=meta["files"][WEIGHTS_FILE])
            except (KeyError, TypeError):
                raise IntegrityError(f"{where} is not a valid bundle: no sha256 of {WEIGHTS_FILE} in 'files'") from None
        elif kind == "packed":
            state = _load_packed(storage, placed, where)
        else:
            raise IntegrityError(f"{where} places the weights as {kind!r}, which this mlplat does not know (packed, "
                                 "file, sharded): it was written by a newer mlplat; upgrade this one")
        _fit(model, state, label, strict=True)
        model.to(device)
    model.eval()
    return LoadedBundle(model=model, spec=spec, meta=meta)


def _load_packed(storage: Storage, placed: dict[str, Any], where: str) -> dict[str, Any]:
    if "ref" in placed:
        ref = PackedRef.from_dict(placed["ref"], where=f"{where} placement.ref")
        return read_member(storage, ref)
    try:
        inline = placed["inline"]
        data = base64.b64decode(inline["data"], validate=True)
        sha = inline["sha256"]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise IntegrityError(f"{where} is not a valid bundle: its inline weights are malformed ({exc})") from None
    return load_weights_bytes(data, f"{where} (inline weights)", expected_sha256=sha)


def _load_sharded(storage: Storage, parts: tuple[str, ...], placed: dict[str, Any], model: Any, label: str,
                  where: str) -> None:
    """One shard in memory at a time: read, verify, copy into the model's parameters (on its device), drop."""
    try:
        shards = [(str(s["file"]), str(s["sha256"])) for s in placed["shards"]]
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"{where} is not a valid bundle: its shard list is malformed ({exc})") from None
    if not shards:
        raise IntegrityError(f"{where} is not a valid bundle: sharded placement with no shards")
    loaded: set[str] = set()
    for file, sha in shards:
        state = load_weights(storage, *parts, file, expected_sha256=sha)
        again = loaded.intersection(state)
        if again:
            raise IntegrityError(f"{storage.uri_of(*parts, file)} repeats tensors {sorted(again)[:5]} of an earlier shard")
        _fit(model, state, label, strict=False)
        loaded.update(state)
        del state
    missing = sorted(set(model.state_dict()) - loaded)
    if missing:
        raise IntegrityError(f"weights of {label} do not fit its architecture: the shards lack {missing[:5]}")


def _fit(model: Any, state: dict[str, Any], label: str, *, strict: bool) -> None:
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise IntegrityError(f"weights of {label} do not fit its architecture: {exc}") from None
    if not strict and result.unexpected_keys:
        raise IntegrityError(f"weights of {label} do not fit its architecture: unexpected tensors "
                             f"{sorted(result.unexpected_keys)[:5]}")
