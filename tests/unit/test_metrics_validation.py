"""Validation metrics against values computed by hand on small arrays (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlplat.errors import ValidationError
from mlplat.validation import metrics as M


def test_regression_by_hand():
    y, p = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 2.0]
    # errors 0, 0, -1, 2 -> SSE 5, SAE 3; mean y 2.5 -> SST 5
    assert M.rmse(y, p) == pytest.approx(math.sqrt(5 / 4))
    assert M.mae(y, p) == pytest.approx(3 / 4)
    assert M.r2(y, p) == pytest.approx(0.0)
    assert M.r2([1, 2], [1, 2]) == 1.0
    assert math.isnan(M.r2([3, 3], [1, 2]))


def test_regression_accumulator_matches_in_batches():
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=1001), rng.normal(size=1001)
    acc = M.RegressionAccumulator(sample=True)
    for lo in range(0, 1001, 97):
        acc.update(y[lo:lo + 97], p[lo:lo + 97])
    out = acc.result()
    assert out["rmse"] == pytest.approx(M.rmse(y, p))
    assert out["mae"] == pytest.approx(M.mae(y, p))
    assert out["r2"] == pytest.approx(M.r2(y, p))
    assert acc.rows == 1001 and len(acc.curves()["y"]) == 1001


def test_auc_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4) (0.8>0.1) (0.4=0.4 half) (0.4>0.1) = 3.5/4
    y, s = [1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]
    assert M.roc_auc(y, s) == pytest.approx(0.875)
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.3]))


def test_binary_metrics_by_hand():
    y, p = [1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]
    expected_ll = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4
    assert M.log_loss(y, p) == pytest.approx(expected_ll)
    # threshold 0.5: predictions 1, 0, 0, 1 -> TP 1, FP 1, FN 1 -> F1 = 2/4
    assert M.f1_binary(y, p) == pytest.approx(0.5)
    assert M.accuracy(y, (np.asarray(p) >= 0.5).astype(int)) == 0.5
    # 15 bins: 0.9 -> bin 13 (y=1), 0.2 -> bin 3 (y=0), 0.4 -> bin 6 (y=1), 0.6 -> bin 9 (y=0)
    # |0.9-1| + |0.2-0| + |0.4-1| + |0.6-0| = 0.1 + 0.2 + 0.6 + 0.6 = 1.5 -> /4
    assert M.expected_calibration_error(y, p) == pytest.approx(0.375)
    # Two rows in one bin: mean p 0.55, rate 0.5 -> |0.55-0.5| * 2 / 2
    assert M.expected_calibration_error([1, 0], [0.5, 0.6], bins=2) == pytest.approx(0.05)


def test_binary_accumulator_matches_functions():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 3000)
    p = np.clip(0.3 * y + rng.random(3000) * 0.7, 0, 1)
    acc = M.BinaryAccumulator()
    for lo in range(0, 3000, 512):
        acc.update(y[lo:lo + 512], p[lo:lo + 512])
    out = acc.result()
    assert out["auc"] == pytest.approx(M.roc_auc(y, p), abs=1e-4)
    assert out["log_loss"] == pytest.approx(M.log_loss(y, p))
    assert out["accuracy"] == pytest.approx(M.accuracy(y, (p >= 0.5).astype(int)))
    assert out["f1"] == pytest.approx(M.f1_binary(y, p))
    assert out["ece"] == pytest.approx(M.expected_calibration_error(y, p))
    curves = acc.curves()
    assert curves["fpr"][0] == 0 and curves["tpr"][-1] == pytest.approx(1.0)


def test_binary_labels_checked():
    with pytest.raises(ValidationError, match="0 or 1"):
        M.BinaryAccumulator().update(np.array([0, 2]), np.array([0.1, 0.2]))


def test_multiclass_by_hand():
    y = [0, 1, 2, 2]
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    pred = P.argmax(axis=1)  # 0, 1, 1, 2
    assert M.accuracy(y, pred) == 0.75
    # class 0: F1 1; class 1: TP1 FP1 -> 2/3; class 2: TP1 FN1 -> 2/3
    assert M.macro_f1(y, pred) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert M.multiclass_log_loss(y, P) == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.8)) / 4)
    acc = M.MulticlassAccumulator(3)
    acc.update(np.array(y), P)
    out = acc.result()
    assert out["accuracy"] == 0.75
    assert out["macro_f1"] == pytest.approx(M.macro_f1(y, pred))
    assert out["log_loss"] == pytest.approx(M.multiclass_log_loss(y, P))
    assert acc.curves()["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_empty_and_mismatch():
    with pytest.raises(ValidationError, match="no rows"):
        M.rmse([], [])
    with pytest.raises(ValidationError, match="differ in length"):
        M.mae([1, 2], [1])
    assert M.make_accumulator("regression").result() == {"rmse": None, "mae": None, "r2": None}
    with pytest.raises(ValidationError, match="unknown task"):
        M.make_accumulator("ranking")
