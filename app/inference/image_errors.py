"""Why an upload cannot be analysed, and the size budget checked from a header before any pixel
is decoded: a leaf the image formats and preprocessing share."""

from __future__ import annotations

from app.errors import AppError

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
