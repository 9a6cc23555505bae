"""What an input format is: the ``Format`` protocol, the errors an upload is refused with and the
size budget every format checks from its header before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from app.errors import AppError

DEFAULT_MAX_PIXELS = 40_000_000
# Decoded bytes allowed per image: what an 8-bit RGB image at the pixel budget takes. A 16-bit
# RGBA PNG (8 bytes a pixel) of 40 MP would otherwise decode to 320 MB.
BUDGET_BYTES_PER_PIXEL = 3


class ImageError(AppError, ValueError):
    """An upload that cannot be analysed; ``status`` is the HTTP status it maps to."""

    status = 400
    code = "bad_image"


class UnsupportedImageError(ImageError):
    status = 415
    code = "unsupported_media_type"


class ImageTooLargeError(ImageError):
    status = 413
    code = "image_too_large"


def check_budget(
    fmt: str,
    width: int,
    height: int,
    max_pixels: int,
    channels: int = 3,
    bytes_per_sample: int = 1,
) -> None:
    """400 for an empty image, 413 above the pixel budget or the decoded-bytes budget
    (``max_pixels`` x 3 bytes, an 8-bit RGB image's): before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{fmt} header gives an empty image")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP); the limit is "
            f"{max_pixels / 1e6:.0f} MP"
        )
    decoded = width * height * channels * bytes_per_sample
    if decoded > max_pixels * BUDGET_BYTES_PER_PIXEL:
        raise ImageTooLargeError(
            f"image is {width}x{height} with {channels} channel(s) of {8 * bytes_per_sample} "
            f"bits: {decoded / 1e6:.0f} MB decoded; the limit is "
            f"{max_pixels * BUDGET_BYTES_PER_PIXEL / 1e6:.0f} MB"
        )


def encode_png(rgb: np.ndarray, fast: bool = False) -> bytes:
    """RGB uint8 (H, W, 3) -> PNG bytes, for pictures the pages show (OpenCV writes BGR).

    Args:
        fast: Huffman coding only, at zlib level 1: a 320x240 overlay took 4.1 ms against 9.6
            ms by default, for 10 % fewer bytes even (photos gain little from LZ77).
    """
    params = (
        [
            cv2.IMWRITE_PNG_COMPRESSION,
            1,
            cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
        ]
        if fast
        else []
    )
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(png.tobytes())


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a header says, read before any pixel is decoded."""

    format: str  # the Format's name: "jpeg", "png", "dicom"...
    width: int
    height: int
    channels: int = 3  # as stored: 1 grey, 2 grey + alpha, 3 colour, 4 RGBA or CMYK
    bytes_per_sample: int = 1  # 2 for 12- and 16-bit samples


def within_budget(info: ImageInfo, max_pixels: int) -> ImageInfo:
    """``info`` once ``check_budget`` has passed what it says."""
    check_budget(
        info.format, info.width, info.height, max_pixels, info.channels, info.bytes_per_sample
    )
    return info


@dataclass(frozen=True, slots=True)
class Picture:
    """An upload as a browser or the PDF shows it: the bytes and their media type."""

    data: bytes
    media_type: str


class Format(Protocol):
    """One input format. Register a new one with one line in ``formats/__init__.py``."""

    @property
    def name(self) -> str:
        """Short lower-case name: the ``ImageInfo.format`` and the stored file's suffix."""
        ...

    @property
    def label(self) -> str:
        """The name users know it by ("JPEG"), for messages and the OpenAPI schema."""
        ...

    @property
    def note(self) -> str:
        """What users must know about it beyond its name ("one colour frame"), or ""."""
        ...

    @property
    def media_type(self) -> str:
        """The upload's own media type ("image/jpeg", "application/dicom")."""
        ...

    @property
    def accept(self) -> tuple[str, ...]:
        """What a file input's ``accept`` attribute lists for it (media types, extensions)."""
        ...

    def sniff(self, data: bytes) -> bool:
        """Whether ``data`` is this format, from its magic bytes (never its name)."""
        ...

    def header(self, data: bytes, max_pixels: int) -> ImageInfo:
        """Size and sample layout from the header alone; ``check_budget`` before returning."""
        ...

    def decode(
        self, data: bytes, target: tuple[int, int] | None, max_pixels: int
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB uint8 (H, W, 3), upright, and the (width, height) the upload was sent at.

        Args:
            target: (width, height) the image will be resized to, when the decoder may decode
                a large image reduced (still covering it); None for full size.
        """
        ...

    def picture(self, data: bytes, max_pixels: int) -> Picture:
        """What a page or the PDF shows: the bytes as sent when browsers read them, else PNG."""
        ...
