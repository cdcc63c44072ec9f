"""Model-quality metrics with numpy only: exact functions on arrays, and streaming accumulators.

Layer 2, so that validation (scoring a version on its validation split) and monitoring (scoring
its live outcomes for performance drift) compute the same numbers; ``mlplat.validation.metrics``
re-exports this module.

The functions (``rmse``, ``roc_auc``, ...) take whole arrays and are the reference. The
accumulators take batches, keep bounded state (sums, a score histogram, a confusion matrix, a
fixed-size sample for plots) and merge, so a split of any size is scored in one pass without
holding its predictions. Every accumulator metric equals the array function exactly, except
the accumulator's ROC AUC, which treats scores within 1/65536 of each other as ties.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlplat.errors import ValidationError

__all__ = [
    "METRICS_BY_TASK",
    "HIGHER_IS_BETTER",
    "rmse",
    "mae",
    "r2",
    "roc_auc",
    "log_loss",
    "accuracy",
    "f1_binary",
    "expected_calibration_error",
    "multiclass_log_loss",
    "macro_f1",
    "RegressionAccumulator",
    "BinaryAccumulator",
    "MulticlassAccumulator",
    "make_accumulator",
    "metrics_of",
    "primary_metric",
]

#: Metrics each task reports, in display order.
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "regression": ("rmse", "mae", "r2"),
    "binary": ("auc", "log_loss", "accuracy", "f1", "ece"),
    "multiclass": ("accuracy", "macro_f1", "log_loss"),
}
#: Direction of each metric (for plots, for reading a guardrail, for judging a drop in quality).
HIGHER_IS_BETTER: dict[str, bool] = {
    "rmse": False, "mae": False, "r2": True, "auc": True, "log_loss": False, "accuracy": True,
    "f1": True, "ece": False, "macro_f1": True,
}

_EPS = 1e-15
_AUC_BINS = 65536
_ECE_BINS = 15
_SAMPLE_SIZE = 5000


# -- exact functions on arrays ---------------------------------------------------------------


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValidationError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValidationError("no rows to compute metrics on")
    return y, p


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error. ``rmse([1, 2], [1, 4]) == sqrt(2)``."""
    y, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error."""
    y, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(y - p)))


def r2(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination, 1 - SSE/SST; NaN when the labels are constant."""
    y, p = _pair(y_true, y_pred)
    sst = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if sst == 0.0 else 1.0 - float(np.sum((y - p) ** 2)) / sst


def _binary_labels(y: np.ndarray) -> np.ndarray:
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValidationError(f"binary labels must be 0 or 1, found {bad.tolist()}")
    return y


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); NaN when the
    labels hold only one class."""
    y, s = _pair(y_true, y_score)
    _binary_labels(y)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average ranks of tied groups (1-based).
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y_true: Any, y_prob: Any) -> float:
    """Binary cross-entropy of probabilities (clipped to [1e-15, 1 - 1e-15])."""
    y, p = _pair(y_true, y_prob)
    _binary_labels(y)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of equal labels (give class labels, not probabilities)."""
    y, p = _pair(y_true, y_pred)
    return float(np.mean(y == p))


def f1_binary(y_true: Any, y_prob: Any, threshold: float = 0.5) -> float:
    """F1 of the positive class with ``prob >= threshold`` predicted positive; 0 when there
    are no positive labels and no positive predictions."""
    y, p = _pair(y_true, y_prob)
    _binary_labels(y)
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _ece_bin(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((p * bins).astype(np.int64), bins - 1)


def expected_calibration_error(y_true: Any, y_prob: Any, bins: int = _ECE_BINS) -> float:
    """ECE: the row-weighted mean of |mean probability - positive rate| over ``bins`` equal-width
    probability bins (the last bin includes 1.0)."""
    y, p = _pair(y_true, y_prob)
    _binary_labels(y)
    idx = _ece_bin(np.clip(p, 0.0, 1.0), bins)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(sum_p[used] - sum_y[used])) / y.size)


def multiclass_log_loss(y_true: Any, probs: Any) -> float:
    """Cross-entropy of class probabilities ``(n, k)`` against integer labels."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    P = np.asarray(probs, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != y.size:
        raise ValidationError(f"probabilities must be (rows, classes) with {y.size} rows, got shape {P.shape}")
    _class_labels(y, P.shape[1])
    return float(-np.mean(np.log(np.clip(P[np.arange(y.size), y], _EPS, 1.0))))


def _class_labels(y: np.ndarray, k: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValidationError(f"class labels must be integers in [0, {k - 1}], found {int(y.min())}..{int(y.max())}")


def _macro_f1_from_confusion(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    # Classes absent from both labels and predictions are left out (as sklearn's labels=present).
    present = denom > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / denom[present]))


def macro_f1(y_true: Any, y_pred: Any, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes seen in labels or predictions."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    k = num_classes or int(max(y.max(initial=0), p.max(initial=0)) + 1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return _macro_f1_from_confusion(cm)


def _clean(value: float) -> float | None:
    """JSON-friendly: NaN/Inf become None (a metric that is undefined, e.g. AUC of one class)."""
    return None if value is None or not math.isfinite(value) else float(value)


# -- streaming accumulators ------------------------------------------------------------------


class _Sample:
    """A uniform fixed-size sample of rows kept by smallest random key (mergeable)."""

    def __init__(self, size: int = _SAMPLE_SIZE, seed: int = 0):
        self.size = size
        self._rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.cols: dict[str, np.ndarray] = {}

    def add(self, **cols: np.ndarray) -> None:
        n = len(next(iter(cols.values())))
        keys = np.concatenate([self.keys, self._rng.random(n)])
        merged = {k: np.concatenate([self.cols[k], v]) if k in self.cols else v for k, v in cols.items()}
        if keys.size > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            keys = keys[keep]
            merged = {k: v[keep] for k, v in merged.items()}
        self.keys, self.cols = keys, merged


class _Accumulator:
    task = ""

    def __init__(self, sample: bool = False):
        self.rows = 0
        self.sample = _Sample() if sample else None

    def update(self, y: np.ndarray, pred: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float | None]:
        raise NotImplementedError

    def curves(self) -> dict[str, Any]:
        return {}


class RegressionAccumulator(_Accumulator):
    """RMSE, MAE, R² from sums; labels' mean and spread merged with Chan's formula."""

    task = "regression"

    def __init__(self, sample: bool = False):
        super().__init__(sample)
        self.sse = 0.0
        self.sae = 0.0
        self.mean_y = 0.0
        self.m2_y = 0.0

    def update(self, y: np.ndarray, pred: np.ndarray) -> None:
        y, p = np.asarray(y, np.float64).reshape(-1), np.asarray(pred, np.float64).reshape(-1)
        n = y.size
        if n == 0:
            return
        err = y - p
        self.sse += float(err @ err)
        self.sae += float(np.abs(err).sum())
        mean_b = float(y.mean())
        m2_b = float(((y - mean_b) ** 2).sum())
        total = self.rows + n
        delta = mean_b - self.mean_y
        self.mean_y += delta * n / total
        self.m2_y += m2_b + delta * delta * self.rows * n / total
        self.rows = total
        if self.sample is not None:
            self.sample.add(y=y, pred=p)

    def result(self) -> dict[str, float | None]:
        if self.rows == 0:
            return {m: None for m in METRICS_BY_TASK["regression"]}
        r2_value = float("nan") if self.m2_y == 0 else 1.0 - self.sse / self.m2_y
        return {"rmse": _clean(math.sqrt(self.sse / self.rows)), "mae": _clean(self.sae / self.rows), "r2": _clean(r2_value)}

    def curves(self) -> dict[str, Any]:
        if self.sample is None:
            return {}
        return {"y": self.sample.cols.get("y", np.empty(0)), "pred": self.sample.cols.get("pred", np.empty(0))}


class BinaryAccumulator(_Accumulator):
    """AUC from per-class score histograms (65,536 bins); log loss, accuracy and F1 at 0.5, and
    ECE over 15 bins from sums."""

    task = "binary"

    def __init__(self, sample: bool = False, threshold: float = 0.5):
        super().__init__(sample)
        self.threshold = threshold
        self.hist_pos = np.zeros(_AUC_BINS, dtype=np.int64)
        self.hist_neg = np.zeros(_AUC_BINS, dtype=np.int64)
        self.loss_sum = 0.0
        self.correct = 0
        self.tp = self.fp = self.fn = 0
        self.ece_count = np.zeros(_ECE_BINS, dtype=np.int64)
        self.ece_sum_p = np.zeros(_ECE_BINS)
        self.ece_sum_y = np.zeros(_ECE_BINS)

    def update(self, y: np.ndarray, prob: np.ndarray) -> None:
        y, p = np.asarray(y, np.float64).reshape(-1), np.asarray(prob, np.float64).reshape(-1)
        if y.size == 0:
            return
        _binary_labels(y)
        p = np.clip(p, 0.0, 1.0)
        pos = y == 1
        idx = np.minimum((p * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        self.hist_pos += np.bincount(idx[pos], minlength=_AUC_BINS)
        self.hist_neg += np.bincount(idx[~pos], minlength=_AUC_BINS)
        pc = np.clip(p, _EPS, 1 - _EPS)
        self.loss_sum += float(-np.sum(np.where(pos, np.log(pc), np.log(1 - pc))))
        pred = p >= self.threshold
        self.correct += int(np.sum(pred == pos))
        self.tp += int(np.sum(pred & pos))
        self.fp += int(np.sum(pred & ~pos))
        self.fn += int(np.sum(~pred & pos))
        eidx = _ece_bin(p, _ECE_BINS)
        self.ece_count += np.bincount(eidx, minlength=_ECE_BINS)
        self.ece_sum_p += np.bincount(eidx, weights=p, minlength=_ECE_BINS)
        self.ece_sum_y += np.bincount(eidx, weights=y, minlength=_ECE_BINS)
        self.rows += y.size

    def _auc(self) -> float:
        n_pos, n_neg = float(self.hist_pos.sum()), float(self.hist_neg.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = np.cumsum(self.hist_neg) - self.hist_neg
        wins = float(np.sum(self.hist_pos * neg_below)) + 0.5 * float(np.sum(self.hist_pos * self.hist_neg))
        return wins / (n_pos * n_neg)

    def result(self) -> dict[str, float | None]:
        if self.rows == 0:
            return {m: None for m in METRICS_BY_TASK["binary"]}
        f1 = 0.0 if self.tp == 0 else 2 * self.tp / (2 * self.tp + self.fp + self.fn)
        used = self.ece_count > 0
        ece = float(np.sum(np.abs(self.ece_sum_p[used] - self.ece_sum_y[used])) / self.rows)
        return {"auc": _clean(self._auc()), "log_loss": _clean(self.loss_sum / self.rows),
                "accuracy": _clean(self.correct / self.rows), "f1": _clean(f1), "ece": _clean(ece)}

    def curves(self) -> dict[str, Any]:
        """ROC points (fpr, tpr) over descending thresholds, and the calibration bins."""
        n_pos, n_neg = max(self.hist_pos.sum(), 1), max(self.hist_neg.sum(), 1)
        tpr = np.concatenate([[0.0], np.cumsum(self.hist_pos[::-1]) / n_pos])
        fpr = np.concatenate([[0.0], np.cumsum(self.hist_neg[::-1]) / n_neg])
        used = self.ece_count > 0
        return {
            "fpr": fpr, "tpr": tpr,
            "calib_mean_p": self.ece_sum_p[used] / self.ece_count[used],
            "calib_rate": self.ece_sum_y[used] / self.ece_count[used],
            "calib_count": self.ece_count[used],
        }


class MulticlassAccumulator(_Accumulator):
    """Accuracy and macro F1 from a confusion matrix; log loss from a running sum."""

    task = "multiclass"

    def __init__(self, num_classes: int, sample: bool = False):
        super().__init__(sample)
        self.k = int(num_classes)
        self.confusion = np.zeros((self.k, self.k), dtype=np.int64)
        self.loss_sum = 0.0

    def update(self, y: np.ndarray, probs: np.ndarray) -> None:
        y = np.asarray(y).reshape(-1)
        if y.size == 0:
            return
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValidationError("multiclass labels must be integer class ids")
        y = y.astype(np.int64)
        P = np.asarray(probs, dtype=np.float64).reshape(y.size, -1)
        if P.shape[1] != self.k:
            raise ValidationError(f"expected {self.k} class probabilities per row, got {P.shape[1]}")
        _class_labels(y, self.k)
        pred = P.argmax(axis=1)
        self.confusion += np.bincount(y * self.k + pred, minlength=self.k * self.k).reshape(self.k, self.k)
        self.loss_sum += float(-np.sum(np.log(np.clip(P[np.arange(y.size), y], _EPS, 1.0))))
        self.rows += y.size

    def result(self) -> dict[str, float | None]:
        if self.rows == 0:
            return {m: None for m in METRICS_BY_TASK["multiclass"]}
        return {"accuracy": _clean(np.trace(self.confusion) / self.rows),
                "macro_f1": _clean(_macro_f1_from_confusion(self.confusion)),
                "log_loss": _clean(self.loss_sum / self.rows)}

    def curves(self) -> dict[str, Any]:
        return {"confusion": self.confusion}


def make_accumulator(task: str, *, num_classes: int | None = None, sample: bool = False) -> _Accumulator:
    """The accumulator for a task (``sample`` keeps up to 5,000 rows for regression plots)."""
    if task == "regression":
        return RegressionAccumulator(sample=sample)
    if task == "binary":
        return BinaryAccumulator(sample=sample)
    if task == "multiclass":
        if not num_classes:
            raise ValidationError("multiclass metrics need num_classes")
        return MulticlassAccumulator(num_classes, sample=sample)
    raise ValidationError(f"unknown task {task!r}; expected one of {sorted(METRICS_BY_TASK)}")


def metrics_of(task: str, y: Any, pred: Any, *, num_classes: int | None = None) -> Mapping[str, float | None]:
    """All metrics of ``task`` for whole arrays, through the accumulator (convenience)."""
    acc = make_accumulator(task, num_classes=num_classes)
    acc.update(np.asarray(y), np.asarray(pred))
    return acc.result()


def primary_metric(task: str) -> str:
    """The metric a task is summarised by: the first of :data:`METRICS_BY_TASK` (what the
    validation report's slice plots draw, and the default of performance drift).

    >>> primary_metric("binary"), primary_metric("regression"), primary_metric("multiclass")
    ('auc', 'rmse', 'accuracy')
    """
    try:
        return METRICS_BY_TASK[task][0]
    except KeyError:
        raise ValidationError(f"unknown task {task!r}; expected one of {sorted(METRICS_BY_TASK)}") from None
