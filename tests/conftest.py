"""Shared test fixtures: paths to committed images and models. Tests never read ../shared."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

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
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    def build(source: bytes, jpeg: bool = True, grey: bool = False, frames: int = 1) -> bytes:
        rgb = np.array(Image.open(io.BytesIO(source)).convert("RGB"))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
        ds.Modality, ds.PatientName = "XC", "Test^Patient"
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if grey:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelData = np.ascontiguousarray(rgb[..., 1]).tobytes() * frames
        elif jpeg:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
            ds.PlanarConfiguration = 0
            ds.PixelData = encapsulate([source] * frames)
            ds["PixelData"].VR = "OB"
        else:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
            ds.PlanarConfiguration = 0
            ds.PixelData = rgb.tobytes() * frames
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    return build
