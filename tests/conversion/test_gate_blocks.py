"""The gate's per-block statistics: a wide block is reduced before whitening, and still ranks
images far from the training distribution above the training images themselves."""

from __future__ import annotations

import numpy as np

from conversion.gate import REDUCED_TO, WIDE_BLOCK, fit_block


def _data(width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.integers(0, 3, 1500)
    centres = rng.normal(0, 3, (3, width))
    scales = np.linspace(2.0, 0.05, width)  # a few strong directions, many weak ones
    return centres[rows] + rng.normal(0, 1, (1500, width)) * scales, rows


def test_a_narrow_block_keeps_a_square_whitener() -> None:
    rng = np.random.default_rng(0)
    features, rows = _data(64, rng)
    block = fit_block(features, rows, 3, 0, 64)
    assert block.whitener.shape == (64, 64) and block.means.shape == (3, 64)


def test_a_wide_block_is_reduced_and_still_separates_far_images() -> None:
    rng = np.random.default_rng(0)
    width = WIDE_BLOCK + 200
    features, rows = _data(width, rng)
    block = fit_block(features, rows, 3, 0, width)
    assert block.whitener.shape == (width, REDUCED_TO) and block.means.shape == (3, REDUCED_TO)
    inside = block.distances(features[:500])
    far = block.distances(features[:500] + rng.normal(0, 3, (500, width)) * 2.0)
    assert np.median(far) > np.quantile(inside, 0.99)
    assert abs(float(inside.mean()) - block.centre) < 0.2 * block.centre
