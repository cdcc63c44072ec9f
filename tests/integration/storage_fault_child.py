"""A process that writes one model bundle into a storage root that cannot take it, for the F9
tests: ``full`` caps the size of any file this process writes (RLIMIT_FSIZE: the write fails
with EFBIG, as on a full disk); ``readonly`` expects the caller to have made the root read-only
(and, as root, to run this as an unprivileged user). Prints one JSON line: the error's type and
message, or ``{"ok": true}``.

    python -m tests.integration.storage_fault_child ROOT MODE
"""

from __future__ import annotations

import json
import resource
import signal
import sys

from mlplat.models import ModelSpec, build_model, save_bundle
from mlplat.storage import open_root

#: The weights of the model written here are ~1 MB; the cap lets small files (bundle.json) through.
FSIZE_LIMIT_BYTES = 64 * 1024


def main(argv: list[str]) -> int:
    root, mode = argv
    if mode == "full":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT_BYTES, FSIZE_LIMIT_BYTES))
    spec = ModelSpec(task="binary", hidden=[512, 512])
    model = build_model(spec, 32)
    try:
        storage = open_root(root, create=False)
        save_bundle(storage, "f9-model", 1, model, spec=spec, input_columns=[f"x{i}" for i in range(32)])
    except Exception as exc:
        print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        return 0
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
