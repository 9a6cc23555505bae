"""DICOM input through the shared preprocessing: colour frames decode to the JPEG's pixels;
greyscale, multi-frame and broken files are refused with a reason, never classified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.inference.preprocess import (
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    read_header,
    sniff_format,
)


@pytest.fixture(scope="module")
def jpeg(fixture_images: list[tuple[Path, str]]) -> bytes:
    return fixture_images[0][0].read_bytes()


@pytest.mark.parametrize("compressed", [True, False], ids=["jpeg-baseline", "uncompressed-rgb"])
def test_dicom_colour_frame_decodes_to_the_same_pixels(
    make_dicom: Callable[..., bytes], jpeg: bytes, compressed: bool
) -> None:
    data = make_dicom(jpeg, jpeg=compressed)
    assert sniff_format(data) == "dicom"
    info = read_header(data)
    assert (info.format, info.width, info.height) == ("dicom", 600, 450)
    direct = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR_RGB)
    pixels = decode_image(data)
    assert pixels.shape == (450, 600, 3) and pixels.dtype == np.uint8
    # The same JPEG data: libjpeg under OpenCV and Pillow's may round chroma differently.
    assert np.abs(pixels.astype(int) - direct.astype(int)).mean() < 1.0


def test_dicom_that_the_model_has_never_seen_is_refused(
    make_dicom: Callable[..., bytes], jpeg: bytes
) -> None:
    with pytest.raises(UnsupportedImageError, match="not colour"):
        decode_image(make_dicom(jpeg, jpeg=False, grey=True))
    with pytest.raises(UnsupportedImageError, match="multi-frame"):
        decode_image(make_dicom(jpeg, frames=2))


def test_dicom_broken_or_too_large_is_a_client_error(
    make_dicom: Callable[..., bytes], jpeg: bytes
) -> None:
    data = make_dicom(jpeg, jpeg=False)
    with pytest.raises(ImageTooLargeError):
        read_header(data, max_pixels=600 * 450 - 1)  # from the header, before decoding
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2])  # cut off inside the pixel data
    with pytest.raises(ImageError):
        decode_image(data[:140])  # cut off inside the header
