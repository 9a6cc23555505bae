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


def _edited(data: bytes, **changes: object) -> bytes:
    """The DICOM file with header fields replaced (raw values, as a malicious file may hold)."""
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if keyword == "TransferSyntaxUID":
            dataset.file_meta.TransferSyntaxUID = value
        else:
            dataset[keyword].value = value  # type: ignore[index]
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def test_dicom_malformed_header_is_a_400_not_a_crash(
    make_dicom: Callable[..., bytes], jpeg: bytes
) -> None:
    # An empty Rows gave a TypeError (a 500) once the header was parsed.
    with pytest.raises(ImageError, match="unreadable DICOM header"):
        decode_image(_edited(make_dicom(jpeg), Rows=None))
    with pytest.raises(ImageError):
        decode_image(make_dicom(jpeg)[:300] + b"\xe0\x7f\x10\x00")  # garbage, then pixel tag


def test_dicom_frame_larger_than_its_header_is_refused_before_decoding(
    make_dicom: Callable[..., bytes], jpeg: bytes
) -> None:
    # A 600x450 header around a bigger JPEG: pydicom would decode it all before comparing.
    big = cv2.imencode(".jpg", np.zeros((1800, 2400, 3), np.uint8))[1].tobytes()
    data = make_dicom(jpeg)
    import io

    import pydicom
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PixelData = encapsulate([big])
    buf = io.BytesIO()
    dataset.save_as(buf)
    with pytest.raises(ImageError, match="frame is 2400x1800, its header 600x450"):
        decode_image(buf.getvalue())


def test_dicom_compression_without_a_decoder_is_415(
    make_dicom: Callable[..., bytes], jpeg: bytes
) -> None:
    from pydicom.uid import JPEGLSLossless

    with pytest.raises(UnsupportedImageError, match="cannot be decoded here"):
        decode_image(_edited(make_dicom(jpeg), TransferSyntaxUID=JPEGLSLossless))
