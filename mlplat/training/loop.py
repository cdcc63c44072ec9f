"""The per-worker training loop run by ``TorchTrainer`` (one copy per worker).

Per epoch: train on this worker's shard (``ray.train.get_dataset_shard``), evaluate on its
validation shard, all-reduce the sums, then every worker calls ``ray.train.report`` (a barrier);
rank 0 attaches a checkpoint sealed by a sha256 manifest and writes ``runs/<run-id>/progress.json``.
On start it resumes from the newest checkpoint that verifies, falling back to older ones.

:func:`train_loop_per_worker` is a sequence of named steps: ``_worker`` (config, rank) ->
``_build`` -> ``_restore_state`` -> ``_prepare_model`` (DDP) -> ``_shards``, then per epoch
``_run_epoch`` (eager steps, or one CUDA graph replay per step with ``performance.cuda_graphs``;
``performance.profile_steps`` records rank 0's first steps; with several workers ``_align_workers``
first, so ``epoch_s`` starts when all have entered the epoch) -> ``_reduce_metrics`` -> ``_check_finite`` -> ``_epoch_state`` (early stopping)
-> ``_save_checkpoint`` (the report every worker makes) -> ``_write_progress``.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mlplat.models import build_model, loss_fn
from mlplat.storage import Storage
from mlplat.training.checkpoints import CheckpointState, latest_valid_checkpoint, read_checkpoint, write_checkpoint
from mlplat.training.config import HyperParams, TrainingConfig
from mlplat.training.inputs import TRAIN, VALIDATION
from mlplat.training.policy import best_index, should_stop_early
from mlplat.training.steps import (
    EagerStep,
    FlatGradSync,
    GraphStep,
    StepProfiler,
    ddp_kwargs,
    grad_sync_mode,
    graph_mode,
    optimizer_flags,
    step_capture,
    targets,
)

__all__ = ["train_loop_per_worker", "make_optimizer", "progress_path", "PROGRESS_FILE", "ShardBatches", "PROFILE_DIR"]

PROGRESS_FILE = "progress.json"
PROFILE_DIR = "profile"  # runs/<run-id>/profile/: rank 0's trace and top-kernels table (profile_steps)


class ShardBatches:
    """One worker's batches of a dataset shard, epoch after epoch.

    In memory (``part`` given: the feature set was materialized because it is small, and Ray
    Train hands it whole to every worker, with no split coordinator actor to start): this
    worker keeps its rows ``[lo, hi)`` (:func:`part_of`: equal parts, as
    ``streaming_split(equal=True)`` gives, so data-parallel ranks step together), pulls them onto
    the device once, and each epoch permutes them (seeded) and slices them -- no per-batch Ray
    Data iterator or host-to-device copy, so a GPU runs at the speed of a bare loop. Otherwise
    (``part`` None) the shard streams through ``iter_torch_batches`` every epoch."""

    def __init__(self, shard: Any, device: Any, batch_size: int, seed: int, shuffle: bool, *,
                 part: tuple[int, int] | None = None):
        self._shard, self._device, self._batch_size = shard, device, batch_size
        self._seed, self._shuffle = seed, shuffle
        self._tensors: tuple[Any, Any] | None = None
        if part is not None:
            import torch

            lo, hi = part
            xs, ys = [], []
            offset = 0
            for batch in shard.iter_torch_batches(batch_size=65536, device="cpu"):
                if offset >= hi:
                    break
                n = len(batch["x"])
                a, b = max(lo - offset, 0), min(hi - offset, n)
                offset += n
                if a < b:
                    xs.append(batch["x"][a:b])
                    ys.append(batch["y"][a:b])
            # no rows for this worker (fewer rows than workers): an empty epoch, never the stream
            self._tensors = (torch.cat(xs).to(device), torch.cat(ys).to(device)) if xs else (torch.empty(0), torch.empty(0))

    def epoch(self, epoch: int | None) -> Any:
        import torch

        if self._tensors is None:
            for batch in self._shard.iter_torch_batches(batch_size=self._batch_size, device=self._device):
                yield batch["x"], batch["y"]
            return
        x, y = self._tensors
        if self._shuffle and epoch is not None:
            # One permutation per epoch, drawn on the rows' device, then contiguous slices: a
            # gather per batch (two kernel launches per step) and a CPU randperm (~5% of a
            # 500k-row GPU epoch) are what a small model on a GPU feels.
            generator = torch.Generator(device=x.device).manual_seed(self._seed + epoch)
            order = torch.randperm(len(x), generator=generator, device=x.device)
            x, y = x[order], y[order]
        for start in range(0, len(x), self._batch_size):
            yield x[start:start + self._batch_size], y[start:start + self._batch_size]


def part_of(total_rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a dataset that ``rank`` of ``world`` equal parts trains on (the
    remainder, under ``world`` rows, is left out).

    >>> part_of(10, 0, 3), part_of(10, 2, 3), part_of(1, 1, 2)
    ((0, 3), (6, 9), (0, 0))
    """
    k = total_rows // world
    return (rank * k, (rank + 1) * k) if k else (0, 0)


def progress_path(run_id: str) -> tuple[str, str, str]:
    return ("runs", run_id, PROGRESS_FILE)


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float, momentum: float,
                   flags: dict[str, Any] | None = None) -> Any:
    import torch

    flags = flags or {}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **flags)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **flags)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **flags)


def _restore(rejected: list[dict[str, str]], storage: Storage | None, run_id: str) -> CheckpointState | None:
    """The checkpoint to resume from: Ray's latest if it verifies, else the newest one of this run on
    storage that does. Storage is scanned also when Ray hands back none: a report whose checkpoint
    was uploaded can be lost with the worker before the controller polled it."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        if storage is None:
            return None
        return latest_valid_checkpoint(storage.fs, storage.path("runs", run_id), rejected=rejected)
    try:
        return read_checkpoint(ckpt)
    except Exception as exc:  # corrupted or partial: fall back to an older one of the same run
        rejected.append({"path": ckpt.path, "reason": str(exc)})
        parent = ckpt.path.rstrip("/").rsplit("/", 1)[0]
        return latest_valid_checkpoint(ckpt.filesystem, parent, rejected=rejected)


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


@dataclass(frozen=True)
class _Worker:
    """What one worker knows of its run: the config, its rank, and where progress goes."""

    cfg: TrainingConfig
    storage: Storage | None
    run_id: str
    input_dim: int
    rank: int
    world: int
    distributed: bool  # world > 1 with a live process group: the epoch sums are all-reduced
    metric: str  # the metric early stopping and the best epoch follow
    mode: str
    #: rows of each materialized dataset, which Ray Train hands whole to every worker (empty:
    #: the datasets stream, split by Ray Train)
    in_memory_rows: dict[str, int] = field(default_factory=dict)

    @property
    def hp(self) -> HyperParams:
        return self.cfg.hyperparameters


@dataclass
class _Progress:
    """The run so far on this worker: restored from a checkpoint, then one entry per epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best_state: dict[str, Any] | None = None  # the best epoch's weights (rank 0 writes them)
    notes: list[str] = field(default_factory=list)  # how the steps ran (e.g. cuda_graphs fell back to eager)
    profile: dict[str, Any] | None = None  # where rank 0's step profile went (profile_steps)


def _worker(loop_config: dict[str, Any]) -> _Worker:
    import ray.train
    import torch

    cfg = TrainingConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    es = cfg.hyperparameters.early_stopping
    return _Worker(cfg=cfg, storage=loop_config.get("storage"), run_id=loop_config["run_id"],
                   input_dim=loop_config["input_dim"], rank=rank, world=world,
                   distributed=world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized(),
                   metric=loop_config.get("metric") or es.metric, mode=loop_config.get("mode") or es.mode,
                   in_memory_rows=dict(loop_config.get("in_memory_rows") or {}))


class _StepPlan(NamedTuple):
    """How this worker's steps run, decided once from the model and the settings."""

    sync: str  # grad_sync_mode: none | flat | ddp
    graphs: bool  # the whole step is a CUDA graph (performance.cuda_graphs)
    graph_note: str | None  # why cuda_graphs: true was asked but the steps stay eager
    capture: str  # step_capture: none | all_reduce | tail


def _step_plan(w: _Worker, model: Any, device_type: str) -> _StepPlan:
    params = [p for p in model.parameters() if p.requires_grad]
    dtypes = len({p.dtype for p in params})
    sync = grad_sync_mode(w.cfg.performance, w.world if w.distributed else 1,
                          sum(p.numel() * p.element_size() for p in params), dtypes, sum(1 for _ in model.buffers()))
    graphs, note = graph_mode(w.cfg.performance, device_type, w.world, sync, w.cfg.spec.architecture)
    return _StepPlan(sync, graphs, note, step_capture(w.cfg.performance, device_type, sync, dtypes, graphs))


def _build(w: _Worker) -> tuple[Any, Any, Any, _StepPlan]:
    """Seeded model, optimizer, loss function and step plan (the model already on this worker's
    device, so the optimizer's fused/capturable state lives there; not yet wrapped in DDP)."""
    import numpy as np
    import ray.train.torch
    import torch

    hp = w.hp
    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed + w.rank)
    device = ray.train.torch.get_device()
    model = build_model(w.cfg.spec, w.input_dim).to(device)
    plan = _step_plan(w, model, device.type)
    flags = optimizer_flags(hp.optimizer, device.type, w.cfg.performance.fused_optimizer,
                            plan.graphs or plan.capture == "tail")
    optimizer = make_optimizer(hp.optimizer, model.parameters(), hp.lr, hp.weight_decay, hp.momentum, flags)
    return model, optimizer, loss_fn(w.cfg.spec.task), plan


def _restore_state(w: _Worker, model: Any, optimizer: Any) -> _Progress:
    """Load the newest verified checkpoint into ``model``/``optimizer``; record the resume."""
    rejected: list[dict[str, str]] = []
    restored = _restore(rejected, w.storage, w.run_id)
    progress = _Progress()
    if restored is not None:
        model.load_state_dict(restored.model_weights())
        optim_state = restored.optimizer_state()
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
        progress.history = list(restored.state.get("history", []))
        progress.resumes = list(restored.state.get("resumes", []))
        progress.start_epoch = restored.epoch + 1
        progress.resumes.append({"from_epoch": restored.epoch, "next_epoch": progress.start_epoch,
                                 "checkpoint": restored.path, "rejected": rejected, "at": time.time()})
        progress.best_state = restored.model_weights(best=True)  # the best epoch's weights (model file if it is the last)
    elif rejected:
        progress.resumes.append({"from_epoch": None, "next_epoch": 0, "checkpoint": None, "rejected": rejected,
                                 "at": time.time()})
    return progress


def _prepare_model(w: _Worker, model: Any, plan: _StepPlan) -> tuple[Any, Any, FlatGradSync | None]:
    """Move the model to this worker's device and, as ``plan`` says, wrap it in DDP or give it a
    :class:`FlatGradSync` (flat sync, or one worker whose optimizer joins a graph); returns
    (model, device, sync)."""
    import ray.train.torch

    if plan.sync == "ddp":
        kwargs = ddp_kwargs(w.cfg.performance, w.cfg.spec.architecture)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs), ray.train.torch.get_device(), None
    model = ray.train.torch.prepare_model(model, parallel_strategy=None)
    sync = FlatGradSync(model, w.world if plan.sync == "flat" else 1) if plan.sync == "flat" or plan.capture == "tail" else None
    return model, ray.train.torch.get_device(), sync


def _shards(w: _Worker, device: Any) -> tuple[ShardBatches, ShardBatches | None]:
    """This worker's training batches and validation batches (None without a validation split)."""
    import ray.train

    hp = w.hp
    seed = hp.seed + 1000 * w.rank
    def part(name: str) -> tuple[int, int] | None:
        return part_of(w.in_memory_rows[name], w.rank, w.world) if name in w.in_memory_rows else None

    train_batches = ShardBatches(ray.train.get_dataset_shard(TRAIN), device, hp.batch_size, seed, shuffle=True,
                                 part=part(TRAIN))
    try:
        val_batches = ShardBatches(ray.train.get_dataset_shard(VALIDATION), device, max(hp.batch_size, 1024), seed,
                                   shuffle=False, part=part(VALIDATION))
    except (KeyError, ValueError):
        val_batches = None
    return train_batches, val_batches


#: Steps whose loss tensors are kept before one stack-and-sum folds them into the epoch's sum.
LOSS_FOLD_STEPS = 256


def _fold(total: Any, losses: list[Any], sizes: list[int]) -> None:
    """Add ``sum(loss_i * size_i)`` to ``total`` (on the device) and empty both lists."""
    import torch

    if losses:
        weights = torch.tensor(sizes, dtype=torch.float64).to(total.device, non_blocking=True)
        total.add_((torch.stack(losses).to(torch.float64) * weights).sum())
        losses.clear()
        sizes.clear()


def _run_epoch(step: Any, model: Any, criterion: Any, train_batches: ShardBatches,
               val_batches: ShardBatches | None, task: str, device: Any, epoch: int,
               profiler: StepProfiler | None = None) -> Any:
    """Train one epoch on this worker's shard (``step``: an :class:`EagerStep` or a
    :class:`GraphStep`), then evaluate; returns this worker's sums, on the device:
    ``[train loss sum, train rows, val loss sum, val rows, correct]``."""
    import torch

    model.train()
    # Loss sums stay on the device until the epoch ends (a float() per batch would force a
    # host-device sync per batch and starve the GPU); one fused add per batch, row counts on
    # the host.
    train_sum = torch.zeros((), dtype=torch.float64, device=device)
    val_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    train_n = val_n = 0
    # The step's loss tensors are kept and summed every LOSS_FOLD_STEPS steps: no kernel of ours
    # between two steps (on a small model a step is ~60 launches; one more is ~2% of it).
    losses: list[Any] = []
    sizes: list[int] = []
    for x, y in train_batches.epoch(epoch):
        losses.append(step(x, y))
        sizes.append(len(x))
        train_n += len(x)
        if len(losses) >= LOSS_FOLD_STEPS:
            _fold(train_sum, losses, sizes)
        if profiler is not None:
            profiler.step()
    _fold(train_sum, losses, sizes)
    if profiler is not None:
        profiler.finish()
    if val_batches is not None:
        net = _unwrap(model)
        net.eval()
        with torch.no_grad():
            for x, y in val_batches.epoch(None):
                out = net(x)
                val_sum.add_(criterion(out, targets(y, out, task)), alpha=len(x))
                val_n += len(x)
                if task == "binary":
                    correct += ((out.reshape(-1) > 0).long() == y.long()).sum()
                elif task == "multiclass":
                    correct += (out.argmax(dim=-1) == y).sum()
    # torch.full: a fill kernel, where torch.tensor(..., device=cuda) would copy from the host and
    # wait for every queued step first
    return torch.stack([train_sum, torch.full((), float(train_n), dtype=torch.float64, device=device),
                        val_sum, torch.full((), float(val_n), dtype=torch.float64, device=device), correct])


def _align_workers(w: _Worker, device: Any) -> float:
    """Wait until every worker has entered the epoch (a one-element all-reduce read back on the
    host); returns the seconds this worker waited. ``ray.train.report`` lets workers go at
    moments a few milliseconds apart: without this, the first one's epoch timer would count the
    wait for the last inside its first all-reduce. With one worker: nothing, 0."""
    if not w.distributed:
        return 0.0
    import torch

    started = time.perf_counter()
    flag = torch.ones(1, device=device)
    torch.distributed.all_reduce(flag)
    flag.item()
    return time.perf_counter() - started


def _reduce_metrics(w: _Worker, sums: Any, epoch: int, started: float) -> dict[str, Any]:
    """All-reduce the epoch's sums over the workers and turn them into the epoch's metrics (the
    same on every worker)."""
    import torch

    if w.distributed:
        # The reduction runs where the process group lives: NCCL (GPU) has no CPU backend.
        torch.distributed.all_reduce(sums)
    sums = sums.cpu()
    train_loss = float(sums[0] / sums[1]) if sums[1] else float("nan")
    metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "train_rows": int(sums[1]),
                               "epoch_s": round(time.perf_counter() - started, 6)}
    if sums[3]:
        metrics["val_loss"] = float(sums[2] / sums[3])
        if w.cfg.spec.task != "regression":
            metrics["val_accuracy"] = float(sums[4] / sums[3])
    return metrics


def _check_finite(metrics: dict[str, Any]) -> bool:
    """Are the epoch's losses finite?

    >>> _check_finite({"train_loss": 0.5, "val_loss": 0.7}), _check_finite({"train_loss": float("nan")})
    (True, False)
    """
    return all(math.isfinite(v) for k, v in metrics.items() if k in ("train_loss", "val_loss"))


def _save_checkpoint(w: _Worker, model: Any, optimizer: Any, metrics: dict[str, Any], state: dict[str, Any],
                     best_state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Report the epoch: every worker calls this once per epoch (``ray.train.report`` is a barrier);
    rank 0 attaches a checkpoint sealed by its manifest (``best_state``: the best epoch's weights
    when they are not this epoch's). Returns rank 0's weights of this epoch (None elsewhere)."""
    import ray.train

    if w.rank != 0:
        ray.train.report(metrics)
        return None
    with tempfile.TemporaryDirectory(prefix="mlplat-ckpt-") as tmp:
        net = _unwrap(model)
        current = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        write_checkpoint(tmp, model_state=current, optimizer_state=optimizer.state_dict(), state=state,
                         best_state=best_state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    return current


def _write_progress(w: _Worker, progress: _Progress, status: str, **fields: Any) -> None:
    """Rank 0 rewrites ``runs/<run-id>/progress.json`` (advisory: a failed write never fails training)."""
    if w.rank != 0 or w.storage is None:
        return
    history = progress.history
    try:
        extra = {**({"notes": progress.notes} if progress.notes else {}),
                 **({"profile": progress.profile} if progress.profile else {})}
        w.storage.write_json({"run_id": w.run_id, "status": status, "epoch": history[-1]["epoch"] if history else None,
                              "epochs": w.hp.epochs, "history": history, "resumes": progress.resumes,
                              "updated_at": time.time(), "rank0_pid": os.getpid(), **extra, **fields},
                             *progress_path(w.run_id))
    except Exception:  # progress is advisory; never fail training on it
        pass


def _report_nonfinite(w: _Worker, progress: _Progress, metrics: dict[str, Any]) -> None:
    """The epoch's loss is NaN/inf: report it (every worker, as a normal epoch) and record why the run stops."""
    import ray.train

    epoch = metrics["epoch"]
    ray.train.report({**metrics, "nonfinite": True})
    _write_progress(w, progress, "nonfinite", nonfinite_epoch=epoch,
                    error=f"non-finite loss at epoch {epoch} (train_loss={metrics['train_loss']}, "
                          f"val_loss={metrics.get('val_loss')})")


def _epoch_state(w: _Worker, progress: _Progress, epoch: int) -> dict[str, Any]:
    """The checkpoint's ``state.json`` after ``epoch``: history, the best epoch so far, and whether
    early stopping ends the run here (``stopped_early``)."""
    es = w.hp.early_stopping
    history = progress.history
    values = [h[w.metric] for h in history]
    best = best_index(values, w.mode, es.min_delta)
    return {"epoch": epoch, "history": history, "resumes": progress.resumes,
            "best_epoch": history[best]["epoch"] if best is not None else None, "metric": w.metric, "mode": w.mode,
            "run_id": w.run_id, "stopped_early": should_stop_early(values, w.mode, es.patience, es.min_delta)}


def _step_runner(w: _Worker, model: Any, optimizer: Any, criterion: Any, plan: _StepPlan,
                 progress: _Progress, sync: FlatGradSync | None) -> EagerStep | GraphStep:
    if plan.graph_note:
        progress.notes.append(plan.graph_note)
    if plan.graphs:
        return GraphStep(model, optimizer, criterion, w.cfg.spec.task, sync)
    return EagerStep(model, optimizer, criterion, w.cfg.spec.task, sync, capture=plan.capture)


def _profiler_for(w: _Worker, device: Any, epoch: int, progress: _Progress) -> StepProfiler | None:
    """Rank 0's profiler for the first epoch this run trains (``performance.profile_steps``)."""
    steps = w.cfg.performance.profile_steps
    if not steps or w.rank != 0 or epoch != progress.start_epoch or progress.profile is not None:
        return None
    return StepProfiler(steps, device.type)


def _save_profile(w: _Worker, profiler: StepProfiler | None, epoch: int, progress: _Progress) -> None:
    """Write rank 0's trace and table under ``runs/<run-id>/profile/`` (advisory, as progress)."""
    if profiler is None or w.storage is None:
        return
    where: dict[str, Any] = {"epoch": epoch, "steps": profiler.recorded}
    try:
        if profiler.trace is not None and profiler.table is not None:
            parts = ("runs", w.run_id, PROFILE_DIR)
            w.storage.write_bytes(profiler.trace, *parts, f"trace-rank{w.rank}.json")
            w.storage.write_bytes(profiler.table.encode(), *parts, f"top-rank{w.rank}.txt")
            where.update(trace=w.storage.uri_of(*parts, f"trace-rank{w.rank}.json"),
                         table=w.storage.uri_of(*parts, f"top-rank{w.rank}.txt"))
            print(f"[mlplat] step profile of rank {w.rank}, epoch {epoch}:\n{profiler.table}", flush=True)
        else:
            where["error"] = profiler.error or f"the epoch had {profiler.seen} steps: too few to record after the warm-up"
    except Exception as exc:  # a profile is advisory; never fail training on it
        where["error"] = f"{type(exc).__name__}: {exc}"
    progress.profile = where


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    w = _worker(loop_config)
    model, optimizer, criterion, plan = _build(w)
    progress = _restore_state(w, model, optimizer)
    model, device, sync = _prepare_model(w, model, plan)
    if plan.sync != "none":
        progress.notes.append(f"gradients averaged over {w.world} workers by {plan.sync} (performance.grad_sync)")
    step = _step_runner(w, model, optimizer, criterion, plan, progress, sync)
    train_batches, val_batches = _shards(w, device)

    _write_progress(w, progress, "running")
    for epoch in range(progress.start_epoch, w.hp.epochs):
        profiler = _profiler_for(w, device, epoch, progress)
        waited_s = _align_workers(w, device)
        started = time.perf_counter()
        sums = _run_epoch(step, model, criterion, train_batches, val_batches, w.cfg.spec.task, device, epoch, profiler)
        metrics = _reduce_metrics(w, sums, epoch, started)
        if w.distributed:
            metrics["align_wait_s"] = round(waited_s, 4)
        _save_profile(w, profiler, epoch, progress)
        if step.note and step.note not in progress.notes:
            progress.notes.append(step.note)
        finite = _check_finite(metrics)
        metrics.setdefault(w.metric, metrics["train_loss"])  # no validation rows: track the training loss
        progress.history.append(metrics)
        if not finite:
            # Every worker sees the same reduced sums, so all stop here together (no barrier mismatch).
            _report_nonfinite(w, progress, metrics)
            return
        state = _epoch_state(w, progress, epoch)
        best_epoch = state["best_epoch"]
        current = _save_checkpoint(w, model, optimizer, metrics, state,
                                   progress.best_state if best_epoch != epoch else None)
        if current is not None and best_epoch == epoch:
            progress.best_state = current
        _write_progress(w, progress, "running", best_epoch=best_epoch)
        if state["stopped_early"]:
            _write_progress(w, progress, "stopped_early", best_epoch=best_epoch)
            break
    else:
        history = progress.history
        idx = best_index([h[w.metric] for h in history], w.mode, w.hp.early_stopping.min_delta)
        _write_progress(w, progress, "finished", best_epoch=None if idx is None else history[idx]["epoch"])
    if os.environ.get("MLPLAT_TRAIN_DEBUG"):
        print(f"[mlplat] rank {w.rank} done after {len(progress.history)} epoch(s)")
