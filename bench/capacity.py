"""The capacity model of docs/scaling.md, computed from the measured rows in bench/results/.

    python -m bench.capacity [--models 10000] [--rps 5000] [--hot 10] [--hot-rps 1000] [--gpu-models 0]

Every input is a benchmark row (file, id, metric) and the output names it, so each figure in
the doc traces back to a measurement; a row that is missing shows as "not measured" and the
figures that need it are left out. The arithmetic is :func:`plan`, a pure function.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Measured:
    """One input of the model: a value and the row it comes from."""

    value: float | None
    source: str


def measured(file: str, bench_id: str, contains: str, *, field: str = "value") -> Measured:
    """The ``field`` of the first row of ``bench/results/<file>.json`` with this id whose metric
    contains ``contains``."""
    path = RESULTS / f"{file}.json"
    source = f"{file}.json {bench_id} '{contains}'"
    if not path.exists():
        return Measured(None, source + " (no file)")
    for r in json.loads(path.read_text()):
        if r.get("id") == bench_id and contains in r.get("metric", ""):
            value = r.get(field)
            machine = r.get("machine", {})
            where = f"{machine.get('cores')} cores" + (f", {machine['gpu']}" if machine.get("gpu") else "")
            return Measured(None if value is None else float(value), f"{source} ({where}, {r.get('date')})")
    return Measured(None, source + " (no such row)")


def inputs() -> dict[str, Measured]:
    return {
        "ingress_rps_2cores": measured("serving", "P1", "mlplat+haproxy, 2 ingress replicas, v1"),
        "pool_rps_2cores": measured("serving", "P1", "the model in the pool"),
        "dedicated_rps_2cores": measured("serving", "P1", "the model in the dedicated"),
        "pool_kb_per_model": measured("pool-scale", "P4-scale", "pool memory per loaded model"),
        "cold_member_p99_ms": measured("pool-scale", "P4-scale", "cold load p50, member", field="p99_ms"),
        "cold_single_p99_ms": measured("pool-scale", "P4-scale", "cold load p50, single", field="p99_ms"),
        "gpu_serving_rps": measured("serving-gpu", "serving-gpu", "dedicated deployment on"),
        "registry_batch_writes_s": measured("registry", "P8", "postgresql: writes/s via actor, batch(100)"),
        "registry_single_writes_s": measured("registry", "P8", "postgresql: writes/s via actor, 1 call"),
        "features_rows_s_2cores": measured("features", "P5", "10,000,000 rows"),
        "drift_rows_s_2cores": measured("monitoring", "drift-job", "window_partial"),
        "family_models_s_2cores": measured("families", "family-train-2000", "models/s"),
    }


def plan(m: dict[str, float | None], *, models: int, rps: float, hot: int, hot_rps: float, cores_per_node: int = 16,
         pool_budget_mb: float = 2048.0, row_bytes: float = 200.0) -> dict[str, Any]:
    """Cores and nodes for ``models`` models taking ``rps`` requests/s in all, of which ``hot``
    models take ``hot_rps`` each in dedicated deployments and the rest go through the pool;
    pool replicas the loaded models' memory needs; registry time for one new version of every
    model; feature-encoding throughput per node.

    The P1 rows are whole-path rates on 2 cores (ingress and the model's deployment on the same
    cores), so a path's cores are its request rate over (its P1 req/s / 2).

    >>> p = plan({"ingress_rps_2cores": 2000, "pool_rps_2cores": 1000, "dedicated_rps_2cores": 500,
    ...           "pool_kb_per_model": 100, "registry_batch_writes_s": 1000, "features_rows_s_2cores": 1e6},
    ...          models=10_000, rps=5000, hot=2, hot_rps=1000)
    >>> p["cores_tail_via_pool"], p["cores_hot_via_dedicated"], p["cores_hot_in_ingress"], p["serving_nodes"]
    (6, 8, 2, 1)
    >>> p["pool_replicas_for_memory"], p["registry_s_per_version_of_every_model"]
    (1, 60.0)
    """
    out: dict[str, Any] = {}
    tail_rps, hot_total = max(0.0, rps - hot * hot_rps), hot * hot_rps
    if m.get("pool_rps_2cores"):
        out["cores_tail_via_pool"] = math.ceil(tail_rps / (m["pool_rps_2cores"] / 2))
    if m.get("dedicated_rps_2cores") and hot:
        out["cores_hot_via_dedicated"] = math.ceil(hot_total / (m["dedicated_rps_2cores"] / 2))
    if m.get("ingress_rps_2cores") and hot:  # the alternative placement for small hot models
        out["cores_hot_in_ingress"] = math.ceil(hot_total / (m["ingress_rps_2cores"] / 2))
    hot_cores = min((out[k] for k in ("cores_hot_via_dedicated", "cores_hot_in_ingress") if k in out), default=0)
    if "cores_tail_via_pool" in out:
        out["serving_cores"] = out["cores_tail_via_pool"] + hot_cores
        out["serving_nodes"] = math.ceil(out["serving_cores"] / cores_per_node)
    if m.get("pool_kb_per_model"):
        out["pool_replicas_for_memory"] = math.ceil((models - hot) * m["pool_kb_per_model"] / 1024 / pool_budget_mb)
    if m.get("registry_batch_writes_s"):
        # a version's life: register, 4 transitions, promote = 6 writes, in batches of 100
        out["registry_s_per_version_of_every_model"] = round(models * 6 / m["registry_batch_writes_s"], 1)
    if m.get("features_rows_s_2cores"):
        node_rows_s = m["features_rows_s_2cores"] / 2 * cores_per_node
        out["feature_rows_s_per_node"] = node_rows_s
        out["hours_to_encode_100TB_on_one_node"] = round(100e12 / row_bytes / node_rows_s / 3600, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--rps", type=float, default=5_000)
    parser.add_argument("--hot", type=int, default=10)
    parser.add_argument("--hot-rps", type=float, default=200)
    parser.add_argument("--cores-per-node", type=int, default=16)
    parser.add_argument("--row-bytes", type=float, default=200.0, help="bytes per feature row (for the TB figure)")
    args = parser.parse_args()
    ins = inputs()
    print("| input | value | row |\n|---|---|---|")
    for name, m in ins.items():
        print(f"| {name} | {'not measured' if m.value is None else f'{m.value:,.4g}'} | {m.source} |")
    out = plan({k: v.value for k, v in ins.items()}, models=args.models, rps=args.rps, hot=args.hot, hot_rps=args.hot_rps,
               cores_per_node=args.cores_per_node, row_bytes=args.row_bytes)
    print(f"\n{args.models:,} models, {args.rps:,.0f} req/s, {args.hot} hot models at {args.hot_rps:,.0f} req/s each:\n")
    print("| figure | value |\n|---|---|")
    for k, v in out.items():
        print(f"| {k} | {v:,.4g} |" if isinstance(v, float) else f"| {k} | {v:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
