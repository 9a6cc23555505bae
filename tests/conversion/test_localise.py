"""The localisation measure: the candidate sweep scores the shipped maps as the CAM model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conversion.cam import build_cam_model
from conversion.convert import read_spec
from conversion.images import preprocess_paths
from conversion.localise import baselines, measure_split, score, sweep_candidates

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "skin_lesion.onnx"
IMAGES = REPO / "tests" / "fixtures" / "images"


def test_score_counts_the_peak_and_the_mass_inside_the_lesion() -> None:
    mask = np.zeros((150, 200), bool)
    mask[:75, :100] = True  # top-left quarter
    inside = np.zeros((10, 13), np.float32)
    inside[2, 3] = 1.0
    outside = np.zeros((10, 13), np.float32)
    outside[8, 11] = 1.0
    figures = score([inside, outside], [mask, mask])
    assert figures.pointing == 0.5 and figures.images == 2
    assert 0.45 < figures.mass < 0.55  # one map all in, the other all out
    assert baselines([mask])["uniform"].mass == 0.25
    assert baselines([mask])["centre"].pointing == 0.0  # the centre pixel is just outside


@pytest.mark.slow
def test_the_sweep_scores_the_shipped_maps_like_the_cam_model(
    tmp_path: Path, split_csv: Path
) -> None:
    # Two different routes to the same maps: the sweep's numpy Layer-CAM and Grad-CAM from
    # exposed gradients, and the CAM model's own ONNX outputs combined as the server does.
    cam = tmp_path / "skin_lesion_cam.onnx"
    paths = sorted(IMAGES.glob("*.jpg"))[:2]
    build_cam_model(SHIPPED, cam, preprocess_paths(paths, read_spec(SHIPPED)))
    measured = measure_split(cam, IMAGES, split_csv, "val")
    swept = sweep_candidates(SHIPPED, IMAGES, split_csv, "val")
    assert measured["shown"] == "layer_cam_three_scales"
    assert swept["dropped"] == measured["dropped"] and measured["images"] == 5
    rows = {row["name"]: row for row in swept["candidates"]}
    pairs = {
        "layer_cam_three_scales": "Layer-CAM minus mean, last x 16 x 8, geometric mean "
        "(`layer_cam_three_scales`)",
        "layer_cam_geometric": "Layer-CAM minus mean 16 x 8, geometric mean "
        "(`layer_cam_geometric`)",
        "multi_scale_average": "previous: average of last-block CAM and stride-16 Grad-CAM "
        "(`multi_scale_average`)",
        "layer_cam": "Layer-CAM minus image mean, stride 16 (`layer_cam`)",
        "class_maps": "Grad-CAM = CAM, last block (`class_maps`)",
    }
    for output, name in pairs.items():
        assert rows[name]["pointing"] == measured["maps"][output]["pointing"], output
        assert rows[name]["mass"] == pytest.approx(measured["maps"][output]["mass"], abs=1e-3)
