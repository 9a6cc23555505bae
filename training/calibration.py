"""Temperature scaling, reliability curves and the melanoma operating point."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from conversion.metrics import (
    balanced_accuracy,
    expected_calibration_error,
    macro_ovr_auc,
    sensitivity_specificity,
)


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


# Post-hoc logit adjustment (Menon et al., 2021, "Long-tail learning via logit adjustment"):
# subtracting tau * log(prior) from the logits moves the argmax towards the rare classes, which is
# what balanced accuracy rewards. tau is chosen on val over this grid; 0 leaves the model as it is.
ADJUSTMENT_GRID = tuple(round(0.05 * i, 2) for i in range(21))
# Balanced accuracy is not all a clinician reads: the probabilities' ranking (macro AUC) and the
# melanoma operating point (specificity at the sensitivity the threshold is set for) must not pay
# for it by more than these on val.
MAX_AUC_LOSS = 0.005
MAX_MEL_SPECIFICITY_LOSS = 0.02


@dataclass(frozen=True, slots=True)
class LogitAdjustment:
    """The chosen tau, the offsets it adds to the logits, and what each tau gave on val."""

    tau: float
    offsets: np.ndarray  # [classes]: -tau * log(prior)
    prior: np.ndarray  # [classes]: the train split's class shares
    table: list[dict[str, float]]  # one row per tau: val BMA, macro AUC, mel specificity
    max_mel_specificity_loss: float = MAX_MEL_SPECIFICITY_LOSS

    def as_dict(self) -> dict[str, object]:
        return {
            "tau": self.tau,
            "offsets": [round(float(v), 6) for v in self.offsets],
            "prior": [round(float(v), 6) for v in self.prior],
            "max_auc_loss": MAX_AUC_LOSS,
            "max_mel_specificity_loss": self.max_mel_specificity_loss,
            "val": self.table,
        }


def class_prior(labels: np.ndarray, classes: int) -> np.ndarray:
    """Each class's share of ``labels`` (every class at least one count, so log is finite)."""
    counts = np.maximum(np.bincount(labels, minlength=classes), 1).astype(np.float64)
    return counts / counts.sum()


def fit_logit_adjustment(
    logits: np.ndarray,
    labels: np.ndarray,
    prior: np.ndarray,
    mel: int | None = None,
    mel_sensitivity: float = 0.85,
    grid: tuple[float, ...] = ADJUSTMENT_GRID,
    max_auc_loss: float = MAX_AUC_LOSS,
    max_mel_specificity_loss: float = MAX_MEL_SPECIFICITY_LOSS,
) -> LogitAdjustment:
    """The tau with the highest val balanced accuracy whose macro AUC is within
    ``max_auc_loss`` of the unadjusted model's and, with a melanoma class ``mel``, whose
    melanoma specificity (temperature refitted, threshold set for ``mel_sensitivity`` as the
    shipped one is) is within ``max_mel_specificity_loss``. tau = 0 is always allowed."""
    classes = logits.shape[1]
    table = []
    for tau in grid:
        adjusted = logits - tau * np.log(prior)
        auc = macro_ovr_auc(softmax(adjusted, axis=1), labels)
        row = {
            "tau": tau,
            "bma": round(balanced_accuracy(labels, adjusted.argmax(1), classes), 4),
            "macro_auc": round(auc, 4) if auc is not None else float("nan"),
        }
        if mel is not None and (labels == mel).any():
            probs = softmax(adjusted / fit_temperature(adjusted, labels), axis=1)
            threshold = threshold_for_sensitivity(probs[:, mel], labels == mel, mel_sensitivity)
            _, specificity = sensitivity_specificity(probs[:, mel], labels == mel, threshold)
            if specificity is not None:
                row["mel_specificity"] = round(specificity, 4)
        table.append(row)
    base = table[0]  # tau = 0
    allowed = [
        row
        for row in table
        if base["macro_auc"] - row["macro_auc"] <= max_auc_loss
        and base.get("mel_specificity", 0.0) - row.get("mel_specificity", 0.0)
        <= max_mel_specificity_loss
    ] or table[:1]  # without an AUC (a class missing from val) only tau = 0 is safe
    best = max(allowed, key=lambda row: (row["bma"], -row["tau"]))
    tau = float(best["tau"])
    return LogitAdjustment(tau, -tau * np.log(prior), prior, table, max_mel_specificity_loss)


__all__ = [
    "LogitAdjustment",
    "class_prior",
    "expected_calibration_error",
    "fit_logit_adjustment",
    "fit_temperature",
    "reliability_curve",
    "sensitivity_specificity",
    "softmax",
    "threshold_for_sensitivity",
]
