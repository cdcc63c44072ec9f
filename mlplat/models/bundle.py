"""The model bundle: ``models/<name>/v<N>/{model.safetensors, bundle.json}``.

``bundle.json`` is written last and lists the sha256 of every file, so it doubles as the
completion marker: a directory without it is an unfinished write. The registry records the
sha256 of ``bundle.json`` itself, which closes the chain: registry -> bundle -> weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mlplat.errors import IntegrityError, NotFound
from mlplat.models.zoo import ModelSpec, build_model
from mlplat.names import validate_name
from mlplat.records import ArtifactRef
from mlplat.storage import Storage, load_weights, save_weights, sha256_bytes

__all__ = ["BUNDLE_FILE", "WEIGHTS_FILE", "BUNDLE_FORMAT", "LoadedBundle", "bundle_dir", "save_bundle", "load_bundle"]

BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
BUNDLE_FORMAT = 1


def bundle_dir(name: str, version: int) -> tuple[str, str, str]:
    return ("models", validate_name(name, "model name"), f"v{int(version)}")


@dataclass(frozen=True)
class LoadedBundle:
    """A model ready for inference (eval mode, CPU unless moved) and its bundle metadata."""

    model: Any
    spec: ModelSpec
    meta: dict[str, Any]

    @property
    def input_columns(self) -> list[str]:
        return list(self.meta["input_columns"])

    @property
    def encoder(self) -> dict[str, Any] | None:
        return self.meta.get("encoder")


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
) -> ArtifactRef:
    """Write weights then bundle.json (atomically each); return the ref of bundle.json."""
    parts = bundle_dir(name, version)
    weights = save_weights(storage, model.state_dict(), *parts, WEIGHTS_FILE,
                           metadata={"mlplat_model": f"{name}@v{version}"})
    meta = {
        "format": BUNDLE_FORMAT,
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
        "files": {WEIGHTS_FILE: weights.sha256},
        "created_at": time.time(),
    }
    return storage.write_bytes(json.dumps(meta, indent=2, sort_keys=True, default=str).encode(), *parts, BUNDLE_FILE)


def load_bundle(storage: Storage, name: str, version: int, *, expected_sha256: str | None) -> LoadedBundle:
    """Load and verify a bundle: bundle.json against ``expected_sha256`` (from the registry),
    the weights against bundle.json; safetensors only. Raises NotFound / IntegrityError."""
    parts = bundle_dir(name, version)
    try:
        raw = storage.read_bytes(*parts, BUNDLE_FILE)
    except NotFound:
        raise NotFound(f"model {name} v{version} has no bundle at {storage.uri_of(*parts)}/ (never completed?)") from None
    if expected_sha256 is not None and sha256_bytes(raw) != expected_sha256:
        raise IntegrityError(
            f"{storage.uri_of(*parts, BUNDLE_FILE)} has sha256 {sha256_bytes(raw)[:12]}..., the registry recorded "
            f"{expected_sha256[:12]}...: the bundle was changed after registration"
        )
    try:
        meta = json.loads(raw)
        spec = ModelSpec.model_validate(meta["spec"])
        weights_sha = meta["files"][WEIGHTS_FILE]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{storage.uri_of(*parts, BUNDLE_FILE)} is not a valid bundle: {exc}") from None
    state = load_weights(storage, *parts, WEIGHTS_FILE, expected_sha256=weights_sha)
    model = build_model(spec, int(meta["input_dim"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise IntegrityError(f"weights of {name} v{version} do not fit its architecture: {exc}") from None
    model.eval()
    return LoadedBundle(model=model, spec=spec, meta=meta)
