"""Shared test fixtures: paths to committed images and models. Tests never read ../shared."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = FIXTURES.parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_images() -> list[tuple[Path, str]]:
    """(path, dx) of the committed 600x450 HAM10000 originals, two per class."""
    with (FIXTURES / "images" / "labels.csv").open(newline="") as fh:
        return [(FIXTURES / "images" / f"{r['image_id']}.jpg", r["dx"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="session")
def upstream_h5() -> Path:
    """The upstream app's 28x28 Keras model (MIT licence)."""
    return FIXTURES / "upstream_skin.h5"


@pytest.fixture(scope="session")
def make_dicom() -> Callable[..., bytes]:
    """Build a DICOM file (VL Photographic Image) around a real HAM10000 JPEG, with pydicom.

    ``jpeg``: keep the JPEG bytes as encapsulated pixel data (JPEG Baseline, YBR_FULL_422),
    else store decoded RGB pixels uncompressed; ``grey`` and ``frames`` make the kinds the
    service must refuse.
    """
    import io

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    from tests.hardening.images import dicom_file

    def build(source: bytes, jpeg: bool = True, grey: bool = False, frames: int = 1) -> bytes:
        rgb = np.array(Image.open(io.BytesIO(source)).convert("RGB"))
        count = frames if frames > 1 else None
        tags: dict[str, Any] = {"frames": count, "patient": "Test^Patient"}
        if grey:
            grey_pixels = np.ascontiguousarray(rgb[..., 1]).tobytes() * frames
            return dicom_file(
                *rgb.shape[:2], grey_pixels, photometric="MONOCHROME2", samples=1, **tags
            )
        if jpeg:
            return dicom_file(
                *rgb.shape[:2],
                fragments=[source] * frames,
                photometric="YBR_FULL_422",
                syntax=JPEGBaseline8Bit,
                **tags,
            )
        return dicom_file(*rgb.shape[:2], rgb.tobytes() * frames, **tags)

    return build
