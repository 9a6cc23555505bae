"""conversion.metrics on small handcrafted cases whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from conversion.metrics import (
    agreement,
    balanced_accuracy,
    classification_metrics,
    expected_calibration_error,
    format_per_class,
)

LABELS = ("a", "b", "mel")


def _case() -> tuple[np.ndarray, np.ndarray]:
    # 6 images: a,a,b,b,mel,mel; predictions a,b,b,b,mel,a
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.3, 0.6, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.1, 0.8],
            [0.5, 0.1, 0.4],
        ]
    )
    return probs, np.array([0, 0, 1, 1, 2, 2])


def test_classification_metrics_handcrafted() -> None:
    probs, y = _case()
    m = classification_metrics(probs, y, LABELS, mel_threshold=0.35)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["bma"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["mel"]["recall"] == pytest.approx(0.5)
    # mel scores 0.8 and 0.4 both >= 0.35; among non-mel only none reach 0.35
    assert m["mel"]["sensitivity"] == pytest.approx(1.0)
    assert m["mel"]["specificity"] == pytest.approx(1.0)
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert 0.5 < m["auc_macro_ovr"] <= 1.0


def test_mel_flag_without_threshold_uses_top_class() -> None:
    probs, y = _case()
    m = classification_metrics(probs, y, LABELS, mel_threshold=None)
    assert m["mel"]["sensitivity"] == pytest.approx(0.5)


def test_ece_perfectly_calibrated_is_zero_and_overconfident_is_not() -> None:
    y = np.array([0, 1, 0, 1])
    confident_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, y) == pytest.approx(0.0)
    confident_wrong = confident_right[:, ::-1].copy()
    assert expected_calibration_error(confident_wrong, y) == pytest.approx(1.0)


def test_bma_ignores_absent_classes() -> None:
    assert balanced_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1]), 5) == pytest.approx(0.75)


def test_agreement_and_table() -> None:
    probs, y = _case()
    other = probs.copy()
    other[5] = [0.1, 0.1, 0.8]
    a = agreement(probs, other)
    assert a["top1_agreement"] == pytest.approx(5 / 6)
    assert a["max_abs_prob_diff"] == pytest.approx(0.4)
    table = format_per_class({"x": classification_metrics(probs, y, LABELS)})
    assert "mel" in table and "BMA" in table


def _bma_by_hand(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """balanced_accuracy before scikit-learn's: the mean recall over the classes in y."""
    present = [k for k in range(n_classes) if (y == k).any()]
    return float(np.mean([(pred[y == k] == k).mean() for k in present]))


@pytest.mark.parametrize("seed", range(20))
def test_balanced_accuracy_is_the_hand_formula_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    # Classes 5 and 6 never occur in y but may be predicted: a small split lacking a class.
    y = rng.choice(5, size=n, p=[0.6, 0.2, 0.1, 0.07, 0.03])
    pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 7, size=n))
    assert balanced_accuracy(y, pred, 7) == _bma_by_hand(y, pred, 7)
