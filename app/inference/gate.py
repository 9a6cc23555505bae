"""The intended-use gate: refuse images the model cannot judge, and say why in plain words.

Two parts, both inside the one shared inference path (so the API, batch, explain, the live
socket and the web upload all get it):

- **Quality checks** on the decoded image, before inference: too small, too dark, too bright,
  low contrast, blurred, and without colour. Each is one number measured on a fixed-size view
  and one threshold. The gate file names the view's size: the model's own input picture where
  it is at least 160x120, so the checks cost no resize of their own. (A share of
  skin-coloured pixels was measured too and dropped: 0.1 % of the training images have none,
  so it could refuse nothing safely.)
- **A distribution check** after inference, in the model's own feature space: the Mahalanobis
  distance of the pooled backbone features to the nearest class mean, with one covariance
  shared by all classes (Lee et al., 2018). Far from every lesion class the model was trained
  on means the model's answer is a guess, however confident its softmax looks.

Every threshold lives in one file beside the model, ``<model name>_gate.json``, which
``python -m conversion build`` (or ``python -m conversion gate``) fits from the training split
and sets on the validation split; the server reads it and nothing here hard-codes a threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.files import file_sha256
from app.inference.preprocess import MIN_DECODE, ImageError, center_crop_to_aspect
from app.inference.spec import ModelSpec

FEATURES = "features"  # the served model's second output: pooled backbone features
FEATURE_BLOCKS_KEY = "skinlesion_gate.feature_blocks"  # ONNX metadata: [[tensor, size], ...]
GATE_SCHEMA = 1
# The quality checks look at one fixed-size copy, whatever the upload's size, so their
# thresholds mean the same for a 224x224 crop and a 12 MP photo. Its (width, height) is in the
# gate file; this one is the least (uploads are decoded at least this large) and the size of
# gate files that name none.
VIEW_SIZE = MIN_DECODE

# The checks, in the order a person should fix them, with what to tell them.
MESSAGES: dict[str, str] = {
    "too_small": "the image is too small to judge; send the original, not a thumbnail",
    "too_dark": "the image is too dark; light the skin evenly and retake it",
    "too_bright": "the image is overexposed; reduce the light or glare and retake it",
    "low_contrast": "the image is nearly uniform; no lesion is visible",
    "blurred": "the image is blurred; hold the dermatoscope still and refocus",
    "no_colour": "the image has almost no colour; the model only judges colour dermoscopy",
    "out_of_distribution": (
        "no skin lesion in view (this does not look like a dermoscopic image of a skin lesion, "
        "the only kind the model can judge)"
    ),
}
# The checks refused above their threshold; every other one is refused below it.
HIGHER_IS_WORSE = {"too_bright", "out_of_distribution"}


def gate_path(model_path: Path, spec: ModelSpec) -> Path:
    """Where a served model's gate file lives: FP32 and INT8 exports share one."""
    return model_path.with_name(f"{spec.name}_gate.json")


@dataclass(frozen=True, slots=True)
class Reason:
    """One failed check: its name, what was measured, and the line it crossed."""

    check: str
    value: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "value": self.value, "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class GateResult:
    """What the gate measured for one image; ``reasons`` is empty when it passed."""

    scores: dict[str, float]
    thresholds: dict[str, float]
    reasons: tuple[Reason, ...] = ()
    overridden: bool = False  # a clinician chose "analyse anyway" despite the reasons
    distribution_checked: bool = True

    @property
    def passed(self) -> bool:
        return not self.reasons

    def with_score(self, check: str, value: float, threshold: float | None) -> GateResult:
        """This result plus one more measured check (the distribution score after inference)."""
        scores = {**self.scores, check: value}
        if threshold is None:
            return GateResult(scores, self.thresholds, self.reasons, self.overridden, False)
        reasons = self.reasons
        if _fails(check, value, threshold):
            reasons = (*reasons, Reason(check, value, threshold))
        thresholds = {**self.thresholds, check: threshold}
        return GateResult(scores, thresholds, reasons, self.overridden, True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "outside_intended_use": self.overridden and not self.passed,
            "distribution_checked": self.distribution_checked,
            "scores": self.scores,
            "thresholds": self.thresholds,
            "reasons": [r.as_dict() for r in self.reasons],
        }


class ImageRejectedError(ImageError):
    """The image is outside the model's intended use: 422 with the failed checks."""

    status = 422
    code = "image_rejected"

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(describe(result.reasons))

    @property
    def reasons(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.result.reasons]


def describe(reasons: tuple[Reason, ...] | list[Reason]) -> str:
    """Plain words for a person: what is wrong and what to do, most fixable first."""
    order = list(MESSAGES)
    texts = [MESSAGES[r.check] for r in sorted(reasons, key=lambda r: order.index(r.check))]
    if not texts:
        return "the image passed every check"
    return "Not analysed: " + "; ".join(texts) + "."


def _fails(check: str, value: float, threshold: float) -> bool:
    if check in HIGHER_IS_WORSE:
        return value > threshold
    return value < threshold


def view_size(spec: ModelSpec) -> tuple[int, int]:
    """The view a model's gate is fitted on: its input picture when that is at least
    VIEW_SIZE (the checks then reuse it), else VIEW_SIZE."""
    width, height = spec.input_size
    return (width, height) if width >= VIEW_SIZE[0] and height >= VIEW_SIZE[1] else VIEW_SIZE


def gate_view(rgb: np.ndarray, view: tuple[int, int]) -> np.ndarray:
    """The fixed-size RGB copy the quality checks measure (centre crop, INTER_AREA)."""
    crop = center_crop_to_aspect(rgb, view[0] / view[1])
    return cv2.resize(crop, view, interpolation=cv2.INTER_AREA)


def quality_view(
    rgb: np.ndarray, view: tuple[int, int], resized: np.ndarray | None = None
) -> np.ndarray:
    """The checks' view: the model's own input picture when it is that size (no extra work:
    measured 0.34 ms of a 0.69 ms check for a 160x120 view of a 300x225 decode), else a
    fixed-size resize of the decoded image."""
    if resized is not None and resized.shape[:2] == (view[1], view[0]):
        return resized
    return gate_view(rgb, view)


def colourfulness(view: np.ndarray) -> float:
    """Hasler & Suesstrunk's (2003) colourfulness: 0 for a grey picture, ~100 for a vivid one.

    On every other pixel: a statistic of the whole frame, at a quarter of the cost.
    """
    red, green, blue = cv2.split(np.ascontiguousarray(view[::2, ::2]))
    rg = cv2.subtract(red, green, dtype=cv2.CV_16S)
    yb = cv2.subtract(
        cv2.addWeighted(red, 0.5, green, 0.5, 0, dtype=cv2.CV_16S), blue, dtype=cv2.CV_16S
    )
    rg_mean, rg_std = cv2.meanStdDev(rg)
    yb_mean, yb_std = cv2.meanStdDev(yb)
    spread = math.hypot(float(rg_std[0, 0]), float(yb_std[0, 0]))
    return spread + 0.3 * math.hypot(float(rg_mean[0, 0]), float(yb_mean[0, 0]))


def measure(
    rgb: np.ndarray,
    original_size: tuple[int, int],
    view: tuple[int, int],
    resized: np.ndarray | None = None,
) -> dict[str, float]:
    """The quality scores of one decoded RGB image.

    Args:
        original_size: (width, height) of the upload as sent, before any reduced decode.
        view: (width, height) of the view the thresholds were fitted on.
        resized: the model's input picture (uint8 RGB), reused as the view when it fits.
    """
    picture = quality_view(rgb, view, resized)
    grey = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)
    mean, std = cv2.meanStdDev(grey)
    _, edges = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))
    sharpness = float(edges[0, 0]) ** 2  # the variance of the Laplacian
    return {
        "too_small": float(min(original_size)),
        "too_dark": round(float(mean[0, 0]), 3),
        "too_bright": round(float(mean[0, 0]), 3),
        "low_contrast": round(float(std[0, 0]), 3),
        "blurred": round(float(sharpness), 3),
        "no_colour": round(colourfulness(picture), 3),
    }


@dataclass(frozen=True, slots=True)
class Block:
    """One slice of the features: distances to the nearest class mean, whitened once."""

    start: int
    stop: int
    whitener: np.ndarray  # [F, k]: W with W @ W.T = the inverse shared covariance (k < F:
    # a wide block reduced to its main directions first, see conversion/gate.py fit_block)
    means: np.ndarray  # [classes, F], class means already multiplied by the whitener
    centre: float  # mean and spread of the training images' distances, to add blocks up
    spread: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """[N, F_all] -> [N] Mahalanobis distances to the nearest class mean."""
        white = features[:, self.start : self.stop] @ self.whitener
        # |w - m|^2 = |w|^2 - 2 w.m + |m|^2: one small matrix product instead of a 3-D array
        squared = (white * white).sum(axis=1, keepdims=True) - 2 * white @ self.means.T
        squared += (self.means * self.means).sum(axis=1)
        distances: np.ndarray = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
        return distances


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mahalanobis distance to the nearest class mean with one shared covariance per block
    (Lee et al., 2018), standardised per block and summed over blocks of several depths."""

    blocks: tuple[Block, ...]
    threshold: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """[N, F] features -> [N] scores; higher is further from the training images."""
        total = np.zeros(len(features), np.float64)
        for block in self.blocks:
            total += (block.distances(features) - block.centre) / block.spread
        return total

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "bounds": np.array([[b.start, b.stop] for b in self.blocks], np.int64),
            "norm": np.array([[b.centre, b.spread] for b in self.blocks], np.float64),
        }
        for i, b in enumerate(self.blocks):
            arrays[f"whitener_{i}"], arrays[f"means_{i}"] = b.whitener, b.means
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Any, threshold: float) -> Distribution:
        blocks = tuple(
            Block(
                int(start),
                int(stop),
                arrays[f"whitener_{i}"].astype(np.float32),
                arrays[f"means_{i}"].astype(np.float32),
                float(centre),
                float(spread),
            )
            for i, ((start, stop), (centre, spread)) in enumerate(
                zip(arrays["bounds"], arrays["norm"], strict=True)
            )
        )
        return cls(blocks, threshold)


@dataclass(frozen=True, slots=True)
class Gate:
    """The thresholds of one model, read from its gate file."""

    quality: dict[str, float]
    distribution: Distribution | None = None
    view: tuple[int, int] = VIEW_SIZE  # (width, height) the quality thresholds were fitted on

    @property
    def mode(self) -> str:
        return "quality+distribution" if self.distribution is not None else "quality only"

    def check_quality(
        self,
        rgb: np.ndarray,
        original_size: tuple[int, int],
        override: bool = False,
        resized: np.ndarray | None = None,
    ) -> GateResult:
        """Measure one decoded image; raises ImageRejectedError unless ``override``."""
        scores = measure(rgb, original_size, self.view, resized)
        reasons = tuple(
            Reason(name, scores[name], limit)
            for name, limit in self.quality.items()
            if _fails(name, scores[name], limit)
        )
        result = GateResult(scores, dict(self.quality), reasons, override, False)
        if reasons and not override:
            raise ImageRejectedError(result)
        return result

    def check_distribution(self, result: GateResult, score: float | None) -> GateResult:
        """Add the distribution score; raises ImageRejectedError unless overridden."""
        if self.distribution is None or score is None:
            return result
        checked = result.with_score(
            "out_of_distribution", round(score, 3), self.distribution.threshold
        )
        if not checked.passed and not checked.overridden:
            raise ImageRejectedError(checked)
        return checked

    @classmethod
    def load(cls, path: Path) -> Gate:
        """Read a gate file; raises GateFileError with the reason."""
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise GateFileError(
                f"no intended-use gate file {path.name} beside the model; build it with "
                "`python -m conversion gate MODEL` (part of `python -m conversion build`)"
            ) from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise GateFileError(f"cannot read {path}: {exc}") from exc
        if doc.get("schema") != GATE_SCHEMA:
            raise GateFileError(f"{path}: unknown gate schema {doc.get('schema')!r}")
        quality = {
            str(k): float(v) for k, v in doc.get("quality", {}).get("thresholds", {}).items()
        }
        unknown = set(quality) - set(MESSAGES)
        if unknown or not quality:
            raise GateFileError(f"{path}: unknown or missing quality checks {sorted(unknown)}")
        view = doc["quality"].get("view", list(VIEW_SIZE))
        if not (
            isinstance(view, list)
            and len(view) == 2
            and all(isinstance(v, int) and v >= m for v, m in zip(view, VIEW_SIZE, strict=True))
        ):
            raise GateFileError(f"{path}: the quality view {view!r} is not [width, height]")
        distribution = None
        dist = doc.get("distribution")
        if dist:
            arrays = path.with_name(dist["arrays"])
            digest = file_sha256(arrays) if arrays.is_file() else None
            if digest != dist["sha256"]:
                raise GateFileError(f"{arrays.name} is missing or does not match {path.name}")
            threshold = float(dist["threshold"])
            if not math.isfinite(threshold):
                raise GateFileError(f"{path}: the distribution threshold is not a number")
            with np.load(arrays) as stats:
                distribution = Distribution.from_arrays(stats, threshold)
        return cls(quality, distribution, (view[0], view[1]))


class GateFileError(RuntimeError):
    """The gate file is missing or unreadable: the server must not start without its gate."""
