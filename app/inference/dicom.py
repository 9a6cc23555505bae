"""DICOM input: one colour frame (a VL photographic / dermoscopic image) to RGB pixels.

Read with pydicom, whose pixel decoders (numpy for uncompressed data, Pillow for JPEG and
JPEG 2000) return RGB for YBR-encoded colour. Only what the model was trained on is accepted:
single-frame colour images. Greyscale (radiology) and multi-frame (video) objects are refused
with a reason, never classified: the model has seen neither.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

DICOM_MAGIC = b"DICM"  # after the 128-byte preamble (PS3.10 section 7.1)


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == DICOM_MAGIC


def _read(data: bytes, pixels: bool) -> Any:
    # Imported here: a JPEG/PNG-only deployment never loads pydicom.
    import pydicom
    from pydicom.errors import InvalidDicomError

    from app.inference.preprocess import ImageError, UnsupportedImageError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError) as exc:
        raise ImageError(f"unreadable DICOM file: {exc}") from exc
    if "PixelData" not in dataset and pixels:
        raise ImageError("the DICOM file has no image (no Pixel Data)")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise UnsupportedImageError(
            f"multi-frame DICOM ({frames} frames) is not supported: send one frame"
        )
    samples = dataset.get("SamplesPerPixel")
    if samples != 3:
        kind = dataset.get("PhotometricInterpretation", "unknown")
        raise UnsupportedImageError(
            f"this DICOM image is not colour ({kind}, {samples} sample(s) per pixel): the model "
            "was trained on colour dermoscopic images only"
        )
    return dataset


def dicom_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone, before any pixel is decoded."""
    from app.inference.preprocess import ImageError

    dataset = _read(data, pixels=False)
    try:
        return int(dataset.Columns), int(dataset.Rows)
    except AttributeError as exc:
        raise ImageError("the DICOM header has no Rows/Columns") from exc


def decode_dicom(data: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the file's one colour frame."""
    from app.inference.preprocess import ImageError, UnsupportedImageError

    dataset = _read(data, pixels=True)
    try:
        pixels = dataset.pixel_array  # YBR is converted to RGB by pydicom's decoders
    except NotImplementedError as exc:  # no decoder for this transfer syntax here
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImageError(f"DICOM compression {name} cannot be decoded here") from exc
    except (ValueError, RuntimeError, OSError, AttributeError) as exc:
        raise ImageError(f"corrupt DICOM pixel data: {exc}") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageError(f"unexpected DICOM pixel layout {pixels.shape}")
    if pixels.dtype != np.uint8:
        # 12/16-bit colour: scale the stored range to 8 bits, as the training images were.
        top = float(2 ** int(dataset.get("BitsStored", 16)) - 1)
        pixels = np.clip(np.rint(pixels.astype(np.float32) * (255.0 / top)), 0, 255)
    return np.ascontiguousarray(pixels, dtype=np.uint8)
