"""Post-hoc logit adjustment: tau is chosen on val by balanced accuracy, within an AUC budget."""

from __future__ import annotations

import numpy as np

from conversion.metrics import balanced_accuracy
from training.calibration import (
    MAX_AUC_LOSS,
    MAX_MEL_SPECIFICITY_LOSS,
    class_prior,
    fit_logit_adjustment,
)


def _imbalanced_val(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of a model that learnt the training prior: a rare class loses close calls."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.80, 0.15, 0.05])
    labels = rng.choice(3, size=3000, p=[0.5, 0.3, 0.2])  # val has enough of each class
    evidence = rng.normal(0.0, 1.0, (len(labels), 3))
    evidence[np.arange(len(labels)), labels] += 1.5
    return evidence + np.log(prior), labels, prior


def test_a_model_that_learnt_the_prior_is_adjusted_towards_rare_classes() -> None:
    logits, labels, prior = _imbalanced_val()
    fit = fit_logit_adjustment(logits, labels, prior)

    assert fit.tau > 0
    np.testing.assert_allclose(fit.offsets, -fit.tau * np.log(prior))
    before = balanced_accuracy(labels, logits.argmax(1), 3)
    after = balanced_accuracy(labels, (logits + fit.offsets).argmax(1), 3)
    assert after > before + 0.02
    baseline_auc = fit.table[0]["macro_auc"]
    chosen = next(row for row in fit.table if row["tau"] == fit.tau)
    assert baseline_auc - chosen["macro_auc"] <= MAX_AUC_LOSS
    assert chosen["bma"] == max(
        row["bma"] for row in fit.table if baseline_auc - row["macro_auc"] <= MAX_AUC_LOSS
    )


def test_a_uniform_prior_needs_no_adjustment() -> None:
    logits, labels, _ = _imbalanced_val()
    fit = fit_logit_adjustment(logits, labels, np.full(3, 1 / 3))
    # Equal offsets change no argmax: every tau ties and the smallest, 0, is kept.
    assert fit.tau == 0.0
    assert not fit.offsets.any()


def test_no_auc_budget_keeps_the_model_unless_auc_is_unchanged() -> None:
    logits, labels, prior = _imbalanced_val()
    fit = fit_logit_adjustment(logits, labels, prior, max_auc_loss=-1.0)
    assert fit.tau == 0.0


def test_class_prior_counts_every_class_at_least_once() -> None:
    prior = class_prior(np.array([0, 0, 0, 1]), 3)
    assert prior.shape == (3,) and np.isfinite(np.log(prior)).all()
    assert prior[0] > prior[1] == prior[2]


def test_the_melanoma_operating_point_bounds_the_adjustment() -> None:
    logits, labels, prior = _imbalanced_val()
    rare = 2  # stands in for melanoma: the class whose flag must keep its specificity
    guarded = fit_logit_adjustment(logits, labels, prior, mel=rare, mel_sensitivity=0.85)
    base = guarded.table[0]["mel_specificity"]
    chosen = next(row for row in guarded.table if row["tau"] == guarded.tau)
    assert guarded.tau > 0
    assert base - chosen["mel_specificity"] <= MAX_MEL_SPECIFICITY_LOSS
    # With no room for the melanoma flag to lose specificity, only taus that keep it qualify.
    strict = fit_logit_adjustment(
        logits, labels, prior, mel=rare, mel_sensitivity=0.85, max_mel_specificity_loss=-1.0
    )
    assert strict.tau == 0.0
