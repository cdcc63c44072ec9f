"""Fitting and scoring members, one entity's rows at a time: plain torch in the calling process.

These run inside the partition tasks of :mod:`mlplat.families.partition` (and in the
benchmark's baseline, so both sides fit identically). Weights leave a worker as safetensors
bytes, never as pickled tensors.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplat.errors import MlplatError
from mlplat.families.policy import MemberEvaluation, entity_key, fit_skip_reason

__all__ = ["FIT_TRAINED", "FIT_SKIPPED", "FIT_FAILED", "BLOCK_MEMBERS", "NULL_ENTITY", "fit_group", "fit_block",
           "fit_groups", "stackable", "evaluate_groups", "member_seed", "weights_from_bytes"]

FIT_TRAINED, FIT_SKIPPED, FIT_FAILED = "trained", "skipped", "failed"
NULL_ENTITY = "<null>"  # how rows without an entity value are reported among the skipped
_THREADS_SET = False


def _one_thread() -> None:
    """Many tiny fits per process: one intra-op thread each beats contention between them."""
    global _THREADS_SET
    if not _THREADS_SET:
        import torch

        torch.set_num_threads(1)
        _THREADS_SET = True


def member_seed(seed: int, key: str) -> int:
    """The seed of one entity's fit: the same whichever partition or process fits it.

    >>> member_seed(0, "store-1") == member_seed(0, "store-1") != member_seed(1, "store-1")
    True
    """
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def _label_array(values: np.ndarray, task: str) -> np.ndarray:
    return values.astype(np.int64 if task == "multiclass" else np.float32)


def fit_group(key: str, x: np.ndarray, y: np.ndarray, *, spec: Any, fit: Mapping[str, Any]) -> dict[str, Any]:
    """Fit one member on ``x`` (rows, features) float32 and ``y``; returns ``{"entity", "status",
    "reason", "rows", "train_loss", "fit_s", "weights"}`` (weights: safetensors bytes, or None)."""
    import torch
    from safetensors.torch import save

    from mlplat.models import build_model, loss_fn

    _one_thread()
    started = time.perf_counter()
    out: dict[str, Any] = {"entity": key, "status": FIT_SKIPPED, "reason": "", "rows": int(len(y)), "train_loss": None,
                           "fit_s": 0.0, "weights": None}
    keep = np.isfinite(y.astype(np.float64))
    if not keep.all():
        x, y = x[keep], y[keep]
    skip = fit_skip_reason(int(len(y)), int(fit["min_rows_per_member"]))
    if skip is not None:
        out["reason"] = skip
        return out
    try:
        generator = torch.Generator().manual_seed(member_seed(int(fit["seed"]), key))
        torch.manual_seed(member_seed(int(fit["seed"]), key))
        model = build_model(spec, x.shape[1])
        model.train()
        xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(_label_array(y, spec.task))
        crit = loss_fn(spec.task)
        opt = torch.optim.Adam(model.parameters(), lr=float(fit["lr"]), weight_decay=float(fit["weight_decay"]),
                               foreach=False)  # a handful of tiny tensors: the multi-tensor path costs more than it saves
        batch = int(fit["batch_size"])
        for _ in range(int(fit["epochs"])):
            order = torch.randperm(len(xt), generator=generator)
            for i in range(0, len(xt), batch):
                idx = order[i:i + batch]
                pred = model(xt[idx])
                loss = crit(pred, yt[idx] if spec.task == "multiclass" else yt[idx].reshape(pred.shape))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.inference_mode():
            pred = model(xt)
            final = float(crit(pred, yt if spec.task == "multiclass" else yt.reshape(pred.shape)))
        out["train_loss"] = final
        if not np.isfinite(final):
            out.update(status=FIT_FAILED, reason=f"non-finite training loss ({final}) after {fit['epochs']} epochs")
            return out
        out.update(status=FIT_TRAINED, weights=save({k: v.contiguous() for k, v in model.state_dict().items()}))
    except Exception as exc:  # one member's failure never ends the job
        out.update(status=FIT_FAILED, reason=f"{type(exc).__name__}: {exc}"[:2000])
    out["fit_s"] = round(time.perf_counter() - started, 6)
    return out


def weights_from_bytes(data: bytes) -> dict[str, Any]:
    """A member's state dict from the safetensors bytes :func:`fit_group` returned."""
    from safetensors.torch import load

    return load(data)


def _groups(frame: Any, entity_column: str) -> Any:
    return frame.groupby(entity_column, sort=False, dropna=True)


#: Members fitted together in one stacked forward/backward pass at most.
BLOCK_MEMBERS = 256


def stackable(spec: Any) -> bool:
    """Whether members of ``spec`` can be fitted side by side as stacked tensors: a plain MLP or
    linear model without dropout (a custom factory or random dropout runs one member at a time)."""
    return spec.architecture in ("mlp", "linear") and not spec.dropout


def _linear_layers(model: Any) -> list[tuple[str, Any]]:
    from torch import nn

    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def fit_block(items: Sequence[tuple[str, np.ndarray, np.ndarray]], *, spec: Any,
              fit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Fit several members at once, each exactly as :func:`fit_group` would (same seed, same
    batches, its own Adam state): their weights are stacked along a first "member" axis and
    every layer runs as one batched matmul, so a step costs about what one member's step costs.
    Callers group members with the same number of batches per epoch (every member takes a
    step at every step). Labelled rows only; ``min_rows_per_member`` checked by the caller."""
    import torch
    from safetensors.torch import save

    from mlplat.models import build_model

    _one_thread()
    started = time.perf_counter()
    k, batch = len(items), int(fit["batch_size"])
    sizes = [len(y) for _, _, y in items]
    n_max, dim = max(sizes), items[0][1].shape[1]
    x = torch.zeros((k, n_max, dim), dtype=torch.float32)
    y = torch.zeros((k, n_max), dtype=torch.int64 if spec.task == "multiclass" else torch.float32)
    models, generators = [], []
    for i, (key, xi, yi) in enumerate(items):
        x[i, :len(yi)] = torch.from_numpy(np.ascontiguousarray(xi, dtype=np.float32))
        y[i, :len(yi)] = torch.from_numpy(_label_array(yi, spec.task))
        torch.manual_seed(member_seed(int(fit["seed"]), key))  # the same initial weights as fit_group
        models.append(build_model(spec, dim))
        generators.append(torch.Generator().manual_seed(member_seed(int(fit["seed"]), key)))
    layers = [[m for _, m in _linear_layers(model)] for model in models]
    weights = [torch.stack([ls[j].weight.detach() for ls in layers]).requires_grad_() for j in range(len(layers[0]))]
    biases = [torch.stack([ls[j].bias.detach() for ls in layers]).requires_grad_() for j in range(len(layers[0]))]
    opt = torch.optim.Adam([*weights, *biases], lr=float(fit["lr"]), weight_decay=float(fit["weight_decay"]), foreach=False)
    rows = torch.arange(k).unsqueeze(1)

    def forward(xb: Any) -> Any:
        h = xb
        for j, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if j < len(weights) - 1:
                h = torch.relu(h)
        return h

    def member_loss(out: Any, target: Any, mask: Any) -> Any:
        import torch.nn.functional as F

        if spec.task == "regression":
            each = (out.squeeze(-1) - target) ** 2
        elif spec.task == "binary":
            each = F.binary_cross_entropy_with_logits(out.squeeze(-1), target, reduction="none")
        else:
            each = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), reduction="none").reshape(target.shape)
        return (each * mask).sum(1) / mask.sum(1)  # each member's mean over its own rows

    steps = -(-sizes[0] // batch)
    size_t = torch.tensor(sizes).unsqueeze(1)
    for _ in range(int(fit["epochs"])):
        order = torch.zeros((k, n_max), dtype=torch.int64)
        for i, n in enumerate(sizes):
            order[i, :n] = torch.randperm(n, generator=generators[i])
        for step in range(steps):
            pos = torch.arange(step * batch, min((step + 1) * batch, n_max))
            mask = (pos.unsqueeze(0) < size_t).float()  # a shorter member's last batch is partial
            idx = order[:, pos]
            loss = member_loss(forward(x[rows, idx]), y[rows, idx], mask).sum()  # members share no weight
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.inference_mode():
        full = (torch.arange(n_max).unsqueeze(0) < size_t).float()
        final = member_loss(forward(x), y, full)
    elapsed = round((time.perf_counter() - started) / k, 6)
    out = []
    for i, (key, _, yi) in enumerate(items):
        loss_i = float(final[i])
        record: dict[str, Any] = {"entity": key, "status": FIT_TRAINED, "reason": "", "rows": int(len(yi)),
                                  "train_loss": loss_i, "fit_s": elapsed, "weights": None}
        if not np.isfinite(loss_i):
            record.update(status=FIT_FAILED, reason=f"non-finite training loss ({loss_i}) after {fit['epochs']} epochs")
        else:
            for j, layer in enumerate(layers[i]):
                layer.weight.data.copy_(weights[j].detach()[i])
                layer.bias.data.copy_(biases[j].detach()[i])
            record["weights"] = save({n: t.contiguous() for n, t in models[i].state_dict().items()})
        out.append(record)
    return out


def fit_groups(frame: Any, *, entity_column: str, feature_columns: Sequence[str], label: str, spec: Any,
               fit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Fit every entity of a pandas frame: stacked blocks (:func:`fit_block`) where the model
    allows, else :func:`fit_group` one entity at a time. Null entities are left out."""
    out: list[dict[str, Any]] = []
    nulls = int(frame[entity_column].isna().sum())
    if nulls:  # all null-entity rows hash to one partition: one record for them
        out.append({"entity": NULL_ENTITY, "status": FIT_SKIPPED, "reason": f"{nulls} rows have no {entity_column} value",
                    "rows": nulls, "train_loss": None, "fit_s": 0.0, "weights": None})
    ready: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    batch = int(fit["batch_size"])
    for value, rows in _groups(frame, entity_column):
        key = entity_key(value)
        x = rows[list(feature_columns)].to_numpy(dtype=np.float32)
        y = rows[label].to_numpy()
        if not stackable(spec):
            out.append(fit_group(key, x, y, spec=spec, fit=fit))
            continue
        keep = np.isfinite(y.astype(np.float64))
        x, y = x[keep], y[keep]
        skip = fit_skip_reason(int(len(y)), int(fit["min_rows_per_member"]))
        if skip is not None:
            out.append({"entity": key, "status": FIT_SKIPPED, "reason": skip, "rows": int(len(y)), "train_loss": None,
                        "fit_s": 0.0, "weights": None})
            continue
        steps = -(-len(y) // batch)  # members in a block take the same number of steps per epoch
        block = ready.setdefault(steps, [])
        block.append((key, x, y))
        if len(block) >= BLOCK_MEMBERS:
            out.extend(_fit_block_safely(ready.pop(steps), spec, fit))
    for block in ready.values():
        out.extend(_fit_block_safely(block, spec, fit))
    return out


def _fit_block_safely(block: list[tuple[str, np.ndarray, np.ndarray]], spec: Any,
                      fit: Mapping[str, Any]) -> list[dict[str, Any]]:
    try:
        return fit_block(block, spec=spec, fit=fit)
    except Exception:  # one bad member must not fail its block-mates: fit them one by one
        return [fit_group(key, x, y, spec=spec, fit=fit) for key, x, y in block]


def evaluate_groups(frame: Any, *, storage: Any, entity_column: str, label: str,
                    plan: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, MemberEvaluation]]:
    """Score each planned member on its entity's rows of a pandas frame (``plan``: entity key ->
    ``{"member", "version", "sha256", "input_columns", "task", "num_classes", "champion"}``, where
    ``champion`` is ``{"version", "sha256"}`` or None). A member whose weights do not load gets
    ``load_error``; a champion that does not load only a note."""
    _one_thread()
    out = []
    for value, rows in _groups(frame, entity_column):
        item = plan.get(entity_key(value))
        if item is None:
            continue
        y = rows[label].to_numpy(dtype=np.float64)
        has_label = np.isfinite(y)
        x = rows[list(item["input_columns"])].to_numpy(dtype=np.float32)[has_label]
        y = y[has_label]
        notes: list[str] = []
        if not has_label.all():
            notes.append(f"{int((~has_label).sum())} rows without a label were left out")
        try:
            metrics, bad = _score(storage, item["member"], item["version"], item["sha256"], item, x, y)
        except MlplatError as exc:
            out.append((item["member"], MemberEvaluation(rows=int(len(y)), load_error=str(exc), notes=tuple(notes))))
            continue
        champion = None
        champ = item.get("champion")
        if champ:
            try:
                c_metrics, c_bad = _score(storage, item["member"], champ["version"], champ["sha256"], item, x, y)
                champion = {"version": champ["version"], "metrics": c_metrics, "non_finite_predictions": c_bad}
            except MlplatError as exc:
                notes.append(f"production v{champ['version']} could not be loaded ({exc}); champion guardrails skipped")
        out.append((item["member"], MemberEvaluation(rows=int(len(y)), non_finite_predictions=bad, metrics=metrics,
                                                     champion=champion, notes=tuple(notes))))
    return out


def _score(storage: Any, member: str, version: int, sha256: str | None, item: Mapping[str, Any], x: np.ndarray,
           y: np.ndarray) -> tuple[dict[str, Any], int]:
    import torch

    from mlplat.models import load_bundle, predict_outputs
    from mlplat.models.metrics import metrics_of

    loaded = load_bundle(storage, member, int(version), expected_sha256=sha256)
    with torch.inference_mode():
        pred = predict_outputs(loaded.spec.task, loaded.model(torch.from_numpy(x))).numpy()
    finite = np.isfinite(pred) if pred.ndim == 1 else np.isfinite(pred).all(axis=1)
    bad = int((~finite).sum())
    if not len(y) or not finite.any():
        return {}, bad
    metrics = metrics_of(loaded.spec.task, y[finite], pred[finite], num_classes=loaded.spec.num_classes)
    return dict(metrics), bad
