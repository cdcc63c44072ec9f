"""`make demo`: run the platform's lifecycle end to end on an embedded local Ray.

Each stage that has landed runs here, in order, on a fresh storage root under
``./.mlplat-demo`` (override with MLPLAT_ROOT), and the demo ends by printing where to look.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mlplat.api import Platform, connect


def _stage_storage(p: Platform) -> str:
    import torch

    from mlplat.storage import load_weights, save_weights

    tensors = {"weight": torch.randn(8, 4), "bias": torch.zeros(4)}
    ref = save_weights(p.storage, tensors, "demo", "storage-check.safetensors")
    loaded = load_weights(p.storage, "demo", "storage-check.safetensors", expected_sha256=ref.sha256)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    return f"safetensors round trip verified (sha256 {ref.sha256[:12]}...) at {p.storage.uri_of(ref.path)}"


STAGES: list[tuple[str, Callable[[Platform], str]]] = [
    ("config + storage", _stage_storage),
]


def main() -> int:
    root = Path(os.environ.get("MLPLAT_ROOT", ".mlplat-demo")).resolve()
    if "MLPLAT_ROOT" not in os.environ and root.exists():
        shutil.rmtree(root)  # the default demo root is scratch: start clean every run
    p = connect(root=str(root))
    print(f"mlplat demo — storage root {p.storage.uri}")
    started = time.perf_counter()
    for name, stage in STAGES:
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        print(f"[{name}] {stage(p)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"\ndone in {time.perf_counter() - started:.1f} s. Look at:\n  {root}/  (everything the demo wrote)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
