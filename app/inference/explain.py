"""Explanations: where in the image the model found evidence for a class.

The maps come from ``<model name>_cam.onnx`` beside the served model, which
``python -m conversion cam`` writes: the FP32 model plus outputs of class activation maps
(for our GAP -> Dense head these are exactly Grad-CAM's maps, see conversion/cam.py) and, where
the backbone has finer blocks, Layer-CAM maps on two of them and on the last block
(conversion/gradcam.py). It is loaded on the first explanation, so serving without one costs
nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from app.errors import AppError
from app.inference.classifier import ModelLoadError
from app.inference.preprocess import (
    DEFAULT_MAX_PIXELS,
    center_crop_to_aspect,
    encode_png,
    prepare,
)
from app.inference.spec import ModelSpec, ModelSpecError

CLASS_MAPS = "class_maps"  # the outputs conversion/cam.py adds (it imports these names)
FINE_MAPS = "fine_maps"  # Grad-CAM on a finer block, when the model has one (conversion/gradcam.py)
LABEL = "label"  # the fine maps' second input: the index of the class to explain
# Layer-CAM on the stride-16 and the stride-8 blocks (conversion/gradcam.py add_layer_maps)
LAYER_CAM_OUTPUTS = ("layer_cam", "layer_cam_fine")
LAYER_CAM_GEOMETRIC = "layer_cam_geometric"  # what the server showed with them: geometric_mean
# Layer-CAM on the members' last block too; with the two above, what the server shows now
LAYER_CAM_LAST = "layer_cam_last"
LAYER_CAM_THREE = "layer_cam_three_scales"  # geometric_mean of the last, stride-16 and 8 maps
MULTI_SCALE = "multi_scale_average"  # what it showed before (class maps + fine maps): multi_scale
DISPLAY_WIDTH = 320  # the overlay's width; its height follows the model's aspect
HEAT_ALPHA = 0.45


class ExplanationUnavailableError(AppError):
    """This deployment has no CAM model: explanations are off, predictions are not."""

    status = 501
    code = "explanation_unavailable"


# What a person must read beside the heat map.
CAVEAT = (
    "The heat map shows where the model found evidence for this class (Layer-CAM on three grids "
    "of the model's features, smoothed for display). It is not an outline of the lesion and does "
    "not show that the result is right: on test images its hottest point fell on the lesion "
    "about nine times in ten, barely more often than the image centre does, and about 30 % of "
    "its weight lay outside the lesion. Strong evidence outside the lesion suggests the result "
    "may be unreliable."
)


# How each map the server may show is made, as an integrator reads it (``method``).
METHODS = {
    LAYER_CAM_THREE: "Layer-CAM on three blocks (the last, stride 16 and stride 8, each activation "
    "relative to its image mean), their geometric mean",
    LAYER_CAM_GEOMETRIC: "Layer-CAM on two finer blocks (stride 16 and 8, each activation "
    "relative to its image mean), their geometric mean",
    MULTI_SCALE: "Grad-CAM, the last block's map averaged with a finer block's (multi-scale)",
    CLASS_MAPS: "Grad-CAM (class activation map of the last convolutional layer)",
}


def shown_map(outputs: Collection[str]) -> tuple[str, list[str]]:
    """The map the server shows for a CAM model with these outputs, and the outputs it is made
    of (the finest grid last).

    Measured on val lesion references for the 3 x MobileNetV2 model (pointing game, mass inside
    the lesion; models/card/localisation_candidates.json): the geometric mean of the three
    Layer-CAM maps; before it, of the two finer ones; before those, the multi-scale average of
    the class map and the finer Grad-CAM map; with none, the class map.
    """
    if all(name in outputs for name in (LAYER_CAM_LAST, *LAYER_CAM_OUTPUTS)):
        return LAYER_CAM_THREE, [LAYER_CAM_LAST, *LAYER_CAM_OUTPUTS]
    if all(name in outputs for name in LAYER_CAM_OUTPUTS):
        return LAYER_CAM_GEOMETRIC, list(LAYER_CAM_OUTPUTS)
    if FINE_MAPS in outputs:
        return MULTI_SCALE, [CLASS_MAPS, FINE_MAPS]
    return CLASS_MAPS, [CLASS_MAPS]


def cam_model_path(model_path: Path, spec: ModelSpec) -> Path:
    """Where the CAM model of a served model lives: FP32 and INT8 exports share one."""
    return model_path.with_name(f"{spec.name}_cam.onnx")


@dataclass(frozen=True, slots=True)
class Explanation:
    label: str
    grid: tuple[int, int]  # (rows, columns) of the class map before smoothing
    evidence: bool  # False when no region raised the class's score (the map is empty)
    png: bytes  # the model's view of the image with the heat map over it, RGB PNG
    values: np.ndarray  # the map itself, (rows, columns), >= 0, scaled to a maximum of 1
    crop: tuple[int, int, int, int]  # (x, y, w, h) of the model's view in the upload's pixels
    method: str


class Explainer:
    """One onnxruntime session of the CAM model; thread-safe like any session."""

    def __init__(self, path: Path, served: ModelSpec) -> None:
        try:
            options = ort.SessionOptions()
            # One thread, like the classifier: cores go to concurrent requests, not one map.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            self.spec = ModelSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        except (OSError, RuntimeError, ModelSpecError) as exc:  # ort raises RuntimeError kinds
            raise ModelLoadError(f"cannot load the explanation model {path}: {exc}") from exc
        outputs = [o.name for o in self.session.get_outputs()]
        if CLASS_MAPS not in outputs:
            raise ModelLoadError(f"{path} has no {CLASS_MAPS!r} output: not a CAM model")
        same = (self.spec.labels, self.spec.input_size, self.spec.layout) == (
            served.labels,
            served.input_size,
            served.layout,
        )
        if not same:
            raise ModelLoadError(f"{path} was built for another model than the one served")
        self._input = self.session.get_inputs()[0].name
        self.shown, self.wanted = shown_map(outputs)
        self.method = METHODS[self.shown]

    def class_map(self, tensor: np.ndarray, label: str) -> np.ndarray:
        """The class's evidence, (rows, columns), ReLU'd and scaled to [0, 1] (all 0: none)."""
        index = self.spec.labels.index(label)
        feeds = {self._input: tensor[np.newaxis]}
        if self.shown == CLASS_MAPS:
            return unit_peak(self.session.run([CLASS_MAPS], feeds)[0][0, index])
        feeds[LABEL] = np.array([index], np.int64)  # the finer maps are of the one class asked
        maps = self.session.run(self.wanted, feeds)
        if self.shown in (LAYER_CAM_THREE, LAYER_CAM_GEOMETRIC):
            return geometric_mean(*(m[0, 0] for m in maps))
        first, second = maps
        return multi_scale(first[0, index], second[0, 0])

    def explain(self, data: bytes, label: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Explanation:
        """Heat map of ``label`` over the region the model sees (blocking: run off the loop)."""
        # Decoded once, exactly as `preprocess` does, so the map comes from the very tensor a
        # prediction sees; the picture is drawn from the same decode (JPEG DCT scaling keeps a
        # 39 MP photo's decode small; a reduced 600x450 upload is 300x225, shown at 320x240).
        spec = self.spec
        upload = prepare(data, spec, max_pixels)
        cam = self.class_map(upload.tensor, label)
        width, height = spec.input_size
        size = (DISPLAY_WIDTH, round(DISPLAY_WIDTH * height / width))
        shown = center_crop_to_aspect(upload.rgb, width / height)
        shown = cv2.resize(shown, size, interpolation=cv2.INTER_AREA)
        heat = cv2.resize(cam, size, interpolation=cv2.INTER_LINEAR)
        heat_u8 = (np.clip(heat, 0, 1) * 255).astype(np.uint8)
        colours = cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET)
        overlay = cv2.addWeighted(shown, 1 - HEAT_ALPHA, colours[..., ::-1], HEAT_ALPHA, 0)
        rows, columns = cam.shape
        return Explanation(
            label,
            (rows, columns),
            bool(cam.max() > 0),
            encode_png(overlay, fast=True),
            cam,
            upload.view_crop(width / height),
            self.method,
        )


def unit_peak(cam: np.ndarray) -> np.ndarray:
    """A map's positive part scaled to a peak of 1 (all 0: no evidence), float32."""
    positive: np.ndarray = np.maximum(cam, 0).astype(np.float32)
    peak = float(positive.max())
    return positive / np.float32(peak) if peak > 0 else positive


def on_grid(cam: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """The positive part of ``cam`` resized bilinearly to ``grid`` (rows, columns), float32."""
    positive: np.ndarray = np.maximum(cam, 0).astype(np.float32)
    if positive.shape == tuple(grid):
        return positive
    return np.asarray(cv2.resize(positive, (grid[1], grid[0]), interpolation=cv2.INTER_LINEAR))


def multi_scale(*cams: np.ndarray) -> np.ndarray:
    """Maps' positive parts, each scaled to a peak of 1, averaged on the last (finest) one's grid
    (the others resized bilinearly); the result scaled to a peak of 1 (all 0: none)."""
    grid = cams[-1].shape
    return unit_peak(np.sum([unit_peak(on_grid(c, grid)) for c in cams], axis=0))


def geometric_mean(*cams: np.ndarray) -> np.ndarray:
    """Maps' positive parts, each scaled to a peak of 1, their geometric mean on the last
    (finest) one's grid (the others resized bilinearly); scaled to a peak of 1 (all 0: none).

    Evidence survives only where every scale sees some: a peak that only one block has (a hair,
    a ruler mark at stride 8) is damped, unlike in an average. Degree one, like each map: a map
    scaled by a constant keeps its shape, so the mass it puts on the lesion is not sharpened.
    """
    grid = cams[-1].shape
    product = np.prod([unit_peak(on_grid(c, grid)) for c in cams], axis=0)
    return unit_peak(product ** (1 / len(cams)))
