"""GPU batch inference (P7-gpu) on the device machine: mlplat on GPU vs a bare cuda loop vs mlplat on CPU.

The same ``rows`` (default 10M) x 32 float32 features in one Parquet file (64k-row row groups),
the same MLP (32 -> 256 -> 128 -> 1, binary); every side reads the file, predicts every row and
hands the predictions to the caller. Repeats interleave the sides (bare, GPU, CPU, ...);
medians compared.

- ``bare cold``: as many fresh ``python -c`` processes as mlplat has GPU inference services (one
  per GPU, ``CUDA_VISIBLE_DEVICES``), each importing torch and mlplat, loading and verifying the
  bundle onto its GPU, reading its share of the file's row groups, predicting in 65,536-row
  device batches and copying the predictions back; timed from the first spawn to the last exit
  (CUDA contexts included). The same on one GPU (one process, the whole file) is a context row.
- ``bare warm``: the same loop in this process, one thread per GPU (its model already there).
- ``mlplat GPU cold``: ``predict_dataset`` with the GPU default (inference services,
  mlplat/validation/gpu_service.py) after :func:`release_services`: the services' start (process,
  torch import, CUDA context, bundle load) is inside the timer.
- ``mlplat GPU warm``: the next calls, the services already running (as a second validation or a
  ``mlplat score`` on the same cluster finds them).
- ``mlplat CPU``: the CPU default (cached-bundle tasks), warm, on the same machine.

First it checks that validation on the GPU cluster runs on ``cuda`` and gives the CPU run's
verdict and metrics. ``--smoke`` runs every side on the CPU with 20,000 rows (the services on
``cpu``) to check the code without a GPU. Writes ``validation-gpu.json`` under ``--out-dir``
(default ``$OUT`` or bench/results)::

    python3 -m bench.gpu_validation [--rows 10000000] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FEATURES = 32
DEVICE_BATCH = 65_536
TASK_BATCH = 4096


def check_validation(tmp: str) -> dict:
    from bench.builders import COEF, linear_model, register_feature_set, register_trained, validation_table
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root
    from mlplat.validation import report_of, validate

    storage = open_root(os.path.join(tmp, "root"))
    registry = RegistryStore(os.path.join(tmp, "registry.db"))
    fs = register_feature_set(registry, storage, "gpu-fs", validation_table(n=200_000), ["label"])
    registry.create_model("gpu", serving_policy={"validation": {"guardrails": ["auc >= 0.8"], "slices": ["region"]}})
    on_gpu = validate(registry, storage, "gpu", register_trained(registry, storage, "gpu", linear_model(COEF), fs))
    on_cpu = validate(registry, storage, "gpu", register_trained(registry, storage, "gpu", linear_model(COEF), fs),
                      policy={"guardrails": ["auc >= 0.8"], "slices": ["region"], "executor": "tasks"})
    gpu_report, _ = report_of(storage, "gpu", on_gpu.version)
    cpu_report, _ = report_of(storage, "gpu", on_cpu.version)
    worst = max(abs(on_gpu.metrics[m] - on_cpu.metrics[m]) for m in on_cpu.metrics)
    assert gpu_report["inference"]["executor"] == "actors" and gpu_report["inference"]["device"] == "cuda", gpu_report["inference"]
    assert cpu_report["inference"] == {"executor": "tasks", "device": "cpu", "actors": None}, cpu_report["inference"]
    assert on_gpu.state == on_cpu.state and on_gpu.state.value == "VALIDATED", (on_gpu, on_cpu)
    assert worst < 1e-4, (on_gpu.metrics, on_cpu.metrics)
    return {"gpu_inference": gpu_report["inference"], "cpu_inference": cpu_report["inference"],
            "state": on_gpu.state.value, "auc_gpu": on_gpu.metrics["auc"], "auc_cpu": on_cpu.metrics["auc"],
            "max_metric_difference": worst, "rows": gpu_report["rows"]}


def setup(root: str, rows: int):
    """The file and the bundle; returns (storage, feature names, bundle sha256)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from mlplat.models import ModelSpec, build_model, save_bundle
    from mlplat.storage import open_root

    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(FEATURES)]
    storage = open_root(root)
    chunk = 1_000_000
    with storage.open_write("bench", "data.parquet") as handle:
        writer = None
        for lo in range(0, rows, chunk):
            X = rng.normal(size=(min(chunk, rows - lo), FEATURES)).astype(np.float32)
            table = pa.table({n: X[:, i] for i, n in enumerate(names)})
            writer = writer or pq.ParquetWriter(handle, table.schema)
            writer.write_table(table, row_group_size=64 * 1024)
        assert writer is not None
        writer.close()
    torch.manual_seed(0)
    spec = ModelSpec(task="binary", hidden=[256, 128])
    ref = save_bundle(storage, "bench", 1, build_model(spec, FEATURES).eval(), spec=spec, input_columns=names,
                      label_columns=[])
    return storage, names, ref.sha256


def share(row_groups: int, part: int, parts: int) -> list[int]:
    """The row groups of ``part`` of ``parts`` (contiguous, sizes differ by one at most).

    >>> share(5, 0, 2), share(5, 1, 2), share(5, 0, 1)
    ([0, 1, 2], [3, 4], [0, 1, 2, 3, 4])
    """
    bounds = [i * (row_groups // parts) + min(i, row_groups % parts) for i in range(parts + 1)]
    return list(range(bounds[part], bounds[part + 1]))


def bare_predict(storage, names: list[str], model, device: str, part: int = 0, parts: int = 1) -> int:
    """Read the file (``part`` of ``parts`` of its row groups), predict those rows in device
    batches, predictions back on the host once."""
    import pyarrow.parquet as pq
    import torch

    from mlplat.models import predict_outputs

    handle = pq.ParquetFile(storage.path("bench", "data.parquet"))
    table = handle.read_row_groups(share(handle.num_row_groups, part, parts))
    X = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float32, copy=False)
    out = []
    with torch.inference_mode():
        for lo in range(0, len(X), DEVICE_BATCH):
            out.append(predict_outputs("binary", model(torch.from_numpy(X[lo:lo + DEVICE_BATCH]).to(device))))
        preds = torch.cat(out).cpu().numpy()
    assert len(preds) == len(X) and np.isfinite(preds).all()
    return len(preds)


def bare_child(root: str, sha: str, device: str, part: int = 0, parts: int = 1) -> None:
    from mlplat.models import load_bundle
    from mlplat.storage import open_root

    storage = open_root(root)
    model = load_bundle(storage, "bench", 1, expected_sha256=sha).model.to(device).eval()
    bare_predict(storage, [f"f{i}" for i in range(FEATURES)], model, device, part, parts)


def bare_cold(root: str, sha: str, device: str, parts: int = 1) -> float:
    """``parts`` fresh processes, process i on GPU i (``CUDA_VISIBLE_DEVICES``) with part i of the
    row groups; from the first spawn to the last exit."""
    start = time.perf_counter()
    procs = []
    for part in range(parts):
        code = f"from bench.gpu_validation import bare_child; bare_child({root!r}, {sha!r}, {device!r}, {part}, {parts})"
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(part)} if device == "cuda" and parts > 1 else {})}
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env))
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"bare cold processes exited with {codes}")
    return elapsed


def bare_warm(storage, names: list[str], models: list, device: str) -> float:
    """One thread per model (model i on GPU i), each predicting its part of the row groups."""
    from concurrent.futures import ThreadPoolExecutor

    parts = len(models)
    devices = [f"cuda:{i}" if device == "cuda" else device for i in range(parts)]
    start = time.perf_counter()
    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(lambda i: bare_predict(storage, names, models[i], devices[i], i, parts), range(parts)))
    return time.perf_counter() - start


def mlplat_run(storage, names: list[str], sha: str, rows: int, plan: dict) -> float:
    """mlplat's path as validation runs it: read -> predict_dataset -> the driver takes the predictions."""
    from mlplat.raydata import read_parquet
    from mlplat.validation.inference import SPLIT_READ_BATCH_ROWS, BundleRef, predict_dataset

    start = time.perf_counter()
    ds = read_parquet([storage.path("bench", "data.parquet")], filesystem=storage.fs, batch_size=SPLIT_READ_BATCH_ROWS)
    preds = predict_dataset(ds, storage, [BundleRef("bench", 1, sha, "pred", tuple(names))], [], batch_size=TASK_BATCH,
                            plan=plan)
    got = 0
    for batch in preds.iter_batches(batch_size=None, batch_format="numpy"):
        got += len(batch["pred"])
    elapsed = time.perf_counter() - start
    assert got == rows, (got, rows)
    return elapsed


def gpu_plan(device: str) -> dict:
    """The GPU default's plan (inference services); on ``cpu`` for --smoke."""
    from mlplat.validation.inference import inference_plan

    if device == "cuda":
        plan = inference_plan("auto")
        assert plan.get("service") and plan["device"] == "cuda", plan
        return plan
    return {"executor": "actors", "device": "cpu", "actors": 1, "num_cpus": 0, "num_gpus": 0, "service": True}


def time_sides(tmp: str, rows: int, repeats: int, device: str) -> dict:
    from mlplat.models import load_bundle
    from mlplat.validation.gpu_service import get_services, release_services

    root = os.path.join(tmp, "root")
    began = time.perf_counter()
    storage, names, sha = setup(root, rows)
    setup_s = time.perf_counter() - began
    plan = gpu_plan(device)
    cpu_plan = {"executor": "tasks", "device": "cpu", "actors": None}
    gpus = int(plan["actors"]) if device == "cuda" else 1  # the bare side gets as many GPUs as mlplat's services
    models = [load_bundle(storage, "bench", 1, expected_sha256=sha).model.to(f"cuda:{i}" if device == "cuda" else device).eval()
              for i in range(gpus)]
    bare_warm(storage, names, models, device)  # warm-up: page cache, kernels
    mlplat_run(storage, names, sha, rows, cpu_plan)  # warm-up: task workers hold the bundle
    t: dict[str, list[float]] = {k: [] for k in ("bare_cold", "bare_cold_1", "bare_warm", "gpu_cold", "gpu_warm", "cpu_warm")}
    service_start: list[dict] = []
    print(f"setup {setup_s:.1f} s (writing {rows:,} rows); bare side on {gpus} GPU(s)", flush=True)
    for _ in range(repeats):
        t["bare_cold"].append(bare_cold(root, sha, device, gpus))
        t["bare_cold_1"].append(bare_cold(root, sha, device, 1))
        release_services(device)
        t["gpu_cold"].append(mlplat_run(storage, names, sha, rows, plan))
        service_start.append(ray_stats(get_services(device, int(plan["actors"]))))
        print(f"service start: {service_start[-1]}", flush=True)
        t["bare_warm"].append(bare_warm(storage, names, models, device))
        t["gpu_warm"].append(mlplat_run(storage, names, sha, rows, plan))
        t["cpu_warm"].append(mlplat_run(storage, names, sha, rows, cpu_plan))
        print("round (s): " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in t.items()), flush=True)
    release_services(device)
    return {"rows": rows, "setup_s": round(setup_s, 1), "plan": plan, "service_start": service_start, "bare_gpus": gpus,
            **{k: [round(x, 3) for x in v] for k, v in t.items()}}


def ray_stats(services: list) -> list[dict]:
    import ray

    return ray.get([s.stats.remote() for s in services])


def as_rows(out: dict) -> list[dict]:
    """The results as bench rows, card name and the validation check attached."""
    from bench.common import row, stamp

    s = out["sides"]
    rows = s["rows"]
    med = {k: statistics.median(s[k]) for k in ("bare_cold", "bare_cold_1", "bare_warm", "gpu_cold", "gpu_warm", "cpu_warm")}
    what = f"{rows:,} rows x {FEATURES} features, MLP 256-128, {out['card'] or 'no GPU (smoke)'}"
    gpus = s["bare_gpus"]
    extra = {"card": out["card"], "repeats": len(s["bare_cold"]), "times_s": {k: s[k] for k in med},
             "service_start": s["service_start"], "plan": s["plan"], "setup_s": s["setup_s"], "gpus_each_side": gpus}
    return stamp([
        row("P7-gpu", f"mlplat GPU batch inference, cold: {gpus} inference service(s) started in the timer ({what})",
            rows / med["gpu_cold"], "rows/s", baseline=f"bare cuda loop, cold: {gpus} fresh process(es), one per GPU, each "
            "with its share of the row groups (torch import, CUDA init, bundle load + verify, read, predict)",
            baseline_value=rows / med["bare_cold"], target=">=0.8x", validation_check=out.get("validation"), **extra),
        row("P7-gpu", f"mlplat GPU batch inference, warm: services running ({what})", rows / med["gpu_warm"], "rows/s",
            baseline=f"bare cuda loop, warm: {gpus} thread(s), one per GPU, models on the GPUs before the timer",
            baseline_value=rows / med["bare_warm"], target=">=0.8x", card=out["card"], gpus_each_side=gpus),
        row("P7-gpu", f"mlplat GPU batch inference, cold, {gpus} service(s) ({what})", rows / med["gpu_cold"], "rows/s",
            baseline="bare cuda loop, cold: 1 fresh process on 1 GPU, the whole file", baseline_value=rows / med["bare_cold_1"],
            target="context: not equal resources when mlplat has more than 1 GPU", card=out["card"]),
        row("P7-gpu", f"mlplat GPU batch inference vs mlplat CPU tasks, both warm ({what})", rows / med["gpu_warm"],
            "rows/s", baseline="mlplat CPU default (cached-bundle tasks), same machine",
            baseline_value=rows / med["cpu_warm"], target=">1x", card=out["card"]),
    ])


def main(argv: list[str] | None = None) -> int:
    import ray
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="default 10,000,000 (20,000 with --smoke)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="CPU only, tiny: checks the code without a GPU")
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    rows = args.rows or (20_000 if args.smoke else 10_000_000)
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU machine (or --smoke)", file=sys.stderr)
        return 2
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
             namespace="mlplat-bench-gpu-validation")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    out: dict = {"card": torch.cuda.get_device_name(0) if device == "cuda" else None}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out["validation"] = check_validation(os.path.join(tmp, "v")) if device == "cuda" else "skipped (--smoke: no GPU)"
            out["sides"] = time_sides(os.path.join(tmp, "p7"), rows, args.repeats, device)
    finally:
        ray.shutdown()
    from bench.common import table

    result = as_rows(out)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    target = Path(args.out_dir) / "validation-gpu.json"
    target.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
