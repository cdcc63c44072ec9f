"""P6 training benchmark: samples/s through mlplat's Ray Train loop vs a bare torch loop.

Same model (MLP), same rows, same batch size, same device, same optimizer; each side runs
``epochs`` epochs and the first (warm-up) epoch is not counted. The Ray side is mlplat's own
``train_loop_per_worker`` fed by Ray Data (``get_dataset_shard``), timed inside the worker
(``epoch_s``: batches + gradient sync, no checkpoint upload); the bare side is a plain loop over
pre-built tensors. Startup (Ray, worker group, dataset) is reported as context, not in the ratio.

The sides interleave at the level of whole runs (a Ray Train fit cannot pause between epochs
for the bare loop): ``--repeats`` rounds (default 3) of bare loop, 1-worker fit (and, with
``--gpus N``, an N-worker fit); each run's rate is the median of its epochs after the first,
and the rows compare the medians over the rounds (``ray_runs``/``bare_runs`` keep each run's).

    python -m bench.training              # CPU, 1 worker (this box)
    python -m bench.training --gpu        # 1 GPU vs a bare loop on that GPU
    python -m bench.training --gpus 2     # + 2 GPUs: scaling efficiency vs 2 x the 1-GPU rate
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from bench.common import row

DEFAULTS = {"rows": 100_000, "features": 32, "hidden": [256, 256], "batch_size": 1024, "epochs": 4, "repeats": 3}


def _make_data(rows: int, features: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = ((x @ rng.normal(size=features).astype(np.float32)) > 0).astype(np.int64)
    return x, y


def bare_loop(x, y, *, hidden: list[int], batch_size: int, epochs: int, device: str) -> list[float]:
    """samples/s of each epoch of a plain torch loop (tensors moved to the device per batch)."""
    import torch

    from mlplat.models import ModelSpec, build_model, loss_fn

    torch.manual_seed(0)
    spec = ModelSpec(task="binary", hidden=hidden)
    model = build_model(spec, x.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = loss_fn("binary")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype("float32"))
    if device.startswith("cuda"):
        xt, yt = xt.pin_memory(), yt.pin_memory()
    rates = []
    for _ in range(epochs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(xt), batch_size):
            xb = xt[i:i + batch_size].to(device, non_blocking=True)
            yb = yt[i:i + batch_size].to(device, non_blocking=True)
            out = model(xb)
            loss = crit(out, yb.reshape(out.shape))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(len(xt) / (time.perf_counter() - start))
    return rates


def ray_train(x, y, *, hidden: list[int], batch_size: int, epochs: int, num_workers: int, use_gpu: bool,
              root: str) -> tuple[list[float], float]:
    """Per-epoch samples/s measured inside mlplat's training loop, and the wall time of the whole fit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlplat.records import DatasetRef, FeatureSetVersion
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root
    from mlplat.training import read_progress
    from mlplat.training.runner import prepare, run_trainer

    storage = open_root(root)
    registry = RegistryStore(os.path.join(root, "registry.db"))
    name = f"bench-{uuid.uuid4().hex[:6]}"
    cols = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    cols["y"] = y
    with storage.open_write(f"features/{name}/v1/data", "part-0.parquet") as fh:
        pq.write_table(pa.table(cols), fh)
    fsv = FeatureSetVersion(name=name, version=1, spec={}, source=DatasetRef(name="bench", version=1),
                            path=f"features/{name}/v1", data_path=f"features/{name}/v1/data", num_rows=len(x),
                            feature_columns=tuple(f"f{i}" for i in range(x.shape[1])), label_columns=("y",),
                            output_columns=tuple(cols), split={"method": "none"})
    registry.catalog_register("feature_set", name, fsv.payload())
    cfg = {"model": "bench", "spec": {"task": "binary", "hidden": hidden}, "feature_set": {"name": name},
           "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3,
                               "early_stopping": {"metric": "train_loss"}},
           "scaling": {"num_workers": num_workers, "use_gpu": use_gpu}, "failure": {"max_failures": 0}}
    prepared = prepare(cfg, registry=registry, storage=storage)
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    result = run_trainer(prepared, storage=storage, run_id=run_id)
    wall = time.perf_counter() - start
    if getattr(result, "error", None) is not None:
        raise result.error
    history = read_progress(storage, run_id)["history"]
    return [h["train_rows"] / h["epoch_s"] for h in history], wall


def _steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def run(gpus: int = 0, rows: int | None = None, epochs: int | None = None, hidden: list[int] | None = None,
        batch_size: int | None = None, features: int | None = None, repeats: int | None = None) -> list[dict[str, Any]]:
    """``repeats`` interleaved rounds; each round runs the bare loop, one 1-worker Ray Train fit
    and (``gpus >= 2``) one ``gpus``-worker fit, each over ``epochs`` epochs. A run's rate is the
    median of its epochs after the first; a row compares the medians of those over the rounds."""
    import ray
    import torch

    rows = rows or DEFAULTS["rows"]
    epochs = epochs or DEFAULTS["epochs"]
    hidden, batch_size = hidden or DEFAULTS["hidden"], batch_size or DEFAULTS["batch_size"]
    features = features or DEFAULTS["features"]
    repeats = repeats or DEFAULTS["repeats"]
    x, y = _make_data(rows, features)
    device = "cuda" if gpus else "cpu"
    if gpus and not torch.cuda.is_available():
        raise SystemExit("--gpu/--gpus given but torch sees no CUDA device")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}})
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1) if not gpus else torch.get_num_threads())
    shape = f"MLP {features}-{'-'.join(map(str, hidden))}-1, {rows:,} rows, batch {batch_size}"
    bare, one, multi, walls, walls_n = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-train-") as root:
        for _ in range(repeats):
            bare.append(_steady(bare_loop(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs, device=device)))
            rates, wall = ray_train(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs, num_workers=1,
                                    use_gpu=bool(gpus), root=root)
            one.append(_steady(rates))
            walls.append(round(wall, 2))
            if gpus >= 2:
                rates, wall = ray_train(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs, num_workers=gpus,
                                        use_gpu=True, root=root)
                multi.append(_steady(rates))
                walls_n.append(round(wall, 2))
    where = "1 GPU" if gpus else "CPU, 1 worker"
    rows_out = [row("P6", f"Ray Train samples/s ({where}; {shape})", statistics.median(one), "samples/s",
                    baseline="bare torch loop", baseline_value=statistics.median(bare),
                    target=">=0.97x (GPU)" if gpus else ">=0.97x on GPU (CPU: context)",
                    fit_wall_s=walls, epochs=epochs, repeats=repeats, ray_runs=[round(r) for r in one],
                    bare_runs=[round(r) for r in bare])]
    if gpus >= 2:
        rows_out.append(row("P6", f"Ray Train samples/s ({gpus} GPUs, DDP; scaling efficiency)", statistics.median(multi),
                            "samples/s", baseline=f"{gpus} x the 1-GPU Ray Train rate",
                            baseline_value=gpus * statistics.median(one), target=">=0.9", fit_wall_s=walls_n,
                            epochs=epochs, repeats=repeats, ray_runs=[round(r) for r in multi]))
    return rows_out


def main(argv: list[str] | None = None) -> int:
    import json
    from pathlib import Path

    from bench.common import stamp, table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run both sides on one GPU")
    parser.add_argument("--gpus", type=int, default=0, help="also measure N GPUs (scaling efficiency)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--hidden", type=lambda v: [int(w) for w in v.split(",")], default=None, help="e.g. 1024,1024")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--features", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    gpus = max(args.gpus, 1 if args.gpu else 0)
    rows = stamp(run(gpus=gpus, rows=args.rows, epochs=args.epochs, hidden=args.hidden, batch_size=args.batch_size,
                     features=args.features, repeats=args.repeats))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / ("training.json" if not gpus else f"training-gpu{gpus}.json")).write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
