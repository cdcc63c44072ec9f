"""P6 training benchmark: samples/s through mlplat's Ray Train loop vs a bare torch loop.

Same model (MLP), same rows, same batch size, same device, same optimizer (Adam; fused on CUDA on
both sides, ``mlplat.training.steps.optimizer_flags``); each side runs ``epochs`` epochs and the
first (warm-up) epoch is not counted. The Ray side is mlplat's own ``train_loop_per_worker`` fed
by Ray Data (``get_dataset_shard``), timed inside the worker (``epoch_s``: batches + gradient
sync + the epoch's one host sync, no checkpoint upload); the bare side is a plain loop whose rows
sit on the same device as mlplat's (moved there once), permuted once per epoch on the device with
``torch.randperm`` and sliced into contiguous batches -- what mlplat's loop does with an
in-memory feature set. Startup (Ray, worker group, dataset) is reported as context, not in the ratio.

2-GPU efficiency (``--gpus 2``): samples/s of the 2-worker fit / (2 x samples/s of the 1-worker
fit), the same batch size per worker (each worker trains on half the rows). ``--profile`` has
the largest fit's rank 0 record 40 steps of an extra, untimed first epoch with torch.profiler:
the Chrome trace and the top-15 table by self device (CPU) time are copied to
``<out-dir>/profiles/`` and the table is printed. mlplat's fits run with default settings: on
a GPU ``performance.cuda_graphs: auto`` replays the whole step (the all-reduce too) from a CUDA
graph. On a GPU each round also runs the bare loop with its step captured the same way (PyTorch's
recipe), a context row: the same technique on both sides; with ``--gpus N`` also bare PyTorch DDP
on N GPUs with its whole step captured (``bench/training_ddp.py``): the efficiency PyTorch itself
reaches at the shape, and mlplat's N-GPU rate against it. ``--eager`` adds fits with
``cuda_graphs: false`` (1 worker, and N with ``--gpus N``): a row against the same bare loop and
an efficiency row against N x the 1-worker eager rate. ``--capture-optimizer`` adds eager fits
with ``performance.capture_optimizer: true`` (the optimizer update replayed from a CUDA graph
with the all-reduce) the same way. ``--bare-in-worker`` adds the
bare loop run inside a 1-worker Ray Train fit (what the Ray worker process costs). Every fit
prints its rate when it ends, so a run cut short leaves its numbers in the log.

The sides interleave at the level of whole runs (a Ray Train fit cannot pause between epochs
for the bare loop): ``--repeats`` rounds (default 3) of bare loop, 1-worker fit (and, with
``--gpus N``, an N-worker fit); each run's rate is the median of its epochs after the first,
and the rows compare the medians over the rounds (``ray_runs``/``bare_runs`` keep each run's).

    python -m bench.training              # CPU, 1 worker (this box)
    python -m bench.training --gpu        # 1 GPU vs a bare loop on that GPU
    python -m bench.training --gpus 2     # + 2 GPUs: scaling efficiency vs 2 x the 1-GPU rate
    python -m bench.training --gpus 2 --batch-size 1024 --profile --out-dir "$OUT"

Results: ``training.json`` for the CPU default, else ``training-<cpu|gpuN>-<shape tag>.json``
(``shape_tag``: rows, features, hidden, batch), so each shape keeps its own file.
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


def shape_tag(rows: int, features: int, hidden: list[int], batch_size: int) -> str:
    """The shape part of a result file name.

    >>> shape_tag(100_000, 32, [256, 256], 1024)
    'r100k-f32-h256x256-b1024'
    >>> shape_tag(2_000_000, 128, [1024], 16384)
    'r2m-f128-h1024-b16384'
    """
    size = (f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else f"{rows // 1000}k" if rows % 1000 == 0 else str(rows))
    return f"r{size}-f{features}-h{'x'.join(map(str, hidden))}-b{batch_size}"


def result_name(gpus: int, tag: str, default_cpu: bool) -> str:
    """``training.json`` (CPU, default shape: what ``make bench`` regenerates) or one file per shape.

    >>> result_name(0, "t", True), result_name(0, "t", False), result_name(2, "t", False)
    ('training.json', 'training-cpu-t.json', 'training-gpu2-t.json')
    """
    if not gpus:
        return "training.json" if default_cpu else f"training-cpu-{tag}.json"
    return f"training-gpu{gpus}-{tag}.json"


def _bare_setup(x, y, hidden: list[int], device: str, graphs: bool):
    """The bare loops' model, Adam (fused on CUDA; ``capturable`` for a graph), loss, rows on
    ``device`` and a generator for the per-epoch permutation."""
    import torch

    from mlplat.models import ModelSpec, build_model, loss_fn
    from mlplat.training.loop import make_optimizer
    from mlplat.training.steps import optimizer_flags

    torch.manual_seed(0)
    model = build_model(ModelSpec(task="binary", hidden=hidden), x.shape[1]).to(device)
    opt = make_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.0,
                         optimizer_flags("adam", torch.device(device).type, True, graphs))
    xs, ys = torch.from_numpy(x).to(device), torch.from_numpy(y.astype("float32")).to(device)
    return model, opt, loss_fn("binary"), xs, ys, torch.Generator(device=xs.device)


def bare_loop(x, y, *, hidden: list[int], batch_size: int, epochs: int, device: str) -> list[float]:
    """samples/s of each epoch of a plain torch loop, its rows on ``device`` (moved once), one
    ``randperm`` per epoch on the device, contiguous batch slices (as mlplat's in-memory loop)."""
    import torch

    model, opt, crit, xs, ys, generator = _bare_setup(x, y, hidden, device, graphs=False)
    rates = []
    for epoch in range(epochs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        order = torch.randperm(len(xs), generator=generator.manual_seed(epoch), device=xs.device)
        xt, yt = xs[order], ys[order]
        for i in range(0, len(xt), batch_size):
            xb, yb = xt[i:i + batch_size], yt[i:i + batch_size]
            out = model(xb)
            loss = crit(out, yb.reshape(out.shape))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(len(xt) / (time.perf_counter() - start))
    return rates


def capture_step(net, opt, crit, xs, ys, rows: int, warmups: int, side, error_mode: str = "global"):
    """PyTorch's whole-network capture recipe for one batch shape: ``warmups`` eager steps of
    ``net`` on the ``side`` stream, then forward, backward and optimizer recorded as one CUDA
    graph reading static inputs of ``rows`` rows (``error_mode``: ``torch.cuda.graph``'s
    ``capture_error_mode``; DDP captures with ``"thread_local"`` so NCCL's watchdog thread may
    query CUDA meanwhile, as mlplat's capture does). Returns ``(graph, static x, static y, static
    loss)``; the bare loops (here and ``bench/training_ddp.py``) copy each batch in and replay."""
    import torch

    def eager(xb, yb):
        out = net(xb)
        loss = crit(out, yb.reshape(out.shape))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sx, sy = xs[:rows].clone(), ys[:rows].clone()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            eager(sx, sy)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph, capture_error_mode=error_mode):
        out = net(sx)
        sloss = crit(out, sy.reshape(out.shape))
        sloss.backward()
        opt.step()
    return graph, sx, sy, sloss


def bare_graph_loop(x, y, *, hidden: list[int], batch_size: int, epochs: int, device: str) -> list[float]:
    """samples/s of each epoch of the bare loop with its step captured as CUDA graphs, PyTorch's
    whole-network recipe (``torch.cuda.graphs``): warm-up steps on a side stream, one graph for
    the full batch and one for the epoch's last, partial batch (as mlplat's ``cuda_graphs``),
    then a replay per batch after copying it into that graph's static inputs. The same
    technique as mlplat's, without Ray or mlplat's loop."""
    import torch

    model, opt, crit, xs, ys, generator = _bare_setup(x, y, hidden, device, graphs=True)
    side = torch.cuda.Stream()
    graphs = {batch_size: capture_step(model, opt, crit, xs, ys, batch_size, 3, side)}
    if len(xs) % batch_size:
        graphs[len(xs) % batch_size] = capture_step(model, opt, crit, xs, ys, len(xs) % batch_size, 1, side)
    rates = []
    for epoch in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        order = torch.randperm(len(xs), generator=generator.manual_seed(epoch), device=xs.device)
        xt, yt = xs[order], ys[order]
        losses = []
        for i in range(0, len(xt), batch_size):
            xb, yb = xt[i:i + batch_size], yt[i:i + batch_size]
            graph, sx, sy, sloss = graphs[len(xb)]
            sx.copy_(xb, non_blocking=True)
            sy.copy_(yb, non_blocking=True)
            graph.replay()
            losses.append(sloss.detach().clone())
        torch.cuda.synchronize()
        rates.append(len(xt) / (time.perf_counter() - start))
    return rates


def bare_in_worker(x, y, *, hidden: list[int], batch_size: int, epochs: int, use_gpu: bool, root: str) -> float:
    """The bare loop run inside a 1-worker Ray Train fit (its device, its process): what the
    Ray worker's environment costs, apart from mlplat's loop. Returns its steady samples/s."""
    import json
    from pathlib import Path

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(root) / f"bare-in-worker-{uuid.uuid4().hex[:6]}.json"

    def fn(cfg: dict[str, Any]) -> None:
        import ray.train.torch

        from bench.training import bare_loop

        rates = bare_loop(cfg["x"], cfg["y"], hidden=cfg["hidden"], batch_size=cfg["batch_size"], epochs=cfg["epochs"],
                          device=str(ray.train.torch.get_device()))
        Path(cfg["out"]).write_text(json.dumps(rates))

    TorchTrainer(fn, train_loop_config={"x": x, "y": y, "hidden": hidden, "batch_size": batch_size, "epochs": epochs,
                                        "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu),
                 run_config=RunConfig(name=out.stem, storage_path=os.path.join(root, "ray-train"))).fit()
    return _steady(json.loads(out.read_text()))


def ray_train(x, y, *, hidden: list[int], batch_size: int, epochs: int, num_workers: int, use_gpu: bool,
              root: str, performance: dict[str, Any] | None = None,
              profile_to: str | None = None) -> tuple[list[float], float, dict[str, Any]]:
    """Per-epoch samples/s measured inside mlplat's training loop (a profiled epoch left out), the
    wall time of the whole fit, and what the fit left beside (``notes``, ``profile`` files copied
    under ``profile_to``)."""
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
           "scaling": {"num_workers": num_workers, "use_gpu": use_gpu}, "failure": {"max_failures": 0},
           "performance": performance or {}}
    prepared = prepare(cfg, registry=registry, storage=storage)
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    result = run_trainer(prepared, storage=storage, run_id=run_id)
    wall = time.perf_counter() - start
    if getattr(result, "error", None) is not None:
        raise result.error
    progress = read_progress(storage, run_id)
    profile = progress.get("profile") or {}
    rates = [h["train_rows"] / h["epoch_s"] for h in progress["history"] if h["epoch"] != profile.get("epoch")]
    extra: dict[str, Any] = {"notes": progress.get("notes", [])}
    waits = [h["align_wait_s"] for h in progress["history"] if "align_wait_s" in h]
    if waits:  # how long rank 0 waited for the other workers before each epoch (outside epoch_s)
        extra["align_wait_ms"] = [round(1000 * v, 2) for v in waits]
    if profile:
        extra["profile"] = _copy_profile(storage, run_id, profile, profile_to, f"{num_workers}w-b{batch_size}")
    return rates, wall, extra


def _copy_profile(storage, run_id: str, profile: dict[str, Any], dest: str | None, label: str) -> dict[str, Any]:
    """Copy the run's trace and table to ``dest`` and print the table."""
    from pathlib import Path

    from mlplat.training.loop import PROFILE_DIR

    out = {k: v for k, v in profile.items() if k not in ("trace", "table")}
    if "trace" not in profile or dest is None:
        return out
    Path(dest).mkdir(parents=True, exist_ok=True)
    for name, kind in (("trace-rank0.json", "trace"), ("top-rank0.txt", "table")):
        target = Path(dest) / f"p6-{label}-{name}"
        target.write_bytes(storage.read_bytes("runs", run_id, PROFILE_DIR, name))
        out[kind] = str(target)
    print(f"\n== step profile (rank 0, {label}) ==\n{Path(out['table']).read_text()}", flush=True)
    return out


def _steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


PROFILE_STEPS = 40
EFFICIENCY = "samples/s on N GPUs / (N x samples/s on 1 GPU), the same batch size per GPU (N-worker DDP, each worker on 1/N of the rows)"


def card_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run(gpus: int = 0, rows: int | None = None, epochs: int | None = None, hidden: list[int] | None = None,
        batch_size: int | None = None, features: int | None = None, repeats: int | None = None,
        profile_to: str | None = None, eager: bool = False, in_worker: bool = False,
        capture_optimizer: bool = False) -> list[dict[str, Any]]:
    """``repeats`` interleaved rounds; each round runs the bare loop, one 1-worker Ray Train fit
    and (``gpus >= 2``) one ``gpus``-worker fit, each over ``epochs`` epochs (with ``eager`` or
    ``capture_optimizer``, those fits again with that setting; on a GPU also the bare loop with its
    step as one CUDA graph). A run's rate is the median of its
    epochs after the first; a row compares the medians of those over the rounds. ``profile_to``:
    the first round's largest fit profiles an extra first epoch (left out of its rate) and its
    trace and table are copied there."""
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
    if gpus > torch.cuda.device_count():
        raise SystemExit(f"--gpus {gpus}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}})
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1) if not gpus else torch.get_num_threads())
    shape = f"MLP {features}-{'-'.join(map(str, hidden))}-1, {rows:,} rows, batch {batch_size}"
    card = card_name()
    bare, bare_graph, one, multi, walls, walls_n, bare_worker, bare_ddp = [], [], [], [], [], [], [], []
    # context fits with other settings: variant -> workers -> {"rates", "walls", "notes"}
    variants = {name: perf for name, perf, on in (("eager", {"cuda_graphs": False}, eager),
                                                   ("capture_optimizer", {"cuda_graphs": False, "capture_optimizer": True},
                                                    capture_optimizer)) if on}
    context: dict[str, dict[int, dict[str, list[Any]]]] = {name: {} for name in variants}
    extras: dict[str, Any] = {}
    largest = gpus if gpus >= 2 else 1
    ddp_stopped = False
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-train-") as root:
        for round_no in range(repeats):
            bare.append(_steady(bare_loop(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs, device=device)))
            if gpus:
                bare_graph.append(_steady(bare_graph_loop(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs,
                                                          device=device)))
                print(f"round {round_no}: bare eager {bare[-1]:,.0f}, bare CUDA graph {bare_graph[-1]:,.0f} samples/s",
                      flush=True)
            if gpus >= 2 and not ddp_stopped:
                from bench.training_ddp import DDP_TIMEOUT_S, bare_graph_ddp

                ddp_rates = bare_graph_ddp(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs, world=gpus)
                if ddp_rates:
                    bare_ddp.append(_steady(ddp_rates))
                    print(f"round {round_no}: bare DDP + CUDA graphs on {gpus} GPUs {bare_ddp[-1]:,.0f} samples/s "
                          f"(efficiency {bare_ddp[-1] / (gpus * bare_graph[-1]):.3f})", flush=True)
                else:  # not retried in later rounds: a hang would cost each of them the timeout
                    ddp_stopped = True
                    print(f"round {round_no}: bare DDP did not finish in {DDP_TIMEOUT_S} s (stopped); no DDP rows",
                          flush=True)
            if in_worker:
                bare_worker.append(bare_in_worker(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs,
                                                  use_gpu=bool(gpus), root=root))
                print(f"round {round_no}: bare in a Ray Train worker {bare_worker[-1]:,.0f} samples/s "
                      f"(in the driver {bare[-1]:,.0f})", flush=True)
            for workers in ([1, gpus] if gpus >= 2 else [1]):
                profiling = profile_to is not None and round_no == 0 and workers == largest
                perf = {"profile_steps": PROFILE_STEPS} if profiling else {}
                rates, wall, extra = ray_train(x, y, hidden=hidden, batch_size=batch_size,
                                               epochs=epochs + (1 if profiling else 0), num_workers=workers,
                                               use_gpu=bool(gpus), root=root, performance=perf, profile_to=profile_to)
                (one if workers == 1 else multi).append(_steady(rates))
                print(f"round {round_no}: {workers} worker(s) {_steady(rates):,.0f} samples/s (bare {bare[-1]:,.0f}); "
                      f"epochs {[round(r) for r in rates]}; notes {extra.get('notes')}; "
                      f"align wait ms {extra.get('align_wait_ms')}", flush=True)
                (walls if workers == 1 else walls_n).append(round(wall, 2))
                if extra.get("profile"):
                    extras["profile"] = extra["profile"]
                if extra.get("notes"):
                    kept = extras.setdefault("notes" if workers == 1 else "notes_n", [])
                    kept.extend(n for n in list(extra["notes"]) if n not in kept)
            for name, variant_perf in variants.items():
                for workers in ([1, gpus] if gpus >= 2 else [1]):
                    rates, wall, extra = ray_train(x, y, hidden=hidden, batch_size=batch_size, epochs=epochs,
                                                   num_workers=workers, use_gpu=bool(gpus), root=root,
                                                   performance=variant_perf)
                    got = context[name].setdefault(workers, {"rates": [], "walls": [], "notes": []})
                    got["rates"].append(_steady(rates))
                    got["walls"].append(round(wall, 2))
                    got["notes"].extend(n for n in list(extra.get("notes", [])) if n not in got["notes"])
                    print(f"round {round_no}: {name}, {workers} worker(s) {_steady(rates):,.0f} samples/s; "
                          f"notes {extra.get('notes')}", flush=True)
    where = "1 GPU" if gpus else "CPU, 1 worker"
    common = {"card": card, "epochs": epochs, "repeats": repeats, "shape_tag": shape_tag(rows, features, hidden, batch_size),
              "rows": rows, "features": features, "hidden": hidden, "batch_size": batch_size,
              "baseline_method": "bare loop, rows on the same device, one randperm per epoch on the device, "
                                 "same optimizer (fused Adam on CUDA)"}
    default = "default settings (performance.cuda_graphs auto)"
    rows_out = [row("P6", f"Ray Train samples/s ({where}, {default}; {shape})", statistics.median(one), "samples/s",
                    baseline=f"bare torch loop, data on {device} (eager)", baseline_value=statistics.median(bare),
                    target=">=0.95x (GPU, batch 1024)" if gpus else ">=0.95x on GPU (CPU: context)",
                    fit_wall_s=walls, ray_runs=[round(r) for r in one], bare_runs=[round(r) for r in bare],
                    notes=extras.get("notes", []), **common)]
    if gpus >= 2:
        rows_out.append(row("P6", f"Ray Train samples/s ({gpus} GPUs, data parallel, {default}; scaling efficiency; {shape})",
                            statistics.median(multi), "samples/s", baseline=f"{gpus} x the 1-GPU Ray Train rate",
                            baseline_value=gpus * statistics.median(one), target=">=0.9", fit_wall_s=walls_n,
                            ray_runs=[round(r) for r in multi], efficiency_definition=EFFICIENCY,
                            notes=extras.get("notes_n", []), gpus=gpus, **common))
    if bare_graph:
        rows_out.append(row("P6", f"Ray Train samples/s ({where}, {default}; {shape})", statistics.median(one), "samples/s",
                            baseline=f"bare torch loop, data on {device}, its step as CUDA graphs (torch.cuda.graphs recipe, one per batch shape)",
                            baseline_value=statistics.median(bare_graph),
                            target="context: the same technique on both sides (what Ray and mlplat's loop cost)",
                            ray_runs=[round(r) for r in one], bare_runs=[round(r) for r in bare_graph], **common))
    if bare_ddp:
        rows_out.append(row("P6", f"bare PyTorch DDP, whole step as CUDA graphs, samples/s ({gpus} GPUs; scaling efficiency; {shape})",
                            statistics.median(bare_ddp), "samples/s",
                            baseline=f"{gpus} x the 1-GPU bare CUDA-graph loop", baseline_value=gpus * statistics.median(bare_graph),
                            target="context: the efficiency PyTorch itself reaches at this shape (bench/training_ddp.py)",
                            bare_runs=[round(r) for r in bare_ddp], efficiency_definition=EFFICIENCY, gpus=gpus, **common))
        rows_out.append(row("P6", f"Ray Train samples/s ({gpus} GPUs, data parallel, {default}; {shape})",
                            statistics.median(multi), "samples/s",
                            baseline=f"bare PyTorch DDP on {gpus} GPUs, whole step as CUDA graphs",
                            baseline_value=statistics.median(bare_ddp),
                            target="context: the same technique on both sides, N GPUs",
                            ray_runs=[round(r) for r in multi], bare_runs=[round(r) for r in bare_ddp], gpus=gpus, **common))
    if in_worker:
        rows_out.append(row("P6", f"bare torch loop inside a 1-worker Ray Train fit ({where}; {shape})",
                            statistics.median(bare_worker), "samples/s", baseline=f"bare torch loop in the driver, data on {device}",
                            baseline_value=statistics.median(bare), target="context: what the Ray worker process costs",
                            ray_runs=[round(r) for r in bare_worker], bare_runs=[round(r) for r in bare], **common))
    for name, fits in context.items():
        base = fits[1]
        setting = ", ".join(f"performance.{k}: {str(v).lower()}" for k, v in variants[name].items())
        rows_out.append(row("P6", f"Ray Train samples/s ({where}, {setting}; {shape})",
                            statistics.median(base["rates"]), "samples/s", baseline=f"bare torch loop, data on {device} (eager)",
                            baseline_value=statistics.median(bare), target="context (not the default)",
                            fit_wall_s=base["walls"], ray_runs=[round(r) for r in base["rates"]], notes=base["notes"], **common))
        if gpus >= 2:
            rates_n = fits[gpus]["rates"]
            rows_out.append(row("P6", f"Ray Train samples/s ({gpus} GPUs, {setting}; scaling efficiency; {shape})",
                                statistics.median(rates_n), "samples/s",
                                baseline=f"{gpus} x the 1-GPU Ray Train rate with the same settings",
                                baseline_value=gpus * statistics.median(base["rates"]), target=">=0.9 (not the default)",
                                fit_wall_s=fits[gpus]["walls"], ray_runs=[round(r) for r in rates_n],
                                efficiency_definition=EFFICIENCY, notes=fits[gpus]["notes"], gpus=gpus, **common))
    if "profile" in extras:
        rows_out[1 if gpus >= 2 else 0]["profile"] = extras["profile"]  # the largest fit's rank 0
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
    parser.add_argument("--profile", action="store_true",
                        help=f"profile {PROFILE_STEPS} steps of the largest fit's rank 0 (an extra, untimed epoch)")
    parser.add_argument("--eager", action="store_true",
                        help="add fits with performance.cuda_graphs: false (1 worker, and N with --gpus N)")
    parser.add_argument("--capture-optimizer", action="store_true",
                        help="add fits with performance.capture_optimizer (1 worker, and N with --gpus N)")
    parser.add_argument("--bare-in-worker", action="store_true",
                        help="add the bare loop run inside a 1-worker Ray Train fit (a context row)")
    parser.add_argument("--out-dir", default=None, help="where the JSON (and profiles/) go (default bench/results)")
    args = parser.parse_args(argv)
    gpus = max(args.gpus, 1 if args.gpu else 0)
    out = Path(args.out_dir) if args.out_dir else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    rows = stamp(run(gpus=gpus, rows=args.rows, epochs=args.epochs, hidden=args.hidden, batch_size=args.batch_size,
                     features=args.features, repeats=args.repeats,
                     profile_to=str(out / "profiles") if args.profile else None, eager=args.eager, in_worker=args.bare_in_worker,
                     capture_optimizer=args.capture_optimizer))
    first = rows[0]
    default_cpu = (not gpus and first["rows"] == DEFAULTS["rows"] and first["features"] == DEFAULTS["features"]
                   and first["hidden"] == DEFAULTS["hidden"] and first["batch_size"] == DEFAULTS["batch_size"])
    target = out / result_name(gpus, first["shape_tag"], default_cpu)
    target.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
