"""A driver process that registers model versions the way training's finish path does
(``training.runner.register_for_training`` + ``finalize``): register, TRAINING, bundle (weights,
then bundle.json), then one registry batch that records the bundle and moves to TRAINED.

The F6 test runs it in a subprocess and SIGKILLs it: at a named point (``kill_at``: the child
kills itself there, mid-write points after half the file's bytes) or, with ``kill_at=none``,
from outside after a random delay while it registers version after version.

    python -m tests.integration.registration_child ROOT REGISTRY_URL KILL_AT LOOPS
(S3 roots take F6_S3_ENDPOINT / F6_S3_ACCESS_KEY / F6_S3_SECRET_KEY from the environment.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from mlplat.config import S3Settings
from mlplat.errors import NotFound
from mlplat.models import BUNDLE_FILE, WEIGHTS_FILE, ModelSpec, build_model, save_bundle
from mlplat.registry import RegistryStore
from mlplat.storage import Storage, open_root

MODEL = "f6-model"
INPUT_DIM = 32
#: Points the child can kill itself at, in the order a registration reaches them.
KILL_POINTS = ("registered", "training", "mid-weights", "weights", "mid-bundle", "bundle", "committed")


def _reached(point: str, kill_at: str) -> None:
    print(f"at {point}", flush=True)
    if point == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


class _HalfThenKill:
    """A write handle that writes half of what it is given, flushes, and SIGKILLs the process."""

    def __init__(self, handle, point: str, kill_at: str):
        self._handle, self._point, self._kill_at = handle, point, kill_at

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        _reached(self._point, self._kill_at)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _instrument(kill_at: str) -> None:
    """Give Storage's atomic writer the kill points inside save_bundle."""
    original = Storage.open_write

    @contextlib.contextmanager
    def open_write(self, *parts):
        name = parts[-1]
        if name == BUNDLE_FILE:
            _reached("weights", kill_at)  # the weights are written, bundle.json not yet
        with original(self, *parts) as handle:
            point = {WEIGHTS_FILE: "mid-weights", BUNDLE_FILE: "mid-bundle"}.get(name)
            yield _HalfThenKill(handle, point, kill_at) if point == kill_at else handle

    Storage.open_write = open_write  # type: ignore[method-assign]


def register_once(registry: RegistryStore, storage: Storage, kill_at: str) -> int:
    version = registry.register_version(MODEL, code_version="f6").version
    _reached("registered", kill_at)
    registry.transition(MODEL, version, "TRAINING", expected_state="REGISTERED")
    _reached("training", kill_at)
    spec = ModelSpec(task="binary", hidden=[512, 512])
    model = build_model(spec, INPUT_DIM)
    ref = save_bundle(storage, MODEL, version, model, spec=spec, input_columns=[f"x{i}" for i in range(INPUT_DIM)])
    _reached("bundle", kill_at)
    registry.batch([
        ("update_version", {"name": MODEL, "version": version, "artifacts": {"bundle": ref.model_dump(mode="json")},
                            "expected_state": "TRAINING"}),
        ("transition", {"name": MODEL, "version": version, "state": "TRAINED", "expected_state": "TRAINING"}),
    ], idempotency_key=f"f6-finish:{version}")
    _reached("committed", kill_at)
    return version


def main(argv: list[str]) -> int:
    root, registry_url, kill_at, loops = argv[0], argv[1], argv[2], int(argv[3])
    s3 = None
    if root.startswith("s3://"):
        s3 = S3Settings(endpoint_url=os.environ["F6_S3_ENDPOINT"], access_key=os.environ["F6_S3_ACCESS_KEY"],
                        secret_key=os.environ["F6_S3_SECRET_KEY"])
    storage = open_root(root, s3)
    registry = RegistryStore(registry_url)
    try:
        registry.get_model(MODEL)
    except NotFound:
        registry.create_model(MODEL)
    _instrument(kill_at)
    print("ready", flush=True)
    for _ in range(loops):
        print(f"done v{register_once(registry, storage, kill_at)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
