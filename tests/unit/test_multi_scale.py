"""The explanation the server shows when the CAM model has finer maps: a multi-scale average."""

from __future__ import annotations

import numpy as np

from app.inference.explain import geometric_mean, multi_scale


def test_the_average_lives_on_the_fine_grid_and_peaks_where_both_maps_agree() -> None:
    coarse = np.zeros((5, 7), np.float32)
    coarse[2, 3] = 10.0  # centre
    fine = np.zeros((10, 13), np.float32)
    fine[5, 6] = 0.3  # centre too, at another scale
    fine[0, 0] = 0.29  # a corner the coarse map does not support
    out = multi_scale(coarse, fine)
    assert out.shape == (10, 13) and out.dtype == np.float32
    assert out.max() == 1.0
    assert np.unravel_index(int(out.argmax()), out.shape) == (5, 6)
    assert out[0, 0] < out[5, 6]


def test_negative_evidence_is_dropped_and_no_evidence_stays_zero() -> None:
    assert not multi_scale(-np.ones((5, 7)), -np.ones((10, 13))).any()
    out = multi_scale(-np.ones((5, 7)), np.pad(np.ones((1, 1)), ((4, 5), (6, 6))))
    assert out.max() == 1.0 and out.min() == 0.0


def test_the_geometric_mean_keeps_only_evidence_both_scales_see() -> None:
    coarse = np.zeros((10, 13), np.float32)
    coarse[5, 6] = 2.0  # centre
    fine = np.zeros((19, 25), np.float32)
    fine[9, 12] = 0.5  # centre too, at the finer grid
    fine[0, 0] = 0.5  # as strong, in a corner the coarse map does not support
    out = geometric_mean(coarse, fine)
    assert out.shape == (19, 25) and out.dtype == np.float32
    assert out.max() == 1.0 and np.unravel_index(int(out.argmax()), out.shape) == (9, 12)
    assert out[0, 0] == 0.0  # an average would have kept half of it
    assert multi_scale(coarse, fine).shape == (19, 25)


def test_the_geometric_mean_is_degree_one() -> None:
    # Scaling a map does not sharpen the result: the mass it puts anywhere stays the same.
    rng = np.random.default_rng(0)
    coarse, fine = rng.random((10, 13)), rng.random((19, 25))
    assert np.allclose(geometric_mean(3 * coarse, 0.1 * fine), geometric_mean(coarse, fine))
    assert not geometric_mean(-coarse, fine).any()  # negative evidence is dropped
