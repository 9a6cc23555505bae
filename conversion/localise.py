"""Lesion references without hand labelling, and how well a heat map points at them.

The reference is the classical dermoscopy segmentation: the colour distance of every pixel
from the surrounding skin (the median colour of a border ring, vignette excluded), Otsu's
threshold on it, morphological opening and closing, holes filled, and the connected component
nearest the centre kept. It fails on some images (a lesion filling the frame, hair, pale
lesions), and those are dropped when the component is implausible; `overlay_sheet` draws it over
images to check by eye. It is a classical segmentation, not a dermatologist's outline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from app.inference.explain import geometric_mean, multi_scale, unit_peak

MIN_AREA, MAX_AREA = 0.01, 0.85  # share of the frame: outside, the segmentation failed
BORDER = 0.08  # the ring whose median colour is taken as skin


def lesion_mask(rgb: np.ndarray) -> np.ndarray | None:
    """[H, W] bool lesion mask of one dermoscopic image, or None where it plainly failed."""
    h, w = rgb.shape[:2]
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    ring = np.ones((h, w), bool)
    bh, bw = max(1, int(h * BORDER)), max(1, int(w * BORDER))
    ring[bh:-bh, bw:-bw] = False
    bright = lab[..., 0] > 40  # vignette corners are not skin
    skin_pixels = lab[ring & bright]
    if len(skin_pixels) < 20:
        return None
    skin = np.median(skin_pixels, axis=0)
    # Lesions are darker than the skin around them, or differ in colour; lighter skin is not.
    darker = np.maximum(skin[0] - lab[..., 0], 0)
    chroma = np.linalg.norm(lab[..., 1:] - skin[1:], axis=2)
    distance = darker + chroma
    distance[lab[..., 0] < 25] = 0  # the black of a vignette is neither
    distance = cv2.GaussianBlur(distance, (0, 0), 2)
    scaled = cv2.normalize(distance, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    _, fg = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg[~bright & ring] = 0  # dark vignette at the border is not lesion
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(
        fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    )
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(fg)
    if count < 2:
        return None
    centre = np.array([w / 2, h / 2])
    best = min(
        range(1, count),
        key=lambda i: np.linalg.norm(centroids[i] - centre) - 0.002 * stats[i, cv2.CC_STAT_AREA],
    )
    if np.linalg.norm((centroids[best] - centre) / centre) > 0.75:
        return None  # only something at the edge stands out: no lesion found
    mask = (labels == best).astype(np.uint8)
    # fill holes: flood the background from the border
    flood = mask.copy()
    cv2.floodFill(flood, np.zeros((h + 2, w + 2), np.uint8), (0, 0), 1)
    mask = mask | (1 - flood)
    area = mask.mean()
    if not MIN_AREA <= area <= MAX_AREA:
        return None
    return np.asarray(mask, dtype=bool)


@dataclass(frozen=True, slots=True)
class Localisation:
    pointing: float  # share of images whose map peak falls in the lesion
    mass: float  # mean share of the positive map inside the lesion
    images: int


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [rows, cols] map to (width, height) pixels, bilinear between cell centres."""
    positive = np.maximum(cam, 0).astype(np.float32)
    return np.asarray(cv2.resize(positive, size, interpolation=cv2.INTER_LINEAR))


def score(maps: list[np.ndarray], masks: list[np.ndarray], smooth_px: float = 0) -> Localisation:
    """Pointing game and mean share of the positive map inside the lesion, on the maps upsampled
    to the masks' size (and smoothed by a Gaussian of ``smooth_px`` pixels where given)."""
    hits, mass = [], []
    for cam, mask in zip(maps, masks, strict=True):
        h, w = mask.shape
        heat = upsample(cam, (w, h))
        if smooth_px:
            heat = cv2.GaussianBlur(heat, (0, 0), smooth_px)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits.append(bool(mask[y, x]))
        total = float(heat.sum())
        mass.append(float(heat[mask].sum()) / total if total > 0 else 0.0)
    return Localisation(float(np.mean(hits)), float(np.mean(mass)), len(masks))


def baselines(masks: list[np.ndarray]) -> dict[str, Localisation]:
    """The image centre as the pointer, and a uniform map's mass (the lesion's share)."""
    point = [bool(m[m.shape[0] // 2, m.shape[1] // 2]) for m in masks]
    uniform = [float(m.mean()) for m in masks]
    return {
        "centre": Localisation(float(np.mean(point)), float("nan"), len(masks)),
        "uniform": Localisation(float("nan"), float(np.mean(uniform)), len(masks)),
    }


def overlay_sheet(
    images: list[np.ndarray], masks: list[np.ndarray | None], columns: int = 10
) -> np.ndarray:
    """A contact sheet: each image with its reference outlined (green), or a red cross where
    the segmentation was dropped."""
    tiles = []
    for rgb, mask in zip(images, masks, strict=True):
        tile = rgb.copy()
        if mask is None:
            h, w = tile.shape[:2]
            cv2.line(tile, (0, 0), (w - 1, h - 1), (255, 0, 0), 2)
            cv2.line(tile, (w - 1, 0), (0, h - 1), (255, 0, 0), 2)
        else:
            contours, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(tile, contours, -1, (0, 255, 0), 2)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def measure_split(
    cam_path: Path, images_dir: Path, split_csv: Path, part: str = "test", sheet: Path | None = None
) -> dict[str, Any]:
    """Pointing game and mass in the lesion for the CAM model's maps of the predicted class,
    on every image of ``part`` whose reference did not plainly fail, with the baselines."""
    import onnxruntime as ort

    from app.inference.explain import (
        CLASS_MAPS,
        FINE_MAPS,
        LABEL,
        LAYER_CAM_GEOMETRIC,
        LAYER_CAM_LAST,
        LAYER_CAM_OUTPUTS,
        LAYER_CAM_THREE,
        MULTI_SCALE,
        Explainer,
    )
    from app.inference.preprocess import prepare
    from app.inference.spec import ModelSpec
    from conversion.images import read_labels

    session = ort.InferenceSession(str(cam_path), providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    names = [o.name for o in session.get_outputs()]
    wanted = [n for n in (CLASS_MAPS, FINE_MAPS, *LAYER_CAM_OUTPUTS, LAYER_CAM_LAST) if n in names]
    samples = read_labels(split_csv, images_dir, part)
    maps: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    masks: list[np.ndarray] = []
    shown: list[np.ndarray] = []
    shown_masks: list[np.ndarray | None] = []
    for sample in tqdm(samples, desc=f"lesion references ({part})", unit="img"):
        upload = prepare(sample.path.read_bytes(), spec)
        view = upload.resized
        mask = lesion_mask(view)
        if len(shown) < 60:
            shown.append(view)
            shown_masks.append(mask)
        if mask is None:
            continue
        feeds = {session.get_inputs()[0].name: upload.tensor[None]}
        if LABEL in [i.name for i in session.get_inputs()]:
            feeds[LABEL] = np.array([0], np.int64)
        label = int(np.argmax(session.run([names[0]], feeds)[0][0]))  # the predicted class
        feeds[LABEL] = np.array([label], np.int64)
        outputs = dict(zip(wanted, session.run(wanted, feeds), strict=True))
        for n in wanted:
            maps[n].append(outputs[n][0, label if n == CLASS_MAPS else 0])
        masks.append(mask)
    if sheet is not None:
        cv2.imwrite(str(sheet), overlay_sheet(shown, shown_masks)[..., ::-1])
    base = baselines(masks)
    # The combinations the server shows (Explainer.class_map): now, and before Layer-CAM.
    if CLASS_MAPS in maps and FINE_MAPS in maps:
        maps[MULTI_SCALE] = [
            multi_scale(c, f) for c, f in zip(maps[CLASS_MAPS], maps[FINE_MAPS], strict=True)
        ]
    if all(n in maps for n in LAYER_CAM_OUTPUTS):
        coarse, fine = (maps[n] for n in LAYER_CAM_OUTPUTS)
        maps[LAYER_CAM_GEOMETRIC] = [
            geometric_mean(c, f) for c, f in zip(coarse, fine, strict=True)
        ]
        if LAYER_CAM_LAST in maps:
            maps[LAYER_CAM_THREE] = [
                geometric_mean(last, c, f)
                for last, c, f in zip(maps[LAYER_CAM_LAST], coarse, fine, strict=True)
            ]
    return {
        "split": part,
        "images": len(samples),
        "dropped": len(samples) - len(masks),
        "reference": "classical segmentation (conversion/localise.py), not an outline by a "
        "dermatologist",
        "shown": Explainer(cam_path, spec).shown,
        "maps": {
            n: {"grid": list(maps[n][0].shape), **asdict(score(maps[n], masks))} for n in maps
        },
        "baselines": {
            "centre_pointing": base["centre"].pointing,
            "uniform_mass": base["uniform"].mass,
        },
    }


def _member_maps(activation: np.ndarray, gradient: np.ndarray) -> dict[str, np.ndarray]:
    """One member's maps on one block: activation and gradient [channels, h, w]."""
    positive = np.maximum(gradient, 0)
    squared = gradient**2
    # Grad-CAM++ (Chattopadhyay et al., 2018), the closed form for an exponential of the score
    denominator = 2 * squared + activation.sum(axis=(1, 2), keepdims=True) * gradient**3
    safe = np.where(denominator != 0, denominator, 1)
    alphas = np.where(denominator != 0, squared / safe, 0)
    return {
        "gc": np.tensordot(gradient.mean(axis=(1, 2)), activation, 1),
        "pp": np.tensordot((alphas * positive).sum(axis=(1, 2)), activation, 1),
        "lc": (positive * activation).sum(axis=0),
        "lcmed": (positive * (activation - np.median(activation, axis=(1, 2), keepdims=True))).sum(
            0
        ),
        "lcmean": (positive * (activation - activation.mean(axis=(1, 2), keepdims=True))).sum(0),
    }


# name, cost class (how far back the backward pass goes), how to build the map from the
# members' summed maps m[(block, method)], and a Gaussian in pixels of the model's view.
_CANDIDATES: list[tuple[str, str, Any, float]] = [
    ("Grad-CAM = CAM, last block (`class_maps`)", "last", lambda m: m["L", "gc"], 0),
    ("Layer-CAM, last block", "last", lambda m: m["L", "lc"], 0),
    ("Grad-CAM++, last block", "last", lambda m: m["L", "pp"], 0),
    ("Grad-CAM, stride 16 (`fine_maps`)", "16", lambda m: m["16", "gc"], 0),
    ("Grad-CAM++, stride 16", "16", lambda m: m["16", "pp"], 0),
    ("Layer-CAM, stride 16", "16", lambda m: m["16", "lc"], 0),
    ("Layer-CAM minus image median, stride 16", "16", lambda m: m["16", "lcmed"], 0),
    ("Layer-CAM minus image mean, stride 16 (`layer_cam`)", "16", lambda m: m["16", "lcmean"], 0),
    ("Grad-CAM, stride 8", "8", lambda m: m["8", "gc"], 0),
    ("Grad-CAM++, stride 8", "8", lambda m: m["8", "pp"], 0),
    ("Layer-CAM, stride 8", "8", lambda m: m["8", "lc"], 0),
    ("Layer-CAM minus image median, stride 8", "8", lambda m: m["8", "lcmed"], 0),
    ("Layer-CAM minus image mean, stride 8 (`layer_cam_fine`)", "8", lambda m: m["8", "lcmean"], 0),
    (
        "previous: average of last-block CAM and stride-16 Grad-CAM (`multi_scale_average`)",
        "16",
        lambda m: multi_scale(m["L", "gc"], m["16", "gc"]),
        0,
    ),
    ("Layer-CAM stride 16, smoothed 3 px", "16", lambda m: m["16", "lc"], 3),
    ("Layer-CAM 16 + 8, average", "8", lambda m: multi_scale(m["16", "lc"], m["8", "lc"]), 0),
    (
        "Layer-CAM 16 x 8, geometric mean",
        "8",
        lambda m: geometric_mean(m["16", "lc"], m["8", "lc"]),
        0,
    ),
    (
        "Layer-CAM 16 x 8, geometric mean, smoothed 3 px",
        "8",
        lambda m: geometric_mean(m["16", "lc"], m["8", "lc"]),
        3,
    ),
    (
        "CAM last x Layer-CAM 16 x 8, geometric mean",
        "8",
        lambda m: geometric_mean(m["L", "gc"], m["16", "lc"], m["8", "lc"]),
        0,
    ),
    (
        "Layer-CAM minus median 16 x 8, geometric mean",
        "8",
        lambda m: geometric_mean(m["16", "lcmed"], m["8", "lcmed"]),
        0,
    ),
    (
        "Layer-CAM minus mean 16 + 8, average",
        "8",
        lambda m: multi_scale(m["16", "lcmean"], m["8", "lcmean"]),
        0,
    ),
    (
        "Layer-CAM minus mean 16 x 8, geometric mean (`layer_cam_geometric`)",
        "8",
        lambda m: geometric_mean(m["16", "lcmean"], m["8", "lcmean"]),
        0,
    ),
    (
        "CAM last x Layer-CAM minus mean 16 x 8, geometric mean",
        "8",
        lambda m: geometric_mean(m["L", "gc"], m["16", "lcmean"], m["8", "lcmean"]),
        0,
    ),
    (
        "Layer-CAM minus mean, last x 16 x 8, geometric mean (`layer_cam_three_scales`)",
        "8",
        lambda m: geometric_mean(m["L", "lcmean"], m["16", "lcmean"], m["8", "lcmean"]),
        0,
    ),
    (
        "Layer-CAM minus mean 16 x 8, geometric mean, each member at a peak of 1",
        "8",
        lambda m: geometric_mean(m["16", "lcmean_unit"], m["8", "lcmean_unit"]),
        0,
    ),
    (
        "sharpened, not a candidate: Layer-CAM 16 cubed",
        "16",
        lambda m: unit_peak(m["16", "lc"]) ** 3,
        0,
    ),
]


def sweep_candidates(
    model_path: Path, images_dir: Path, split_csv: Path, part: str = "val", centred: bool = False
) -> dict[str, Any]:
    """The table the shown map was chosen from, on ``part`` (val: never choose on test).

    Grad-CAM, Grad-CAM++ and Layer-CAM on the last block and on each member's stride-16 and
    stride-8 blocks (conversion/gradcam.py scale_layers), and combinations of them, all of the
    predicted class, from one ONNX backward pass per image, scored like ``measure_split``.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from app.inference.explain import LABEL
    from app.inference.preprocess import prepare
    from app.inference.spec import ModelSpec
    from conversion.cam import find_head
    from conversion.gradcam import _Builder, logit_kernel, scale_layers
    from conversion.images import read_labels

    source = onnx.load(str(model_path))
    head = find_head(source)
    producer = {o: n for n in source.graph.node for o in n.output}
    top = producer[head.feature_map]
    members = list(top.input) if top.op_type == "Concat" else [head.feature_map]
    scales = scale_layers(source)
    probe = onnx.ModelProto()
    probe.CopyFrom(source)
    builder = _Builder(probe, head, "sweep")
    starts = [layer.tensor for layers in scales for layer in layers]
    grads = builder.gradients(builder.seed(centred), starts)
    fetch = [*members, *starts]
    for tensor in starts:
        fetch.append(f"d:{tensor}")
        probe.graph.node.append(helper.make_node("Identity", [grads[tensor]], [fetch[-1]]))
    for name in fetch:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_metadata({p.key: p.value for p in source.metadata_props})
    input_name = session.get_inputs()[0].name
    probabilities = session.get_outputs()[0].name
    kernel = logit_kernel(head, centred)
    width = kernel.shape[0] // len(members)
    samples = read_labels(split_csv, images_dir, part)
    maps: dict[str, list[np.ndarray]] = {name: [] for name, *_ in _CANDIDATES}
    masks: list[np.ndarray] = []
    for sample in tqdm(samples, desc=f"explanation candidates ({part})", unit="img"):
        upload = prepare(sample.path.read_bytes(), spec)
        mask = lesion_mask(upload.resized)
        if mask is None:
            continue
        x = {input_name: upload.tensor[None]}
        label = int(np.argmax(session.run([probabilities], {**x, LABEL: np.array([0])})[0][0]))
        values = dict(zip(fetch, session.run(fetch, {**x, LABEL: np.array([label])}), strict=True))
        summed: dict[tuple[str, str], np.ndarray] = {}
        for j, member in enumerate(members):
            activation = values[member][0]
            weights = kernel[j * width : (j + 1) * width, label] / activation[0].size
            gradient = np.broadcast_to(weights[:, None, None], activation.shape)
            found = {("L", k): v for k, v in _member_maps(activation, gradient).items()}
            for tag, layers in zip(("16", "8"), scales, strict=True):
                layer = layers[j]
                grad = values[f"d:{layer.tensor}"].reshape(values[layer.tensor][0].shape)
                parts = _member_maps(values[layer.tensor][0], grad)
                found |= {(tag, k): v for k, v in parts.items()}
            # Each member's own map at a peak of 1 as well: one vote each on where the evidence is
            for tag in ("16", "8"):
                found[tag, "lcmean_unit"] = unit_peak(found[tag, "lcmean"])
            for key, value in found.items():
                summed[key] = summed[key] + value if key in summed else value
        for name, _, build, _ in _CANDIDATES:
            maps[name].append(build(summed))
        masks.append(mask)
    base = baselines(masks)
    rows = []
    for name, cost, _, smooth_px in _CANDIDATES:
        figures = score(maps[name], masks, smooth_px)
        rows.append(
            {"name": name, "backward_to": cost, "pointing": figures.pointing, "mass": figures.mass}
        )
    return {
        "split": part,
        "gradient_of": "the logit minus the mean logit" if centred else "the logit",
        "images": len(samples),
        "dropped": len(samples) - len(masks),
        "reference": "classical segmentation (conversion/localise.py), not an outline by a "
        "dermatologist",
        "candidates": rows,
        "baselines": {
            "centre_pointing": base["centre"].pointing,
            "uniform_mass": base["uniform"].mass,
        },
    }
