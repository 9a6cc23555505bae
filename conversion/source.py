"""The Keras HDF5 input: validation, loading, and the model contract (``ModelSpec``) it carries.

Our own training writes the contract as the HDF5 root attribute ``skinlesion_spec``; for other
models (the upstream app's) command-line flags give it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from app.inference.classifier import file_sha256 as sha256_file
from app.inference.spec import HAM10000_LABELS, HAM10000_NAMES, ModelSpec
from conversion.errors import ConversionError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

SPEC_ATTR = "skinlesion_spec"  # written by training/train.py


@dataclass(frozen=True, slots=True)
class SpecOverrides:
    """Contract fields given on the command line; ``None`` keeps the HDF5's value or default."""

    name: str | None = None
    labels: tuple[str, ...] | None = None
    label_names: tuple[str, ...] | None = None
    input_scale: float | None = None
    input_offset: float | None = None
    temperature: float | None = None
    mel_threshold: float | None = None
    training_data: str | None = None
    license: str | None = None
    version: str | None = None


def check_hdf5(path: Path) -> dict[str, Any] | None:
    """Refuse files that are not a full Keras HDF5 model; return the stored spec, if any."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise ConversionError(f"{path}: not an HDF5 file (expected a Keras .h5 model)")
    with h5py.File(path, "r") as fh:
        if "model_config" not in fh.attrs:
            raise ConversionError(
                f"{path}: HDF5 holds weights only, no model config; save the whole model with "
                "model.save('model.h5'), not model.save_weights()"
            )
        raw = fh.attrs.get(SPEC_ATTR)
    if raw is None:
        return None
    try:
        stored = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: attribute {SPEC_ATTR} is not JSON") from exc
    if not isinstance(stored, dict):
        raise ConversionError(f"{path}: attribute {SPEC_ATTR} is not a JSON object")
    return stored


def load_keras(path: Path) -> keras.Model:
    """Load without compiling, so custom training metrics (upstream ``auc_roc``) don't block."""
    import keras  # lazy: TensorFlow is the conversion extra, never imported by the server

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises a zoo of types for bad configs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: Keras cannot load the model: {first}") from exc


def input_hw(model: keras.Model) -> tuple[int, int]:
    """(height, width) of an NHWC RGB image model; anything else is refused."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or not all(isinstance(d, int) for d in shape[1:3]):
        raise ConversionError(
            f"model input shape {shape} is not (batch, height, width, 3) with a fixed size"
        )
    return int(shape[1]), int(shape[2])


def resolve_spec(
    path: Path, model: keras.Model, overrides: SpecOverrides, stored: dict[str, Any] | None
) -> ModelSpec:
    """Merge the HDF5's stored contract with flags and check it against the model's shapes."""
    height, width = input_hw(model)
    values: dict[str, Any] = dict(stored or {})
    if stored is None and overrides.input_scale is None:
        raise ConversionError(
            f"{path} carries no {SPEC_ATTR} attribute, so the input scaling is unknown: pass "
            "--input-scale (and --input-offset), e.g. --input-scale 1/255 for the upstream model"
        )
    for key, value in dataclasses.asdict(overrides).items():
        if value is not None:
            values[key] = value
    if overrides.labels is not None and overrides.label_names is None:
        values["label_names"] = tuple(HAM10000_NAMES.get(c, c) for c in overrides.labels)
    values.setdefault("name", path.stem)
    labels = tuple(values.get("labels", HAM10000_LABELS))
    values["labels"] = labels
    values["label_names"] = tuple(
        values.get("label_names", [HAM10000_NAMES.get(c, c) for c in labels])
    )
    if len(values["label_names"]) != len(labels):
        raise ConversionError(f"{len(labels)} labels but {len(values['label_names'])} label names")
    for key, actual in (("input_width", width), ("input_height", height)):
        if key in values and int(values[key]) != actual:
            raise ConversionError(
                f"{SPEC_ATTR} says {key}={values[key]} but the model takes {actual}"
            )
        values[key] = actual
    n_out = model.output_shape[-1] if len(model.output_shape) == 2 else None
    if n_out != len(labels):
        raise ConversionError(
            f"model output shape {model.output_shape} is not a {len(labels)}-class probability "
            f"vector for labels {','.join(labels)}; pass --labels with one code per output"
        )
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    extra = {k: v for k, v in values.items() if k not in known}
    values = {k: v for k, v in values.items() if k in known}
    if extra:
        values["extra"] = {**values.get("extra", {}), **extra}
    values["source_sha256"] = sha256_file(path)
    values["layout"] = "NHWC"
    return ModelSpec(**values)


def check_probabilities(model: keras.Model, spec: ModelSpec) -> None:
    """The server reads probabilities: refuse models that end in logits."""
    rng = np.random.default_rng(0)
    probe = rng.uniform(0, 255, (4, spec.input_height, spec.input_width, 3)).astype(np.float32)
    probe = probe * np.float32(spec.input_scale) + np.float32(spec.input_offset)
    out = np.asarray(model(probe, training=False))
    if (out < -1e-6).any() or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        raise ConversionError(
            "model output is not a probability vector (rows must be >= 0 and sum to 1); "
            "end the model with a softmax"
        )
