"""Training checkpoints: safetensors weights + optimizer state + state.json, sealed by a manifest.

A checkpoint directory is trusted only if its ``_MANIFEST.json`` exists and every listed file has
the recorded sha256 (partial uploads and bit rot are caught: ray-2.60-notes.md, #41700). When the
latest checkpoint fails that check, :func:`latest_valid_checkpoint` falls back to the one before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from mlplat.errors import IntegrityError, NotFound, StorageError
from mlplat.storage import MANIFEST_NAME, Storage, load_weights, open_root, save_weights

__all__ = [
    "MODEL_FILE",
    "BEST_FILE",
    "OPTIM_FILE",
    "STATE_FILE",
    "CheckpointState",
    "write_checkpoint",
    "verify_checkpoint",
    "read_checkpoint",
    "list_checkpoints",
    "latest_valid_checkpoint",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
]

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class CheckpointState:
    """What a verified checkpoint holds (tensors loaded lazily by the caller)."""

    path: str
    state: dict[str, Any]
    storage: Storage

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    def model_weights(self, best: bool = False) -> dict[str, Any]:
        name = BEST_FILE if best and self.storage.exists(BEST_FILE) else MODEL_FILE
        return load_weights(self.storage, name, expected_sha256=self._sha(name))

    def optimizer_state(self) -> dict[str, Any] | None:
        meta = self.state.get("optimizer")
        if meta is None:
            return None
        tensors = load_weights(self.storage, OPTIM_FILE, expected_sha256=self._sha(OPTIM_FILE)) if self.storage.exists(OPTIM_FILE) else {}
        return unflatten_optimizer_state(tensors, meta)

    def _sha(self, name: str) -> str | None:
        return self.state.get("_files", {}).get(name)


def _dir_storage(fs: pafs.FileSystem, path: str) -> Storage:
    return Storage(uri=f"{type(fs).__name__}:{path}", fs=fs, base=path.rstrip("/"))


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """torch optimizer state -> (tensors for safetensors, JSON metadata). No pickle involved."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict.get("state", {}).items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state_dict.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = tensor
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta.get("param_groups", [])}


def write_checkpoint(directory: str, *, model_state: dict[str, Any], optimizer_state: dict[str, Any] | None,
                     state: dict[str, Any], best_state: dict[str, Any] | None = None) -> dict[str, str]:
    """Write a checkpoint into a local ``directory`` and seal it with a manifest (written last)."""
    storage = open_root(directory)
    files: dict[str, str] = {}
    files[MODEL_FILE] = save_weights(storage, model_state, MODEL_FILE).sha256
    if best_state is not None:
        files[BEST_FILE] = save_weights(storage, best_state, BEST_FILE).sha256
    meta = dict(state)
    if optimizer_state is not None:
        tensors, optim_meta = flatten_optimizer_state(optimizer_state)
        files[OPTIM_FILE] = save_weights(storage, tensors, OPTIM_FILE).sha256
        meta["optimizer"] = optim_meta
    files[STATE_FILE] = storage.write_bytes(json.dumps(meta, sort_keys=True, default=str).encode(), STATE_FILE).sha256
    storage.write_manifest(files, epoch=int(state["epoch"]))
    return files


def verify_checkpoint(fs: pafs.FileSystem, path: str) -> CheckpointState:
    """Verify a checkpoint directory against its manifest; IntegrityError / NotFound if not complete."""
    storage = _dir_storage(fs, path)
    try:
        manifest = storage.verify_manifest()
    except NotFound:
        raise IntegrityError(f"checkpoint {path} has no {MANIFEST_NAME}: it was never completed") from None
    state = storage.read_json(STATE_FILE)
    state["_files"] = manifest.get("files", {})
    return CheckpointState(path=path, state=state, storage=storage)


def read_checkpoint(checkpoint: Any) -> CheckpointState:
    """Verify a ``ray.train.Checkpoint`` (its filesystem and path)."""
    return verify_checkpoint(checkpoint.filesystem, checkpoint.path)


def list_checkpoints(fs: pafs.FileSystem, run_dir: str) -> list[str]:
    """Checkpoint directories of a run, oldest first (Ray names them by time)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(run_dir.rstrip("/"), allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list checkpoints under {run_dir}: {exc}") from exc
    dirs = [i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]
    return sorted(dirs, key=lambda p: p.rsplit("/", 1)[-1])


def latest_valid_checkpoint(fs: pafs.FileSystem, run_dir: str, *, preferred: str | None = None,
                            rejected: list[dict[str, str]] | None = None) -> CheckpointState | None:
    """The newest checkpoint of a run that passes verification.

    ``preferred`` (what Ray hands back) is tried first, then the others newest first; every
    candidate that fails is appended to ``rejected`` with the reason.
    """
    candidates = list(reversed(list_checkpoints(fs, run_dir)))
    if preferred:
        preferred = preferred.rstrip("/")
        candidates = [preferred, *(c for c in candidates if c != preferred)]
    for path in candidates:
        try:
            return verify_checkpoint(fs, path)
        except (IntegrityError, NotFound, StorageError, ValueError, KeyError) as exc:
            log.warning("checkpoint %s rejected: %s", path, exc)
            if rejected is not None:
                rejected.append({"path": path, "reason": str(exc)})
    return None
