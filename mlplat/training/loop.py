"""The per-worker training loop run by ``TorchTrainer`` (one copy per worker).

Per epoch: train on this worker's shard (``ray.train.get_dataset_shard``), evaluate on its
validation shard, all-reduce the sums, then every worker calls ``ray.train.report`` (a barrier);
rank 0 attaches a checkpoint sealed by a sha256 manifest and writes ``runs/<run-id>/progress.json``.
On start it resumes from the newest checkpoint that verifies, falling back to older ones.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

from mlplat.models import ModelSpec, build_model, loss_fn
from mlplat.storage import Storage
from mlplat.training.checkpoints import CheckpointState, latest_valid_checkpoint, read_checkpoint, write_checkpoint
from mlplat.training.config import TrainingConfig
from mlplat.training.inputs import TRAIN, VALIDATION
from mlplat.training.policy import best_index, should_stop_early

__all__ = ["train_loop_per_worker", "make_optimizer", "progress_path", "PROGRESS_FILE"]

PROGRESS_FILE = "progress.json"


class ShardBatches:
    """One worker's batches of a dataset shard, epoch after epoch.

    In memory (the feature set was materialized because it is small): the shard is pulled onto
    the device once and each epoch permutes it (seeded) and slices it -- no per-batch Ray Data
    iterator or host-to-device copy, so a GPU runs at the speed of a bare loop. Otherwise the
    shard streams through ``iter_torch_batches`` every epoch."""

    def __init__(self, shard: Any, device: Any, batch_size: int, in_memory: bool, seed: int, shuffle: bool):
        self._shard, self._device, self._batch_size = shard, device, batch_size
        self._seed, self._shuffle = seed, shuffle
        self._tensors: tuple[Any, Any] | None = None
        if in_memory:
            import torch

            xs, ys = [], []
            for batch in shard.iter_torch_batches(batch_size=65536, device=device):
                xs.append(batch["x"])
                ys.append(batch["y"])
            if xs:
                self._tensors = (torch.cat(xs), torch.cat(ys))

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


def progress_path(run_id: str) -> tuple[str, str, str]:
    return ("runs", run_id, PROGRESS_FILE)


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float, momentum: float) -> Any:
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    cfg = TrainingConfig.model_validate(loop_config["config"])
    storage: Storage | None = loop_config.get("storage")
    run_id: str = loop_config["run_id"]
    input_dim: int = loop_config["input_dim"]
    hp = cfg.hyperparameters
    spec: ModelSpec = cfg.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed + rank)
    model = build_model(spec, input_dim)
    optimizer = make_optimizer(hp.optimizer, model.parameters(), hp.lr, hp.weight_decay, hp.momentum)
    criterion = loss_fn(spec.task)

    rejected: list[dict[str, str]] = []
    restored = _restore(rejected, storage, run_id)
    history: list[dict[str, Any]] = []
    resumes: list[dict[str, Any]] = []
    start_epoch = 0
    best_state: dict[str, Any] | None = None
    if restored is not None:
        model.load_state_dict(restored.model_weights())
        optim_state = restored.optimizer_state()
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
        history = list(restored.state.get("history", []))
        resumes = list(restored.state.get("resumes", []))
        start_epoch = restored.epoch + 1
        resumes.append({"from_epoch": restored.epoch, "next_epoch": start_epoch, "checkpoint": restored.path,
                        "rejected": rejected, "at": time.time()})
        best_state = restored.model_weights(best=True)  # the best epoch's weights (model file if it is the last)
    elif rejected:
        resumes.append({"from_epoch": None, "next_epoch": 0, "checkpoint": None, "rejected": rejected, "at": time.time()})

    # DDP (world > 1): gradients live in the all-reduce buckets (one copy less per step); the zoo's
    # models use the same parameters every step, so DDP may also skip its per-step graph search.
    ddp_kwargs = {"gradient_as_bucket_view": True, **({"static_graph": True} if spec.architecture != "custom" else {})}
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)
    device = ray.train.torch.get_device()
    in_memory = bool(loop_config.get("in_memory"))
    seed = hp.seed + 1000 * rank
    train_batches = ShardBatches(ray.train.get_dataset_shard(TRAIN), device, hp.batch_size, in_memory, seed, shuffle=True)
    try:
        val_batches = ShardBatches(ray.train.get_dataset_shard(VALIDATION), device, max(hp.batch_size, 1024), in_memory,
                                   seed, shuffle=False)
    except (KeyError, ValueError):
        val_batches = None

    es = hp.early_stopping
    metric_name = loop_config.get("metric") or es.metric
    mode = loop_config.get("mode") or es.mode
    task = spec.task

    def targets(y: Any, out: Any) -> Any:
        return y if task == "multiclass" else y.reshape(out.shape)

    def write_progress(status: str, **fields: Any) -> None:
        if rank != 0 or storage is None:
            return
        try:
            storage.write_json({"run_id": run_id, "status": status, "epoch": history[-1]["epoch"] if history else None,
                                "epochs": hp.epochs, "history": history, "resumes": resumes, "updated_at": time.time(),
                                "rank0_pid": os.getpid(),
                                **fields}, *progress_path(run_id))
        except Exception:  # progress is advisory; never fail training on it
            pass

    write_progress("running")
    for epoch in range(start_epoch, hp.epochs):
        started = time.perf_counter()
        model.train()
        # Loss sums stay on the device until the epoch ends (a float() per batch would force a
        # host-device sync per batch and starve the GPU); one fused add per batch, row counts on
        # the host.
        train_sum = torch.zeros((), dtype=torch.float64, device=device)
        val_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        train_n = val_n = 0
        for x, y in train_batches.epoch(epoch):
            out = model(x)
            loss = criterion(out, targets(y, out))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_sum.add_(loss.detach(), alpha=len(x))
            train_n += len(x)
        if val_batches is not None:
            net = _unwrap(model)
            net.eval()
            with torch.no_grad():
                for x, y in val_batches.epoch(None):
                    out = net(x)
                    val_sum.add_(criterion(out, targets(y, out)), alpha=len(x))
                    val_n += len(x)
                    if task == "binary":
                        correct += ((out.reshape(-1) > 0).long() == y.long()).sum()
                    elif task == "multiclass":
                        correct += (out.argmax(dim=-1) == y).sum()
        sums = torch.stack([train_sum, torch.tensor(float(train_n), dtype=torch.float64, device=device),
                            val_sum, torch.tensor(float(val_n), dtype=torch.float64, device=device), correct])
        if distributed:
            # The reduction runs where the process group lives: NCCL (GPU) has no CPU backend.
            torch.distributed.all_reduce(sums)
        sums = sums.cpu()
        train_loss = float(sums[0] / sums[1]) if sums[1] else float("nan")
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "train_rows": int(sums[1]),
                                   "epoch_s": round(time.perf_counter() - started, 4)}
        if sums[3]:
            metrics["val_loss"] = float(sums[2] / sums[3])
            if task != "regression":
                metrics["val_accuracy"] = float(sums[4] / sums[3])
        nonfinite = not all(math.isfinite(v) for k, v in metrics.items() if k in ("train_loss", "val_loss"))
        if metric_name not in metrics:
            metrics[metric_name] = metrics["train_loss"]  # no validation rows: track the training loss
        history.append(metrics)
        if nonfinite:
            # Every worker sees the same reduced sums, so all stop here together (no barrier mismatch).
            ray.train.report({**metrics, "nonfinite": True})
            write_progress("nonfinite", nonfinite_epoch=epoch,
                           error=f"non-finite loss at epoch {epoch} (train_loss={train_loss}, val_loss={metrics.get('val_loss')})")
            return
        values = [h[metric_name] for h in history]
        best = best_index(values, mode, es.min_delta)
        best_epoch = history[best]["epoch"] if best is not None else None
        stop = should_stop_early(values, mode, es.patience, es.min_delta)
        state = {"epoch": epoch, "history": history, "resumes": resumes, "best_epoch": best_epoch,
                 "metric": metric_name, "mode": mode, "run_id": run_id, "stopped_early": stop}
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="mlplat-ckpt-") as tmp:
                net = _unwrap(model)
                current = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                write_checkpoint(tmp, model_state=current, optimizer_state=optimizer.state_dict(), state=state,
                                 best_state=best_state if best_epoch != epoch else None)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            if best_epoch == epoch:
                best_state = current
        else:
            ray.train.report(metrics)
        write_progress("running", best_epoch=best_epoch)
        if stop:
            write_progress("stopped_early", best_epoch=best_epoch)
            break
    else:
        idx = best_index([h[metric_name] for h in history], mode, es.min_delta)
        write_progress("finished", best_epoch=None if idx is None else history[idx]["epoch"])
    if os.environ.get("MLPLAT_TRAIN_DEBUG"):
        print(f"[mlplat] rank {rank} done after {len(history)} epoch(s)")
