"""P7: validation batch inference rows/s with Ray Data vs a bare torch loop, same rows, same CPU.

1M rows x 32 float32 features in one Parquet file, an MLP (32 -> 256 -> 128 -> 1, binary), batch
4096. Both sides read the Parquet file, run the model in inference mode and produce the
predictions; repeats are interleaved and the medians compared.

- mlplat: ``mlplat.raydata.read_parquet`` with validation's read batch size (as
  ``SplitSource.read``; one file of 16 row groups, so it reads by row groups, fused with the
  prediction) -> ``predict_dataset``,
  consumed by the driver as validation does, end to end. Two rows, one per executor:
  - ``tasks`` (the default on CPU clusters): Ray Data tasks over whole blocks; each worker
    process keeps the bundles it loaded (keyed by sha256 and the files' size and mtime). The
    three warm-up runs below load the bundle into every worker, as earlier validations or
    scoring on a running cluster would, so the timed runs are warm (the warm-up times are
    recorded as ``warmup_s``: the first pays the workers' torch import and bundle load).
  - ``actors`` (the default with GPUs): an actor pool, one actor per CPU; every run starts its
    actors (process + torch import + bundle load), which the warm-up cannot avoid.
- baseline: ``pyarrow.parquet.read_table`` -> numpy -> ``model(torch.from_numpy(x))`` per
  4096-row batch in one process with torch's default threads (all cores).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from bench.common import row

ROWS = 1_000_000
FEATURES = 32
BATCH = 4096
WARMUP_RUNS = 3


def _setup(tmp: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.storage import open_root

    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    names = [f"f{i}" for i in range(FEATURES)]
    table = pa.table({n: X[:, i] for i, n in enumerate(names)})
    storage = open_root(os.path.join(tmp, "root"))
    with storage.open_write("bench", "data.parquet") as handle:
        pq.write_table(table, handle, row_group_size=64 * 1024)
    torch.manual_seed(0)
    spec = ModelSpec(task="binary", hidden=[256, 128])
    model = build_model(spec, FEATURES).eval()
    ref = save_bundle(storage, "bench", 1, model, spec=spec, input_columns=names, label_columns=[])
    return storage, names, ref.sha256


def _bare(storage, names, sha) -> float:
    import pyarrow.parquet as pq
    import torch

    from mlplat.models import load_bundle, predict_outputs

    start = time.perf_counter()
    loaded = load_bundle(storage, "bench", 1, expected_sha256=sha)
    table = pq.read_table(storage.path("bench", "data.parquet"))
    X = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float32, copy=False)
    out = np.empty(ROWS, dtype=np.float32)
    with torch.inference_mode():
        for lo in range(0, ROWS, BATCH):
            out[lo:lo + BATCH] = predict_outputs("binary", loaded.model(torch.from_numpy(X[lo:lo + BATCH]))).numpy()
    elapsed = time.perf_counter() - start
    assert np.isfinite(out).all()
    return elapsed


def _ray(storage, names, sha, executor: str = "auto") -> float:
    from mlplat.raydata import read_parquet
    from mlplat.validation.inference import SPLIT_READ_BATCH_ROWS, BundleRef, predict_dataset

    start = time.perf_counter()
    ds = read_parquet([storage.path("bench", "data.parquet")], filesystem=storage.fs, batch_size=SPLIT_READ_BATCH_ROWS)
    preds = predict_dataset(ds, storage, [BundleRef("bench", 1, sha, "pred", tuple(names))], [], batch_size=BATCH,
                            executor=executor)
    rows = 0
    for batch in preds.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(batch["pred"])
    elapsed = time.perf_counter() - start
    assert rows == ROWS, rows
    return elapsed


def run(repeats: int = 5) -> list[dict]:
    import ray
    import torch

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    times: dict[str, list[float]] = {}
    cold: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            storage, names, sha = _setup(tmp)
            _bare(storage, names, sha)  # warm-up: page cache, torch kernels
            # One executor after the other: an actor pool's actors may take over (and end) the idle
            # worker processes that hold the tasks executor's cached bundles.
            for executor in ("tasks", "actors"):
                # Warm-up: tasks land on whichever worker is free, so a few runs pass before every
                # worker process holds the bundle (a cluster that validated before is in that state).
                cold[executor] = [round(_ray(storage, names, sha, executor), 2) for _ in range(WARMUP_RUNS)]
                for _ in range(repeats):
                    times.setdefault(f"bare-{executor}", []).append(_bare(storage, names, sha))
                    times.setdefault(executor, []).append(_ray(storage, names, sha, executor))
    finally:
        if started_ray:
            ray.shutdown()
    what = f"{ROWS:,} rows x {FEATURES} features, MLP 256-128, batch {BATCH}, torch {torch.__version__}, {os.cpu_count()} CPUs"
    titles = {"tasks": "Ray Data batch inference, cached-bundle tasks (CPU default), warm workers",
              "actors": "Ray Data batch inference, actor pool (GPU default), end to end incl. pool start"}
    return [
        row("P7", f"{titles[e]} ({what})", ROWS / statistics.median(times[e]), "rows/s",
            baseline="bare torch loop", baseline_value=ROWS / statistics.median(times[f"bare-{e}"]), target=">=0.8x",
            repeats=repeats, ray_s=[round(t, 2) for t in times[e]], bare_s=[round(t, 2) for t in times[f"bare-{e}"]],
            warmup_s=cold[e])
        for e in ("tasks", "actors")
    ]


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
