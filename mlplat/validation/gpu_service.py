"""Batch inference on GPUs through long-lived inference actors, started once per cluster namespace.

Ray Data's actor pool starts its actors for every dataset it runs: on an H100 that was most of
an 8.6 s validation of 1M rows (process start, ``import torch``, CUDA context, bundle load) against
0.84 s for a bare loop. Here each GPU gets one named, detached :class:`InferenceService`
(``mlplat-inference-<device>-<i>`` in the caller's namespace, ``get_if_exists``), which keeps its
CUDA context, a pinned host buffer and the bundles it loaded (the process LRU of
:func:`mlplat.validation.inference._load`, keyed by sha256 and file size/mtime) from call to
call. Validation and ``mlplat score`` reuse the same actors.

The Ray Data side runs plain tasks (warm worker processes, no actor start): each reads its rows,
builds the float32 feature matrix of every bundle (the bundle's fitted encoder applied on the CPU,
in parallel over the cluster's cores) and sends it to one service, which copies it into pinned
memory, moves it to the device with ``non_blocking``, runs the model once per
:data:`DEVICE_BATCH_ROWS`-row batch and copies the predictions back once.

An idle service exits after :data:`IDLE_RELEASE_S` seconds without a call (``MLPLAT_INFERENCE_IDLE_S``),
so its GPU goes back to training; :func:`release_services` stops them at once.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["InferenceService", "service_options", "service_names", "get_services", "release_services",
           "DEVICE_BATCH_ROWS", "IDLE_RELEASE_S", "GPUS_PER_SERVICE", "SERVICE_PREFIX", "pick_service"]

#: Rows per device forward (and per task batch sent to a service): large enough that a small MLP
#: is not launch-bound on a GPU, small enough (65,536 x 1,024 float32 = 256 MiB) for any card.
DEVICE_BATCH_ROWS = int(os.environ.get("MLPLAT_INFERENCE_DEVICE_BATCH_ROWS", "65536"))
IDLE_RELEASE_S = float(os.environ.get("MLPLAT_INFERENCE_IDLE_S", "120"))
#: GPUs each service reserves (Ray resource); 1 = the card to itself while it lives.
GPUS_PER_SERVICE = float(os.environ.get("MLPLAT_INFERENCE_GPUS_PER_SERVICE", "1"))
SERVICE_PREFIX = "mlplat-inference"
_IDLE_POLL_S = 5.0


def service_names(device: str, count: int) -> list[str]:
    """The services' actor names.

    >>> service_names("cuda", 2)
    ['mlplat-inference-cuda-0', 'mlplat-inference-cuda-1']
    """
    return [f"{SERVICE_PREFIX}-{device}-{i}" for i in range(count)]


def service_options(name: str, device: str, *, gpus_per_service: float = GPUS_PER_SERVICE,
                    namespace: str | None = None) -> dict[str, Any]:
    """The Ray actor options of one service: named, detached, reused (``get_if_exists``), never
    restarted (a lost service is started again by the next call), a GPU share and a CPU on
    ``cuda``; no resources on ``cpu`` (the CPU device is there to test the path without a GPU).

    >>> service_options("mlplat-inference-cuda-0", "cuda")["num_gpus"], service_options("x", "cpu")["num_gpus"]
    (1.0, 0)
    """
    return {"name": name, "namespace": namespace, "lifetime": "detached", "get_if_exists": True, "max_restarts": 0,
            "num_cpus": 1 if device == "cuda" else 0, "num_gpus": gpus_per_service if device == "cuda" else 0,
            "max_concurrency": 1}


def pick_service(key: int, count: int) -> int:
    """Which service a batch goes to: spread by a key (the batch's first row bytes' crc32).

    >>> sorted({pick_service(k, 2) for k in range(10)})
    [0, 1]
    """
    return key % max(count, 1)


class InferenceService:
    """One device's inference process (a Ray actor: see :func:`get_services`)."""

    def __init__(self, device: str = "cuda", idle_release_s: float = IDLE_RELEASE_S):
        started = time.perf_counter()
        import torch

        imported = time.perf_counter()
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.zeros(1, device=self.device)  # the CUDA context, now rather than at the first call
            torch.cuda.synchronize()
        self.timings: dict[str, Any] = {"import_torch_s": round(imported - started, 3),
                                        "device_init_s": round(time.perf_counter() - imported, 3),
                                        "pid": os.getpid(), "device": str(self.device), "calls": 0,
                                        "bundle_loads_s": []}
        self._pinned: Any = None
        self._staged: Any = None  # CUDA event: the last copy out of the pinned buffer is done
        self._last_call = time.monotonic()
        self._busy = False
        self._idle_s = idle_release_s
        if idle_release_s > 0:
            threading.Thread(target=self._release_when_idle, name="mlplat-inference-idle", daemon=True).start()

    def ready(self) -> dict[str, Any]:
        self._last_call = time.monotonic()
        return dict(self.timings)

    def predict(self, storage: Any, refs: Sequence[Any], matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One prediction array per bundle (``refs[i]`` applied to ``matrices[i]``)."""
        from mlplat.models import predict_outputs
        from mlplat.validation.inference import _load

        self._busy, self._last_call = True, time.monotonic()
        torch = self.torch
        try:
            out = []
            for ref, matrix in zip(refs, matrices, strict=True):
                began = time.perf_counter()
                model, task, _, _ = _load(storage, ref, self.device, True)
                loaded = time.perf_counter() - began
                if loaded > 0.05:
                    self.timings["bundle_loads_s"].append(round(loaded, 3))
                preds = []
                with torch.inference_mode():
                    for lo in range(0, max(len(matrix), 1), DEVICE_BATCH_ROWS):
                        x = self._to_device(matrix[lo:lo + DEVICE_BATCH_ROWS])
                        preds.append(predict_outputs(task, model(x)).float())
                    result = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, dtype=np.float32)
                out.append(result)
            self.timings["calls"] += 1
            return out
        finally:
            self._busy, self._last_call = False, time.monotonic()

    def _to_device(self, x: np.ndarray) -> Any:
        """``x`` on the device: through a reused pinned buffer and a non-blocking copy on CUDA."""
        torch = self.torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.device.type != "cuda":
            return torch.from_numpy(x)
        if self._staged is not None:
            self._staged.synchronize()  # the previous batch's copy has left the pinned buffer
        if self._pinned is None or self._pinned.numel() < x.size:
            self._pinned = torch.empty(max(x.size, 1), dtype=torch.float32, pin_memory=True)
        staged = self._pinned[:x.size].view(x.shape)
        np.copyto(staged.numpy(), x)
        on_device = staged.to(self.device, non_blocking=True)
        self._staged = torch.cuda.Event()
        self._staged.record()
        return on_device

    def stats(self) -> dict[str, Any]:
        return dict(self.timings)

    def _release_when_idle(self) -> None:
        import ray

        while True:
            time.sleep(min(_IDLE_POLL_S, self._idle_s))
            if not self._busy and time.monotonic() - self._last_call > self._idle_s:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


def get_services(device: str, count: int, *, gpus_per_service: float = GPUS_PER_SERVICE) -> list[Any]:
    """The ``count`` services of ``device`` in this job's namespace, started if missing, ready.
    (``get_if_exists`` ignores new constructor arguments: a running service keeps its own.)

    Missing services start together: each one's start (process, ``import torch``, CUDA context;
    ~3 s on an H200 host) overlaps the others', so a cold call waits for one start, not ``count``."""
    import ray
    from ray.exceptions import RayActorError

    remote = ray.remote(InferenceService)

    def start(name: str) -> Any:
        options = service_options(name, device, gpus_per_service=gpus_per_service)
        return remote.options(**options).remote(device)  # type: ignore[attr-defined]

    names = service_names(device, count)
    handles = [start(name) for name in names]
    waits = [handle.ready.remote() for handle in handles]  # type: ignore[attr-defined]
    for i, name in enumerate(names):
        try:
            ray.get(waits[i])
        except RayActorError:  # found one that was exiting (idle release): wait for its name, start anew
            _wait_gone(name)
            handles[i] = start(name)
            ray.get(handles[i].ready.remote())  # type: ignore[attr-defined]
    return handles


def _wait_gone(name: str, timeout_s: float = 30.0) -> None:
    """Wait until no live actor holds ``name`` (a killed actor keeps it for a moment)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            return
        time.sleep(0.1)


def release_services(device: str = "cuda", count: int = 64) -> int:
    """Stop this namespace's services of ``device`` now (their GPUs go back); returns how many."""
    import ray

    stopped = 0
    for name in service_names(device, count):
        try:
            ray.kill(ray.get_actor(name), no_restart=True)
        except ValueError:
            continue
        stopped += 1
        _wait_gone(name)
    return stopped


def batch_key(matrix: np.ndarray) -> int:
    """A cheap key of a batch for :func:`pick_service`."""
    return zlib.crc32(matrix[:1].tobytes()) if len(matrix) else 0
