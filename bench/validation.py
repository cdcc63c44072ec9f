"""P7: validation batch inference rows/s with Ray Data vs a bare torch loop, same rows, same CPU.

1M rows x 32 float32 features in one Parquet file, an MLP (32 -> 256 -> 128 -> 1, binary), batch
4096. Both sides read the Parquet file, run the model in inference mode and produce the
predictions; each row pairs an mlplat executor with a bare loop in the same state (both warm or
both cold), repeats are interleaved (bare, mlplat, bare, ...) and the medians compared. The
file is in the page cache on both sides (the untimed warm-up reads it).

- ``tasks`` row, both warm: the bundle is already in memory, nothing is loaded in the timer.
  - mlplat: ``mlplat.raydata.read_parquet`` with validation's read batch size (as
    ``SplitSource.read``; one file of 16 row groups, so it reads by row groups, fused with the
    prediction) -> ``predict_dataset`` with the tasks executor (the default on CPU clusters),
    consumed by the driver as validation does. Each worker process keeps the bundles it loaded
    (keyed by sha256 and the files' size and mtime); the three warm-up runs load the bundle into
    every worker, as earlier validations or scoring on a running cluster would (their times are
    recorded as ``warmup_s``: the first pays the workers' torch import and bundle load).
  - bare: the model was loaded and verified once before the timer, as a worker's cache holds
    it; timed: ``pyarrow.parquet.read_table`` -> numpy -> ``model(torch.from_numpy(x))`` per
    4096-row batch, in this process with torch's default threads (all cores).
- ``actors`` row, both cold: no process holds the model or has imported torch.
  - mlplat: the same pipeline with the actor pool (the default with GPUs), one actor per CPU;
    every run starts its actors (process + torch import + bundle load + verify).
  - bare: a fresh Python process (``python -c``) imports torch and mlplat, loads and verifies
    the bundle, then does the bare loop above; timed from spawn to exit.

``python -m bench.validation`` prints the table; ``BENCH_P7_ROWS`` (default 1,000,000) shrinks
the file for a quick check of the code only.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import row

REPO = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("BENCH_P7_ROWS", "1000000"))  # fewer for a quick check only
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
    storage = open_root(_root(tmp))
    with storage.open_write("bench", "data.parquet") as handle:
        pq.write_table(table, handle, row_group_size=64 * 1024)
    torch.manual_seed(0)
    spec = ModelSpec(task="binary", hidden=[256, 128])
    model = build_model(spec, FEATURES).eval()
    ref = save_bundle(storage, "bench", 1, model, spec=spec, input_columns=names, label_columns=[])
    return storage, names, ref.sha256


def _root(tmp: str) -> str:
    """The storage root :func:`_setup` writes under ``tmp``."""
    return os.path.join(tmp, "root")


def _predict_file(storage, names, model) -> None:
    """The bare loop's work after the model is in memory: read the file, predict every batch."""
    import pyarrow.parquet as pq
    import torch

    from mlplat.models import predict_outputs

    table = pq.read_table(storage.path("bench", "data.parquet"))
    X = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float32, copy=False)
    out = np.empty(ROWS, dtype=np.float32)
    with torch.inference_mode():
        for lo in range(0, ROWS, BATCH):
            out[lo:lo + BATCH] = predict_outputs("binary", model(torch.from_numpy(X[lo:lo + BATCH]))).numpy()
    assert np.isfinite(out).all()


def _bare_warm(storage, names, model) -> float:
    """Warm, as the tasks executor's workers: the bundle was loaded (and verified) before, untimed."""
    start = time.perf_counter()
    _predict_file(storage, names, model)
    return time.perf_counter() - start


def _bare_cold(root: str, sha: str) -> float:
    """Cold, as the actor pool: a fresh Python process imports torch and mlplat, loads and
    verifies the bundle, reads the file and predicts; timed from spawn to exit."""
    code = f"from bench.validation import _bare_child; _bare_child({root!r}, {sha!r})"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - start


def _bare_child(root: str, sha: str) -> None:
    from mlplat.models import load_bundle
    from mlplat.storage import open_root

    storage = open_root(root)
    model = load_bundle(storage, "bench", 1, expected_sha256=sha).model
    _predict_file(storage, [f"f{i}" for i in range(FEATURES)], model)


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
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    times: dict[str, list[float]] = {}
    cold: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            storage, names, sha = _setup(tmp)
            from mlplat.models import load_bundle

            model = load_bundle(storage, "bench", 1, expected_sha256=sha).model  # the warm bare side's copy
            _bare_warm(storage, names, model)  # warm-up: page cache, torch kernels
            bare = {"tasks": lambda: _bare_warm(storage, names, model), "actors": lambda: _bare_cold(_root(tmp), sha)}
            # One executor after the other: an actor pool's actors may take over (and end) the idle
            # worker processes that hold the tasks executor's cached bundles.
            for executor in ("tasks", "actors"):
                # Warm-up: tasks land on whichever worker is free, so a few runs pass before every
                # worker process holds the bundle (a cluster that validated before is in that state).
                cold[executor] = [round(_ray(storage, names, sha, executor), 2) for _ in range(WARMUP_RUNS)]
                for _ in range(repeats):
                    times.setdefault(f"bare-{executor}", []).append(bare[executor]())
                    times.setdefault(executor, []).append(_ray(storage, names, sha, executor))
    finally:
        if started_ray:
            ray.shutdown()
    what = f"{ROWS:,} rows x {FEATURES} features, MLP 256-128, batch {BATCH}, torch {torch.__version__}, {os.cpu_count()} CPUs"
    titles = {"tasks": "Ray Data batch inference, cached-bundle tasks (CPU default), warm: workers hold the bundle",
              "actors": "Ray Data batch inference, actor pool (GPU default), cold: end to end incl. pool start"}
    baselines = {"tasks": "bare torch loop, warm: model loaded before the timer",
                 "actors": "bare torch loop, cold: fresh process (torch import, bundle load + verify)"}
    return [
        row("P7", f"{titles[e]} ({what})", ROWS / statistics.median(times[e]), "rows/s",
            baseline=baselines[e], baseline_value=ROWS / statistics.median(times[f"bare-{e}"]), target=">=0.8x",
            repeats=repeats, ray_s=[round(t, 2) for t in times[e]], bare_s=[round(t, 2) for t in times[f"bare-{e}"]],
            warmup_s=cold[e])
        for e in ("tasks", "actors")
    ]


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
