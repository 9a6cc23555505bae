"""Classification metrics for HAM10000-style models (numpy + scikit-learn), shared by
``benchmarks accuracy`` and ``conversion verify``."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

ECE_BINS = 15

# INT8-vs-FP32 accuracy gates from the conversion issue, as fractions (1 point = 0.01); shared by
# `conversion verify` (which enforces them) and `benchmarks` (which reports them).
INT8_MIN_TOP1 = 0.98
INT8_MAX_BMA_DROP = 0.01
INT8_MAX_RECALL_DROP = 0.02
INT8_MAX_MEL_RECALL_DROP = 0.01


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def macro_ovr_auc(probs: np.ndarray, y: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC over classes that have both positives and negatives.

    Class by class rather than ``roc_auc_score(multi_class="ovr")``, which refuses a split
    lacking a class and rows that do not sum to 1 within its tolerance (an INT8 model's).
    """
    aucs = [
        roc_auc_score(y == k, probs[:, k])
        for k in range(probs.shape[1])
        if 0 < (y == k).sum() < len(y)
    ]
    return float(np.mean(aucs)) if aucs else None


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (BMA, the ISIC 2018 task 3 metric).

    ``n_classes`` is the model's; a class it predicts but ``y`` lacks has no recall and does not
    count (scikit-learn warns about it; a small validation split often lacks one).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y, pred))


def sensitivity_specificity(
    scores: np.ndarray, positive: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    flagged = scores >= threshold
    sens = float(flagged[positive].mean()) if positive.any() else None
    spec = float((~flagged[~positive]).mean()) if (~positive).any() else None
    return sens, spec


def classification_metrics(
    probs: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    mel_threshold: float | None = None,
) -> dict[str, Any]:
    """Everything issue 3 asks of an evaluation, as plain JSON-able values.

    Args:
        probs: (N, K) probabilities in ``labels`` order; y: (N,) true class indices.
        mel_threshold: melanoma flag threshold; ``None`` flags melanoma when it is the top class.
    """
    k = len(labels)
    pred = probs.argmax(axis=1)
    precision, recall, _, support = precision_recall_fscore_support(
        y, pred, labels=list(range(k)), zero_division=0
    )
    result: dict[str, Any] = {
        "n": len(y),
        "accuracy": float((pred == y).mean()),
        "bma": balanced_accuracy(y, pred, k),
        "auc_macro_ovr": macro_ovr_auc(probs, y),
        "ece": expected_calibration_error(probs, y),
        "per_class": {
            c: {
                "support": int(support[i]),
                "recall": float(recall[i]) if support[i] else None,
                "precision": float(precision[i]),
            }
            for i, c in enumerate(labels)
        },
        "confusion_matrix": {
            "labels": list(labels),
            "rows_true_cols_pred": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        },
    }
    if "mel" in labels:
        mel = list(labels).index("mel")
        scores = probs[:, mel] if mel_threshold is not None else (pred == mel).astype(float)
        sens, spec = sensitivity_specificity(
            scores, y == mel, mel_threshold if mel_threshold is not None else 0.5
        )
        result["mel"] = {
            "threshold": mel_threshold,
            "sensitivity": sens,
            "specificity": spec,
        }
    return result


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How closely two models' probabilities agree on the same images."""
    return {
        "max_abs_prob_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def format_per_class(reports: dict[str, dict[str, Any]]) -> str:
    """A plain-text recall/precision table, one column pair per named report."""
    names = list(reports)
    labels = list(next(iter(reports.values()))["per_class"])
    head = f"{'class':<7}{'n':>6}" + "".join(f"{n + ' rec':>14}{n + ' prec':>14}" for n in names)
    lines = [head]
    for c in labels:
        first = reports[names[0]]["per_class"][c]
        row = f"{c:<7}{first['support']:>6}"
        for n in names:
            pc = reports[n]["per_class"][c]
            rec = "-" if pc["recall"] is None else f"{100 * pc['recall']:.1f}"
            row += f"{rec:>14}{100 * pc['precision']:>14.1f}"
        lines.append(row)
    lines.append(
        f"{'BMA':<13}" + "".join(f"{100 * reports[n]['bma']:>14.1f}{'':>14}" for n in names)
    )
    return "\n".join(lines)
