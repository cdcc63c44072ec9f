"""The KServe peer side of P1 (bench/serving.py): KServe's Python model server serving the same
``load_servable`` object as the bare side, on its v1 route (``/v1/models/hot:predict``).

KServe is not one of mlplat's dependencies: this runs under a Python that has ``kserve`` and
``torch`` (``BENCH_KSERVE_PYTHON``, e.g. a separate venv: ``python -m venv /tmp/ksv &&
/tmp/ksv/bin/pip install 'kserve==0.21.*' torch safetensors pyarrow``), with this repository on
``PYTHONPATH``. ``python bench/kserve_side.py PORT ROOT WORKERS``; the root holds the model that
bench/serving.py built. With WORKERS > 1 KServe pickles the model object into each worker
process, so each process loads the servable itself, on its first request (the warm-up).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kserve import Model, ModelServer


class Hot(Model):
    def __init__(self, root: str) -> None:
        super().__init__("hot")
        self.root = root
        self.servable: Any = None
        self.ready = True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "servable": None}

    async def predict(self, payload, headers=None, response_headers=None):
        if self.servable is None:
            from mlplat.serving.runtime import load_servable
            from mlplat.storage import open_root

            self.servable = load_servable(open_root(self.root), "hot", 1, None)
        return {"model_version": "1", "predictions": self.servable.predict_rows(payload["instances"])}


if __name__ == "__main__":
    port, root, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print("READY", flush=True)
    os.dup2(2, 1)  # KServe logs every request to stdout: into the side's log, not the driver's unread pipe
    ModelServer(http_port=port, workers=workers, enable_grpc=False).start([Hot(root)])  # KServe's defaults otherwise
