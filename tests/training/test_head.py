"""The joint head: its folded standardisation, the blend, and the choice of C on val."""

from __future__ import annotations

import numpy as np
import pytest

from training.head import C_GRID, Linear, blend, choose_head, fit_joint_head, flip_views

CLASSES = 7


def _features(rng: np.random.Generator, n: int, informative: slice) -> tuple[np.ndarray, ...]:
    """Gaussian features whose class means differ only in the ``informative`` columns."""
    labels = np.arange(n) % CLASSES
    means = np.zeros((CLASSES, 40))
    means[:, informative] = rng.normal(0, 0.3, (CLASSES, informative.stop - informative.start))
    x = means[labels] + rng.normal(0, 1, (n, 40))
    return (x * 3 + 5).astype(np.float32), labels  # not standardised: the fold must handle it


def test_the_folded_head_gives_the_regression_s_own_logits() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _features(np.random.default_rng(0), 700, slice(0, 40))
    head = fit_joint_head(x, y, 1e-3)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    reference = LogisticRegression(C=1e-3, max_iter=500).fit((x - mean) / scale, y)
    np.testing.assert_allclose(
        head(x), reference.decision_function((x - mean) / scale), rtol=1e-3, atol=1e-3
    )


def test_a_blend_is_the_weighted_sum_of_the_logits() -> None:
    rng = np.random.default_rng(1)
    a = Linear(rng.normal(size=(5, CLASSES)), rng.normal(size=CLASSES))
    b = Linear(rng.normal(size=(5, CLASSES)), rng.normal(size=CLASSES))
    x = rng.normal(size=(4, 5))
    np.testing.assert_allclose(blend(a, b, 0.3)(x), 0.3 * a(x) + 0.7 * b(x), rtol=1e-6)
    np.testing.assert_allclose(a.scaled(2.0)(x), 2 * a(x), rtol=1e-6)


def test_the_joint_head_is_chosen_on_val_and_reads_what_the_members_missed() -> None:
    """The 'members' head reads only the first half of the features; the classes differ in
    both halves, so a head over all of them must do better on val."""
    rng = np.random.default_rng(2)
    x_train, y_train = _features(rng, 1400, slice(0, 40))
    x_val, y_val = x_train[700:], y_train[700:]  # not seen by the fits
    x_train, y_train = x_train[:700], y_train[:700]
    half = fit_joint_head(x_train[:, :20], y_train, 1e-2)
    members = Linear(np.vstack([half.kernel, np.zeros((20, CLASSES), np.float32)]), half.bias)

    head, record = choose_head(members, (x_train, y_train), (x_val, y_val))

    table = record["val"]
    assert table[0]["c"] is None  # the members' head alone comes first
    assert [row["c"] for row in table[1:]] == list(C_GRID)
    assert record["c"] in C_GRID
    chosen = next(row for row in table[1:] if row["c"] == record["c"])
    assert chosen["bma"] == max(row["bma"] for row in table[1:])
    assert chosen["bma"] > table[0]["bma"]
    assert head.kernel.shape == (40, CLASSES) and np.abs(head.kernel[20:]).sum() > 0


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_blend_at_either_end_is_that_head(share: float) -> None:
    rng = np.random.default_rng(4)
    a = Linear(rng.normal(size=(3, CLASSES)), rng.normal(size=CLASSES))
    b = Linear(rng.normal(size=(3, CLASSES)), rng.normal(size=CLASSES))
    x = rng.normal(size=(2, 3))
    np.testing.assert_allclose(blend(a, b, share)(x), (a if share else b)(x), rtol=1e-6)


def test_flip_views_are_the_image_and_its_three_flips() -> None:
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)

    views = flip_views(images)

    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    np.testing.assert_array_equal(views[0], images)
    np.testing.assert_array_equal(views[1][:, :, ::-1], images)  # left-right
    np.testing.assert_array_equal(views[2][:, ::-1], images)  # up-down
    np.testing.assert_array_equal(views[3][:, ::-1, ::-1], images)
    assert len({v.tobytes() for v in views}) == 4  # four different pictures
