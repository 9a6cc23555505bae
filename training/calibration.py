"""Temperature scaling, reliability curves and the melanoma operating point."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from conversion.metrics import expected_calibration_error, sensitivity_specificity


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the negative log-likelihood of softmax(logits / T)."""

    def nll(t: float) -> float:
        return float(-log_softmax(logits / t, axis=1)[np.arange(len(labels)), labels].mean())

    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, accuracy, count) per non-empty bin, for reliability diagrams."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf, acc, count = [], [], []
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            conf.append(confidence[in_bin].mean())
            acc.append(correct[in_bin].mean())
            count.append(in_bin.sum())
    return np.array(conf), np.array(acc), np.array(count)


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """Largest threshold t with sensitivity (score >= t among positives) >= target."""
    pos = np.sort(scores[positive])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive examples to choose a threshold from")
    k = int(np.ceil(target * len(pos)))  # need at least k positives at or above t
    return float(pos[k - 1])


__all__ = [
    "expected_calibration_error",
    "fit_temperature",
    "reliability_curve",
    "sensitivity_specificity",
    "softmax",
    "threshold_for_sensitivity",
]
