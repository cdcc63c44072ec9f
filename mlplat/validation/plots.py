"""Report plots as PNG bytes (matplotlib, Agg backend: no display needed).

Each function takes accumulator curves (already aggregated; never the full split) and returns
PNG bytes, so a report of a 100M-row split draws as fast as one of 1,000 rows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlplat.validation.metrics import HIGHER_IS_BETTER

__all__ = ["roc_png", "calibration_png", "predicted_vs_actual_png", "residuals_png", "confusion_png",
           "metrics_vs_champion_png", "slices_png"]

CANDIDATE, CHAMPION = "#1f77b4", "#ff7f0e"


def _figure(width: float = 6.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _png(plt, fig, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _thin(x: np.ndarray, y: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= points:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, points).astype(int))
    return x[idx], y[idx]


def roc_png(curves: Mapping[str, Any], auc: float | None, champion: Mapping[str, Any] | None = None,
            champion_auc: float | None = None, title: str = "") -> bytes:
    plt, fig = _figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if champion is not None:
        ax.plot(*_thin(np.asarray(champion["fpr"]), np.asarray(champion["tpr"])), color=CHAMPION,
                label=f"champion (AUC {_f(champion_auc)})")
    ax.plot(*_thin(np.asarray(curves["fpr"]), np.asarray(curves["tpr"])), color=CANDIDATE, linewidth=2,
            label=f"candidate (AUC {_f(auc)})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC curve {title}".strip())
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def calibration_png(curves: Mapping[str, Any], ece: float | None, title: str = "") -> bytes:
    plt, fig = _figure(5.5, 6.0)
    ax = fig.add_axes((0.12, 0.35, 0.83, 0.58))
    hist = fig.add_axes((0.12, 0.08, 0.83, 0.18), sharex=ax)
    mean_p, rate, count = (np.asarray(curves[k]) for k in ("calib_mean_p", "calib_rate", "calib_count"))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.plot(mean_p, rate, marker="o", color=CANDIDATE, label=f"candidate (ECE {_f(ece)})")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed positive rate", title=f"Calibration {title}".strip())
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    hist.bar(mean_p, count, width=1 / 15 * 0.8, color=CANDIDATE, alpha=0.6)
    hist.set(xlabel="mean predicted probability (15 bins)", ylabel="rows")
    return _png(plt, fig, tight=False)


def predicted_vs_actual_png(curves: Mapping[str, Any], title: str = "") -> bytes:
    y, p = np.asarray(curves["y"]), np.asarray(curves["pred"])
    plt, fig = _figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(y, p, s=6, alpha=0.35, color=CANDIDATE, label=f"{y.size:,} sampled rows")
    if y.size:
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1, label="prediction = actual")
    ax.set(xlabel="actual", ylabel="predicted", title=f"Predicted vs actual {title}".strip())
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def residuals_png(curves: Mapping[str, Any], title: str = "") -> bytes:
    y, p = np.asarray(curves["y"]), np.asarray(curves["pred"])
    resid = y - p
    plt, fig = _figure(9.0, 4.0)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.hist(resid, bins=50, color=CANDIDATE, alpha=0.8)
    ax1.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax1.set(xlabel="residual (actual - predicted)", ylabel="rows", title="Residual distribution")
    ax2.scatter(p, resid, s=6, alpha=0.35, color=CANDIDATE)
    ax2.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax2.set(xlabel="predicted", ylabel="residual", title=f"Residuals vs predicted {title}".strip())
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _png(plt, fig)


def confusion_png(curves: Mapping[str, Any], title: str = "") -> bytes:
    cm = np.asarray(curves["confusion"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = cm.shape[0]
    plt, fig = _figure(max(4.5, 0.6 * k + 2), max(4.0, 0.6 * k + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="share of the true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"Confusion matrix {title}".strip())
    return _png(plt, fig)


def metrics_vs_champion_png(metrics: Mapping[str, float | None], champion: Mapping[str, float | None] | None,
                            title: str = "") -> bytes:
    present = [(m, float(v)) for m, v in metrics.items() if v is not None]
    names = [m for m, _ in present]
    plt, fig = _figure(max(5.0, 1.4 * len(names) + 1.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.38 if champion else 0.6
    cand = [v for _, v in present]
    bars = ax.bar(x - (width / 2 if champion else 0), cand, width, color=CANDIDATE, label="candidate")
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in cand], fontsize=8)
    if champion:
        champ = [float(c) if (c := champion.get(m)) is not None else 0.0 for m in names]
        bars = ax.bar(x + width / 2, champ, width, color=CHAMPION, label="champion (production)")
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in champ], fontsize=8)
    ax.set_xticks(x, [f"{m}\n({'higher' if HIGHER_IS_BETTER.get(m, True) else 'lower'} is better)" for m in names],
                  fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    top = max([*cand, *(champ if champion else []), 0.0])
    ax.set_ylim(top=top * 1.3 if top > 0 else None)  # headroom so the legend never covers a bar
    ax.set(title=f"Metrics {title}".strip())
    ax.legend(loc="upper right", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _png(plt, fig)


def slices_png(column: str, values: Mapping[str, Mapping[str, Any]], metric: str, overall: float | None) -> bytes:
    items = [(k, v.get(metric), v.get("rows", 0)) for k, v in values.items() if v.get(metric) is not None][:30]
    plt, fig = _figure(7.0, max(2.5, 0.35 * len(items) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(items))
    ax.barh(y, [v for _, v, _ in items], color=CANDIDATE)
    ax.set_yticks(y, [f"{k} ({n:,} rows)" for k, _, n in items], fontsize=8)
    if overall is not None:
        ax.axvline(overall, color="grey", linestyle="--", linewidth=1, label=f"overall {overall:.4g}")
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    ax.set(xlabel=metric, title=f"{metric} by {column}")
    ax.grid(axis="x", alpha=0.3)
    return _png(plt, fig)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
