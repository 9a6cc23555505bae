"""The contract between an ONNX model and the service, carried in the model's ``metadata_props``.

The conversion pipeline writes it, the server reads it: nothing about labels, input size or
scaling is hard-coded in the serving code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# HAM10000 class order used by the upstream app and by our own model.
HAM10000_LABELS: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
HAM10000_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "nv": "Melanocytic nevus (mole)",
    "vasc": "Vascular lesion",
    "mel": "Melanoma",
}
RISK_GROUPS: dict[str, str] = {
    "mel": "malignant",
    "bcc": "malignant",
    "akiec": "pre-cancerous",
    "bkl": "benign",
    "df": "benign",
    "nv": "benign",
    "vasc": "benign",
}

METADATA_PREFIX = "skinlesion."


class ModelSpecError(ValueError):
    """The model's metadata is missing or inconsistent."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the server needs to feed a model and read its output.

    Pixels reach the model as ``float32(rgb) * input_scale + input_offset``; our own models
    carry their scaling inside (scale 1, offset 0), the upstream model needs /255.
    """

    name: str
    labels: tuple[str, ...] = HAM10000_LABELS
    label_names: tuple[str, ...] = tuple(HAM10000_NAMES[c] for c in HAM10000_LABELS)
    input_width: int = 224
    input_height: int = 224
    layout: str = "NHWC"  # or NCHW when converted with inputs_as_nchw
    color_order: str = "RGB"
    input_scale: float = 1.0
    input_offset: float = 0.0
    resize: str = "INTER_AREA"
    # (width, height) the training images were stored at: uploads are first resized to it, so
    # the model sees the same resampling as in training (HAM10000 ships 200x150 copies).
    resample_via: tuple[int, int] | None = None
    temperature: float | None = None  # already folded into the logits when present
    mel_threshold: float | None = None
    version: str = "0"
    source_sha256: str = ""
    training_data: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height), the order OpenCV's resize takes."""
        return self.input_width, self.input_height

    def to_metadata(self) -> dict[str, str]:
        """Flat string key/values for ONNX ``metadata_props``; every value is JSON."""
        return {METADATA_PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in props.items():
            if key.startswith(METADATA_PREFIX) and key[len(METADATA_PREFIX) :] in known:
                try:
                    values[key[len(METADATA_PREFIX) :]] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ModelSpecError(f"metadata {key} is not JSON: {raw!r}") from exc
        if "name" not in values:
            raise ModelSpecError(
                "model has no skinlesion.* metadata; convert it with `python -m conversion convert`"
            )
        for key in ("labels", "label_names", "resample_via"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        spec = cls(**values)
        if len(spec.labels) != len(spec.label_names):
            raise ModelSpecError("labels and label_names differ in length")
        if spec.layout not in ("NHWC", "NCHW"):
            raise ModelSpecError(f"unknown layout {spec.layout!r}")
        return spec
