"""Pure decisions of the training organizer (no Ray, no torch): unit-tested on their own."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlplat.errors import ResourceError

__all__ = [
    "improved",
    "best_index",
    "should_stop_early",
    "worker_resources",
    "run_footprint",
    "concurrency_limit",
    "first_nonfinite",
]


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True if ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def best_index(values: Sequence[float], mode: str, min_delta: float = 0.0) -> int | None:
    """Index of the best value (the first to reach it), or None when there is none."""
    best, idx = None, None
    for i, value in enumerate(values):
        if improved(value, best, mode, min_delta):
            best, idx = value, i
    return idx


def should_stop_early(values: Sequence[float], mode: str, patience: int | None, min_delta: float = 0.0) -> bool:
    """Stop once ``patience`` epochs have passed without improving on the best value.

    >>> should_stop_early([1.0, 0.9, 0.95, 0.93], "min", patience=2)
    True
    >>> should_stop_early([1.0, 0.9, 0.95], "min", patience=2)
    False
    """
    if not patience or not values:
        return False
    idx = best_index(values, mode, min_delta)
    if idx is None:  # nothing finite yet
        return len(values) >= patience
    return len(values) - 1 - idx >= patience


def first_nonfinite(history: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("train_loss", "val_loss")) -> int | None:
    """Epoch of the first history entry with a non-finite loss, or None."""
    for entry in history:
        for key in keys:
            value = entry.get(key)
            if value is not None and not math.isfinite(float(value)):
                return int(entry["epoch"])
    return None


def worker_resources(num_workers: int, use_gpu: bool, requested: Mapping[str, float] | None,
                     cluster: Mapping[str, float], allow_cpu_fallback: bool = False) -> tuple[bool, dict[str, float], str | None]:
    """Resolve ``(use_gpu, resources_per_worker, note)`` for a run on a cluster of ``cluster`` resources.

    - GPUs asked for but absent: :class:`ResourceError`, or CPU fallback when allowed (``note`` says so).
    - ``requested`` unset: each worker gets ``min(1, (cpus - 1) / num_workers)`` CPUs (at least 0.25), so
      one CPU stays free for the Ray Data stage feeding training (the 2-CPU hang of ray-2.60-notes.md).
    """
    note = None
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 0))
    if use_gpu:
        per_worker_gpu = float((requested or {}).get("GPU", 1.0))
        if gpus < num_workers * per_worker_gpu:
            msg = (f"the config asks for {num_workers} worker(s) x {per_worker_gpu:g} GPU but the cluster has {gpus:g} GPU(s)")
            if not allow_cpu_fallback:
                raise ResourceError(f"{msg}; set scaling.use_gpu: false, or scaling.allow_cpu_fallback: true to train on CPU")
            use_gpu, note = False, f"{msg}: falling back to CPU (scaling.allow_cpu_fallback)"
    if requested:
        res = {k: float(v) for k, v in requested.items()}
        if not use_gpu:
            res.pop("GPU", None)
        need_cpu = res.get("CPU", 1.0) * num_workers
        if cpus and need_cpu > cpus:
            raise ResourceError(f"{num_workers} worker(s) x {res.get('CPU', 1.0):g} CPU need {need_cpu:g} CPUs; "
                                f"the cluster has {cpus:g}: lower scaling.num_workers or scaling.resources_per_worker.CPU")
        return use_gpu, res, note
    cpu = 1.0 if cpus <= 0 else max(0.25, min(1.0, (cpus - 1.0) / num_workers))
    if cpus and cpu * num_workers > cpus:
        raise ResourceError(f"{num_workers} workers need at least {cpu * num_workers:g} CPUs; the cluster has {cpus:g}: "
                            "lower scaling.num_workers")
    res = {"CPU": cpu}
    if use_gpu:
        res["GPU"] = 1.0
    return use_gpu, res, note


def run_footprint(num_workers: int, resources_per_worker: Mapping[str, float]) -> dict[str, float]:
    """Resources a run holds while training (workers; the driver and controller take no CPU)."""
    return {k: v * num_workers for k, v in resources_per_worker.items() if v}


def concurrency_limit(cluster: Mapping[str, float], footprint: Mapping[str, float], configured: int | None = None) -> int:
    """How many runs of ``footprint`` fit the cluster at once, never below 1, capped by ``configured``.

    One CPU is kept back for Ray Data when the cluster has more than one.

    >>> concurrency_limit({"CPU": 2}, {"CPU": 1})
    1
    >>> concurrency_limit({"CPU": 16, "GPU": 2}, {"CPU": 1, "GPU": 1})
    2
    """
    fits = None
    for key, need in footprint.items():
        have = float(cluster.get(key, 0))
        if key == "CPU" and have > 1:
            have -= 1
        n = int(have // need) if need > 0 else None
        if n is not None:
            fits = n if fits is None else min(fits, n)
    limit = max(1, fits if fits is not None else 1)
    return min(limit, configured) if configured else limit
