"""Shared benchmark helpers: timing, machine facts, result rows, tables."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def machine() -> dict[str, Any]:
    """Cores and GPU of the machine the numbers come from."""
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return {"cores": os.cpu_count(), "gpu": gpu, "cpu": platform.processor() or platform.machine()}


def free_listen_port(low: int = 20000, high: int = 32000, *, offsets: tuple[int, ...] = (0,)) -> int:
    """A free loopback port in ``low..high``, below the kernel's ephemeral range (32768-60999
    here), with ``port + offset`` free too for each offset (a server's second port). For a
    listener bound after Ray is up: a port from ``bind(0)`` is one that Ray's own outgoing
    connections may take meanwhile (an ingress replica then failed with EADDRINUSE, twice in
    2026-12-01 runs). The benchmarks and the tests' servers (tests/servers.py) both use it."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for _ in range(200):
        port = random.randint(low, high)
        if all(free(port + offset) for offset in offsets):
            return port
    raise RuntimeError(f"no free port in {low}-{high} on 127.0.0.1")


def median_time_s(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(bench_id: str, metric: str, value: float, unit: str, baseline: str | None = None,
        baseline_value: float | None = None, target: str | None = None, **extra: Any) -> dict[str, Any]:
    """One result row in the shape bench/results/*.json uses; ratio = value / baseline_value."""
    ratio = value / baseline_value if baseline_value else None
    return {"id": bench_id, "metric": metric, "value": round(value, 4), "unit": unit, "baseline": baseline,
            "baseline_value": None if baseline_value is None else round(baseline_value, 4),
            "ratio": None if ratio is None else round(ratio, 3), "target": target, **extra}


def stamp(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add machine and date to each row."""
    facts, date = machine(), dt.date.today().isoformat()
    return [{**r, "machine": facts, "date": date} for r in rows]


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of result rows."""
    head = "| id | metric | value | unit | baseline | baseline value | ratio | target | machine | date |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        m = r.get("machine", {})
        where = f"{m.get('cores')} cores" + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
        lines.append(
            f"| {r['id']} | {r['metric']} | {_fmt(r['value'])} | {r['unit']} | {r.get('baseline') or '—'} | "
            f"{_fmt(r.get('baseline_value'))} | {_fmt(r.get('ratio'))} | {r.get('target') or '—'} | {where} | {r.get('date', '')} |"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
