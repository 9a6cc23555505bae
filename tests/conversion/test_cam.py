"""The CAM model: the shipped model plus class activation maps, checked by an identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.inference.explain import LAYER_CAM_LAST, LAYER_CAM_OUTPUTS
from conversion.cam import CLASS_MAPS, build_cam_model, check_class_maps, find_head
from conversion.convert import read_spec
from conversion.errors import ConversionError, GateError
from conversion.images import preprocess_paths

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "skin_lesion.onnx"
UPSTREAM = REPO / "models" / "upstream" / "upstream_skin.onnx"


@pytest.fixture(scope="module")
def batch(fixture_images: list[tuple[Path, str]]) -> np.ndarray:
    return preprocess_paths([p for p, _ in fixture_images], read_spec(SHIPPED))


def test_cam_model_keeps_the_probabilities_and_rebuilds_them(
    tmp_path: Path, batch: np.ndarray
) -> None:
    out = tmp_path / "skin_lesion_cam.onnx"
    diff = build_cam_model(SHIPPED, out, batch)
    assert diff <= 1e-5
    cam = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # the served model's outputs (probabilities, the gate's features), then the class maps,
    # the Layer-CAM maps and the finer Grad-CAM maps (tests/conversion/test_gradcam.py)
    names = [o.name for o in cam.get_outputs()]
    assert names[0] == "probabilities"
    assert names[-5:] == [CLASS_MAPS, *LAYER_CAM_OUTPUTS, LAYER_CAM_LAST, "fine_maps"]
    label = np.array([0], np.int64)  # the class of the fine maps, which this test does not read
    probabilities, maps = cam.run(["probabilities", CLASS_MAPS], {"input": batch, "label": label})
    assert maps.shape[:2] == (len(batch), 7) and maps.shape[2] >= 3 and maps.shape[3] >= 3
    assert np.abs(maps).max() > 0
    # The model's metadata (labels, input spec) travels with it: the server checks it.
    assert read_spec(out).labels == read_spec(SHIPPED).labels
    # The gate can fail: the same maps with another head's bias do not rebuild them.
    head = find_head(onnx.load(str(SHIPPED)))
    with pytest.raises(GateError, match="do not rebuild"):
        check_class_maps(probabilities, maps, head.bias + np.arange(7, dtype=np.float32))


def test_cam_needs_a_pooled_head(tmp_path: Path) -> None:
    # The upstream 28x28 model ends Flatten -> Dense: no spatial map to show.
    with pytest.raises(ConversionError, match="global-average-pooling"):
        find_head(onnx.load(str(UPSTREAM)))


def test_cam_cli_writes_the_model_and_records_it(tmp_path: Path) -> None:
    import json
    import shutil

    from app.inference.classifier import file_sha256
    from conversion.__main__ import main

    shutil.copy(SHIPPED, tmp_path / SHIPPED.name)
    shutil.copy(SHIPPED.parent / "manifest.json", tmp_path / "manifest.json")
    images = REPO / "tests" / "fixtures" / "images"
    argv = ["cam", str(tmp_path / SHIPPED.name), "--images", str(images)]
    argv += ["--labels-csv", str(images / "labels.csv"), "--split", "all"]
    assert main(argv) == 0
    cam = tmp_path / "skin_lesion_cam.onnx"  # named after the model, beside it
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"]["cam"]
    assert entry["path"] == cam.name and entry["sha256"] == file_sha256(cam)
    assert entry["identity_gate"]["max_prob_diff"] <= entry["identity_gate"]["limit"]
    assert entry["identity_gate"]["images"] == 14
    # the grid of every map, and the one the server returns: the finest Layer-CAM grid
    assert entry["grids"]["layer_cam_fine"] == [19, 25] and entry["grids"]["layer_cam"] == [10, 13]
    assert entry["grids"]["layer_cam_last"] == [5, 7]
    assert entry["shown"] == {"map": "layer_cam_three_scales", "grid": [19, 25]}
