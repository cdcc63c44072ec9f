"""Model families: training throughput (models/s) and a member's cold load.

Rows:

- ``family-train-<N>``: ``train_family`` end to end for N entities (partition shuffle, stacked
  fits, pack, N bundle.json, two registry batches) against a baseline that fits the same
  per-entity models (same seeds, batches, optimizer: :func:`mlplat.families.fit.fit_group`) in a
  plain torch loop, one member at a time, in a warm ``multiprocessing`` pool of as many
  processes as the Ray cluster has CPUs, data already grouped in memory (the baseline pays no
  read, write or registry work). Context fields: the Ray side's fit phase alone, and the
  stacked fit (:func:`~mlplat.families.fit.fit_block`) in the same pool.
- ``family-member-cold-load``: ``load_bundle`` of a packed member (bundle.json + one ranged read
  of its shard) against ``load_bundle`` of the same weights saved as a single-file model
  (bundle.json + model.safetensors), on local disk, the same process.

Sides interleave (baseline, ours, baseline, ours, ...) and rows report medians.

The data builders here (:func:`family_table`, :func:`register_family_feature_set`) are shared
with tests/integration/test_families.py.

    python -m bench.families                  # 500 and 2,000 entities
    python -m bench.families --entities 200 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import row, stamp, table

FEATURES = ["x0", "x1", "x2", "x3"]
FAMILY_SPEC = {"task": "regression", "architecture": "mlp", "hidden": [8]}
FIT = {"epochs": 20, "batch_size": 32, "lr": 0.05, "min_rows_per_member": 20}


def family_table(entities: int, rows_per_entity: int = 60, *, seed: int = 0, validation_fraction: float = 0.3,
                 small: int = 0) -> pa.Table:
    """Rows of ``entities`` stores, each with its own linear relation ``target = x @ w_store + b``
    (so one model per store beats one shared model); ``small`` extra stores get only 5 rows."""
    rng = np.random.default_rng(seed)
    names, xs, ys = [], [], []
    for i in range(entities + small):
        n = rows_per_entity if i < entities else 5
        w = rng.normal(size=4).astype(np.float32)
        x = rng.normal(size=(n, 4)).astype(np.float32)
        xs.append(x)
        ys.append(x @ w + rng.normal() + rng.normal(scale=0.1, size=n))
        names += [f"Store {i}"] * n
    x = np.concatenate(xs)
    n_rows = len(names)
    return pa.table({"store": names, **{f: x[:, j] for j, f in enumerate(FEATURES)},
                     "target": np.concatenate(ys).astype(np.float64),
                     "split": np.where(rng.random(n_rows) < validation_fraction, "validation", "train")})


def register_family_feature_set(registry: Any, storage: Any, name: str, data: pa.Table) -> dict[str, Any]:
    """A ready feature set holding ``data`` in the layout mlplat.features writes (manifest last)."""
    from mlplat.records import CATALOG_FEATURE_SET

    record = registry.catalog_register(CATALOG_FEATURE_SET, name, {"status": "pending", "spec": {},
                                                                    "source": {"name": "raw", "version": 1},
                                                                    "path": "", "data_path": ""})
    path = f"features/{name}/v{record.version}"
    with storage.open_write(path, "data", "part-00000.parquet") as handle:
        pq.write_table(data, handle)
    storage.write_manifest({}, path, data_files={"part-00000.parquet": data.num_rows})
    registry.catalog_update(CATALOG_FEATURE_SET, name, record.version, {
        "status": "ready", "path": path, "data_path": f"{path}/data", "num_rows": data.num_rows,
        "output_columns": data.schema.names, "feature_columns": FEATURES, "label_columns": ["target"],
        "entity_key": "store", "split": {"method": "hash"}})
    return {"name": name, "version": record.version}


def family_config(family: str, feature_set: str, **fit: Any) -> dict[str, Any]:
    return {"family": family, "feature_set": {"name": feature_set}, "entity_column": "store", "label": "target",
            "spec": FAMILY_SPEC, "fit": {**FIT, **fit}, "validation": {"guardrails": ["rmse <= 1.0"]}}


# -- baseline: the same fit function in a plain process pool ---------------------------------------

def _fit_chunk(args: tuple[list[tuple[str, np.ndarray, np.ndarray]], dict[str, Any], bool]) -> int:
    from mlplat.families.fit import FIT_TRAINED, fit_block, fit_group
    from mlplat.models import ModelSpec

    groups, fit, stacked = args
    spec = ModelSpec.model_validate(FAMILY_SPEC)
    if stacked:
        blocks: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for key, x, y in groups:
            blocks.setdefault(-(-len(y) // fit["batch_size"]), []).append((key, x, y))
        return sum(r["status"] == FIT_TRAINED for b in blocks.values() for r in fit_block(b, spec=spec, fit=fit))
    return sum(fit_group(key, x, y, spec=spec, fit=fit)["status"] == FIT_TRAINED for key, x, y in groups)


def _warm(_: int) -> int:
    import torch  # noqa: F401

    from mlplat.families import fit  # noqa: F401

    return 0


def _grouped(data: pa.Table) -> list[tuple[str, np.ndarray, np.ndarray]]:
    frame = data.filter(pa.compute.equal(data.column("split"), "train")).to_pandas()
    return [(str(k), g[FEATURES].to_numpy(np.float32), g["target"].to_numpy()) for k, g in frame.groupby("store", sort=False)]


def baseline_fit(pool: Any, groups: list[tuple[str, np.ndarray, np.ndarray]], processes: int, fit: dict[str, Any],
                 stacked: bool = False) -> float:
    """Seconds to fit every group in ``pool`` (2 chunks per process, like the Ray side's
    partitions): one member at a time (the plain torch loop), or ``stacked`` (the same
    :func:`mlplat.families.fit.fit_block` the platform runs, for context)."""
    from mlplat.families.config import FamilyFit

    settings = FamilyFit.model_validate({**FIT, **fit}).model_dump()
    chunks = [groups[i::2 * processes] for i in range(2 * processes)]
    start = time.perf_counter()
    trained = sum(pool.map(_fit_chunk, [(c, settings, stacked) for c in chunks]))
    elapsed = time.perf_counter() - start
    assert trained == len(groups), (trained, len(groups))
    return elapsed


# -- the benchmark ---------------------------------------------------------------------------------

def _train_rows(entities_list: list[int], repeats: int, root: Path) -> list[dict[str, Any]]:
    import ray

    from mlplat.families import train_family
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root

    processes = max(1, int(ray.cluster_resources().get("CPU", 1)))
    storage = open_root(str(root / "root"))
    registry = RegistryStore(str(root / "registry.db"))
    rows = []
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm, range(processes * 2))
        for n in entities_list:
            data = family_table(n, seed=n)
            fs = register_family_feature_set(registry, storage, f"bench-fs-{n}", data)
            groups = _grouped(data)
            ours, base, stacked, fit_only = [], [], [], []
            train_family(family_config(f"warm{n}", fs["name"]), registry=registry, storage=storage)  # warm workers
            for r in range(repeats):
                base.append(n / baseline_fit(pool, groups, processes, {}))
                stacked.append(n / baseline_fit(pool, groups, processes, {}, stacked=True))
                result = train_family(family_config(f"bench{n}r{r}", fs["name"]), registry=registry, storage=storage)
                assert result.trained == n, result.to_dict()["skipped"]
                ours.append(result.trained / result.duration_s)
                fit_only.append(result.trained / result.fit_s)
            rows.append(row(f"family-train-{n}", f"models/s end to end, {n} entities x ~42 train rows, MLP [8], 20 epochs",
                            statistics.median(ours), "models/s",
                            baseline=f"plain torch loop per member, multiprocessing x{processes}",
                            baseline_value=statistics.median(base), runs=[round(v, 1) for v in ours],
                            baseline_runs=[round(v, 1) for v in base],
                            ray_fit_only_models_per_s=round(statistics.median(fit_only), 1),
                            stacked_fit_in_pool_models_per_s=round(statistics.median(stacked), 1)))
    return rows


def _cold_load_row(repeats: int, root: Path, members: int = 500) -> dict[str, Any]:
    import torch

    from mlplat.models import ModelSpec, build_model, load_bundle, save_bundle
    from mlplat.models.packed import write_pack
    from mlplat.storage import open_root

    storage = open_root(str(root / "load-root"))
    spec = ModelSpec.model_validate(FAMILY_SPEC)
    models = {}
    for i in range(members):
        torch.manual_seed(i)
        models[f"m{i}"] = build_model(spec, len(FEATURES))
    refs = write_pack(storage, {k: m.state_dict() for k, m in models.items()}, "packs", "p1", shard_max_bytes=1 << 20)
    packed_sha = {k: save_bundle(storage, f"packed-{k}", 1, m, spec=spec, input_columns=FEATURES, placement=refs[k]).sha256
                  for k, m in models.items()}
    file_sha = {k: save_bundle(storage, f"file-{k}", 1, m, spec=spec, input_columns=FEATURES).sha256
                for k, m in models.items()}
    order = list(models)
    packed_s, file_s = [], []
    for r in range(repeats):  # each load touches a member not loaded before in this round
        for k in order[r::max(1, repeats)][:50]:
            start = time.perf_counter()
            load_bundle(storage, f"file-{k}", 1, expected_sha256=file_sha[k])
            file_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            loaded = load_bundle(storage, f"packed-{k}", 1, expected_sha256=packed_sha[k])
            packed_s.append(time.perf_counter() - start)
            assert loaded.placement == "packed"
    return row("family-member-cold-load", "load_bundle of one member (MLP [8]) from a 500-member pack, local disk",
               statistics.median(packed_s) * 1e3, "ms", baseline="single-file model (model.safetensors)",
               baseline_value=statistics.median(file_s) * 1e3, loads=len(packed_s))


def run(entities: list[int] | None = None, repeats: int = 3) -> list[dict[str, Any]]:
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = _train_rows(entities or [500, 2000], repeats, Path(tmp))
            rows.append(_cold_load_row(max(repeats, 3), Path(tmp)))
        return rows
    finally:
        if started_ray:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    rows = stamp(run(args.entities, args.repeats))
    out = Path(__file__).resolve().parent / "results" / "families.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
