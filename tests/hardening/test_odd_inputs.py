"""Rare encodings, lying headers and random damage through the one decode path every entry
point shares: a picture the model can read, or a client error with a reason; never a crash,
a hang or a confident answer about pixels nobody sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import default_model_path
from app.inference.classifier import Classifier
from app.inference.preprocess import ImageError, UnsupportedImageError, prepare
from app.inference.spec import ModelSpec
from tests.hardening.images import odd_inputs

LESION = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "ISIC_0024329.jpg"
CORPUS = odd_inputs(LESION.read_bytes())


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return Classifier(default_model_path()).spec


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_an_odd_input_is_a_picture_or_a_client_error_with_a_reason(
    spec: ModelSpec, name: str
) -> None:
    try:
        upload = prepare(CORPUS[name], spec)
    except ImageError as exc:  # every refusal the API maps to a 4xx
        assert 400 <= exc.status < 500 and str(exc).strip()
        return
    width, height = spec.input_size
    assert upload.resized.shape == (height, width, 3) and upload.resized.dtype == np.uint8
    assert np.isfinite(upload.tensor).all()


def test_the_valid_encodings_are_read_as_the_same_lesion(spec: ModelSpec) -> None:
    reference = prepare(LESION.read_bytes(), spec).resized.astype(np.float32)
    for name in (
        "CMYK JPEG",
        "JPEG with a restart marker every block",
        "PNG RGBA, opaque",
        "PNG 16-bit RGB",
        "DICOM RGB",
        "DICOM RGB, planar",
        "DICOM RGB, 16-bit",
    ):
        picture = prepare(CORPUS[name], spec).resized.astype(np.float32)
        assert np.abs(picture - reference).mean() < 6, name  # JPEG re-encoding only


@pytest.mark.parametrize(
    "name",
    [
        "PNG RGBA, fully transparent",
        "PNG RGBA, half transparent",
        "PNG 16-bit RGBA, fully transparent",
    ],
)
def test_a_transparent_png_is_refused_not_judged_on_hidden_colours(
    spec: ModelSpec, name: str
) -> None:
    with pytest.raises(ImageError, match="transparent") as info:
        prepare(CORPUS[name], spec)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "name",
    [
        "DICOM HSV (retired)",
        "DICOM YBR_PARTIAL_420 uncompressed",
        "DICOM with a blank colour space",
    ],
)
def test_a_dicom_colour_space_that_is_not_converted_to_rgb_is_refused(
    spec: ModelSpec, name: str
) -> None:
    with pytest.raises(UnsupportedImageError, match="colour space"):
        prepare(CORPUS[name], spec)
