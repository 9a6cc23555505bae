"""Measure the shipped model for its model card: test metrics with bootstrap CIs, plots,
calibration, the melanoma operating point and full-resolution agreement.

Everything runs through the serving path (onnxruntime + ``app.inference.preprocess``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from app.inference.classifier import Classifier
from conversion.images import preprocess_paths
from conversion.metrics import (
    balanced_accuracy,
    classification_metrics,
    expected_calibration_error,
    macro_ovr_auc,
    sensitivity_specificity,
)
from conversion.runtime import predict_onnx
from training.calibration import reliability_curve, softmax, threshold_for_sensitivity
from training.split import read_split

log = logging.getLogger(__name__)


def predict_files(classifier: Classifier, paths: list[Path], desc: str) -> np.ndarray:
    """Probabilities for image files, through the exact serving preprocessing."""
    return predict_onnx(classifier.session, preprocess_paths(paths, classifier.spec, desc))


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Undo the folded temperature: softmax(T * log p) == softmax(z) for p = softmax(z / T)."""
    return softmax(temperature * np.log(np.clip(probs, 1e-12, 1.0)), axis=1)


def _card_metrics(probs: np.ndarray, y: np.ndarray, mel: int, threshold: float) -> dict[str, float]:
    pred = probs.argmax(1)
    sens, spec = sensitivity_specificity(probs[:, mel], y == mel, threshold)
    t95 = threshold_for_sensitivity(probs[:, mel], y == mel, 0.95)
    _, spec95 = sensitivity_specificity(probs[:, mel], y == mel, t95)
    return {
        "accuracy": float((pred == y).mean()),
        "bma": balanced_accuracy(y, pred, probs.shape[1]),
        "auc_macro_ovr": float(macro_ovr_auc(probs, y) or float("nan")),
        "mel_sensitivity": float(sens if sens is not None else float("nan")),
        "mel_specificity": float(spec if spec is not None else float("nan")),
        "mel_specificity_at_95_sensitivity": float(spec95 if spec95 is not None else float("nan")),
        "ece": expected_calibration_error(probs, y),
    }


def bootstrap_ci(
    probs: np.ndarray,
    y: np.ndarray,
    groups: list[str],
    mel: int,
    threshold: float,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals, resampling *lesions* (images of one lesion move together)."""
    rng = np.random.default_rng(seed)
    unique = sorted(set(groups))
    index_of: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        index_of.setdefault(g, []).append(i)
    samples: dict[str, list[float]] = {}
    for _ in tqdm(range(rounds), desc="bootstrap", unit="round"):
        picked = rng.choice(len(unique), len(unique), replace=True)
        idx = np.concatenate([index_of[unique[j]] for j in picked])
        if not (y[idx] == mel).any():
            continue
        for key, value in _card_metrics(probs[idx], y[idx], mel, threshold).items():
            samples.setdefault(key, []).append(value)
    return {
        k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
        for k, v in samples.items()
    }


def _plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Test confusion matrix (counts, row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_roc(probs: np.ndarray, y: np.ndarray, labels: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, label in enumerate(labels):
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y == k, probs[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Test ROC, one-vs-rest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_reliability(before: np.ndarray, after: np.ndarray, y: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    for name, probs in (("before (T=1)", before), ("after temperature", after)):
        conf, acc, _ = reliability_curve(probs, y)
        ece = expected_calibration_error(probs, y)
        ax.plot(conf, acc, "o-", label=f"{name}, ECE {ece:.3f}")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on the test split (15 bins)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fullres_agreement(classifier: Classifier, fullres_dir: Path, small_dir: Path) -> dict[str, Any]:
    """Top-1 agreement and mean |dp| between each original and its 200x150 copy."""
    with (fullres_dir / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    big = predict_files(classifier, [fullres_dir / r["file"] for r in rows], "fullres")
    small = predict_files(classifier, [small_dir / f"{r['image_id']}.jpg" for r in rows], "200x150")
    return {
        "n": len(rows),
        "top1_agreement": float((big.argmax(1) == small.argmax(1)).mean()),
        "mean_abs_prob_diff": float(np.abs(big - small).mean()),
        "max_abs_prob_diff": float(np.abs(big - small).max()),
    }


def measure(model: Path, images: Path, fullres: Path, out_dir: Path) -> dict[str, Any]:
    """Evaluate ``model`` on the test split and write plots + metrics.json into ``out_dir``."""
    classifier = Classifier(model, "cpu", threads=2)
    spec = classifier.spec
    labels = list(spec.labels)
    mel = labels.index("mel")
    threshold = spec.mel_threshold if spec.mel_threshold is not None else 0.5
    temperature = spec.temperature or 1.0
    rows = [r for r in read_split() if r["split"] == "test"]
    y = np.array([labels.index(r["dx"]) for r in rows])
    probs = predict_files(classifier, [images / f"{r['image_id']}.jpg" for r in rows], "test")
    before = uncalibrated(probs, temperature)

    out_dir.mkdir(parents=True, exist_ok=True)
    full = classification_metrics(probs, y, labels, threshold)
    for k, c in enumerate(labels):
        full["per_class"][c]["auc"] = float(roc_auc_score(y == k, probs[:, k]))
    result: dict[str, Any] = {
        "model": model.name,
        "sha256": classifier.sha256,
        "split": "test",
        "n": len(y),
        "n_lesions": len({r["lesion_id"] for r in rows}),
        "temperature": temperature,
        "mel_threshold": threshold,
        "point": _card_metrics(probs, y, mel, threshold),
        "ci95": bootstrap_ci(probs, y, [r["lesion_id"] for r in rows], mel, threshold),
        "ece_before_calibration": expected_calibration_error(before, y),
        "per_class": full["per_class"],
        "confusion_matrix": full["confusion_matrix"],
        "fullres": fullres_agreement(classifier, fullres, images),
    }
    _plot_confusion(
        np.array(full["confusion_matrix"]["rows_true_cols_pred"]),
        labels,
        out_dir / "confusion_matrix.png",
    )
    _plot_roc(probs, y, labels, out_dir / "roc.png")
    _plot_reliability(before, probs, y, out_dir / "reliability.png")
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
