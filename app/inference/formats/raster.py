"""JPEG and PNG: the header read by hand (PNG) or from the markers and Pillow's lazy open (JPEG),
the pixels by OpenCV, EXIF-upright; browsers show both as sent."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from app.inference.formats.base import (
    ImageError,
    ImageInfo,
    ImageTooLargeError,
    Picture,
    within_budget,
)
from app.inference.formats.jpeg_markers import JPEG_MAGIC, inspect_jpeg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples a decoded pixel holds (a palette expands to RGB).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PNG_ALPHA_TYPES = {4, 6}  # grey + alpha, RGBA; the others may carry a tRNS chunk instead
# More of the picture than this not fully opaque and it is refused: a viewer shows the page
# behind those pixels, the model would judge the colours stored under them. Below it (rounded
# or anti-aliased corners of an export) the alpha is dropped, as the upstream app did.
MAX_TRANSPARENT_SHARE = 0.05


def reduced_flag(info: ImageInfo, target: tuple[int, int]) -> int:
    """The OpenCV decode flag: reduced (1/2, 1/4) for a JPEG large enough, else full size."""
    # libjpeg's DCT scaling decodes at 1/2 or 1/4 almost for free; only when the reduced
    # image still covers the model input, so INTER_AREA keeps averaging real pixels.
    if info.format != "jpeg":
        return cv2.IMREAD_COLOR
    # The header gives the stored size; an EXIF rotation (orientations 5-8) swaps it after
    # decoding, so the reduced image must cover the input either way round.
    ratio = min(info.width, info.height) / max(target)
    if ratio >= 4:
        return cv2.IMREAD_REDUCED_COLOR_4
    if ratio >= 2:
        return cv2.IMREAD_REDUCED_COLOR_2
    return cv2.IMREAD_COLOR


def _as_rgb(flag: int) -> int:
    """The same decode with the codec writing RGB itself (IMREAD_COLOR_RGB, OpenCV >= 4.11).

    IMREAD_COLOR and the IMREAD_REDUCED_COLOR_n flags are the BGR colour bit plus a scale bit;
    the colour bit is swapped for the RGB one. Same pixels as BGR + cvtColor, with one pass and
    one GIL hand-off fewer per image (A/B at concurrency 8: +1.6 % throughput).
    """
    return (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB


class _Raster:
    """What JPEG and PNG share: OpenCV decodes both, browsers show both as sent."""

    name = ""
    label = ""
    note = ""
    media_type = ""
    accept: tuple[str, ...] = ()
    magic = b""

    def sniff(self, data: bytes) -> bool:
        return data.startswith(self.magic)

    def header(self, data: bytes, max_pixels: int) -> ImageInfo:
        raise NotImplementedError

    def decode(
        self, data: bytes, target: tuple[int, int] | None, max_pixels: int
    ) -> tuple[np.ndarray, tuple[int, int]]:
        return self._pixels(data, self.header(data, max_pixels), target)

    def _pixels(
        self, data: bytes, info: ImageInfo, target: tuple[int, int] | None
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """The decode itself, of an image whose header passed the budgets."""
        flag = reduced_flag(info, target) if target else cv2.IMREAD_COLOR
        # IMREAD_COLOR(_RGB) and the REDUCED variants apply the EXIF orientation tag, for JPEG
        # and PNG (seen with OpenCV 5.0; tests/unit/test_preprocess.py checks all 8 against PIL).
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _as_rgb(flag))
        if rgb is None:
            raise ImageError(f"corrupt or truncated {info.format} image")
        return rgb, (info.width, info.height)

    def picture(self, data: bytes, max_pixels: int) -> Picture:
        return Picture(data, self.media_type)


class Jpeg(_Raster):
    name = "jpeg"
    label = "JPEG"
    media_type = "image/jpeg"
    accept = ("image/jpeg",)
    magic = JPEG_MAGIC

    def header(self, data: bytes, max_pixels: int) -> ImageInfo:
        structure = inspect_jpeg(data)  # scan and segment limits, from the markers
        try:
            with Image.open(io.BytesIO(data)) as img:  # lazy: parses the header only
                width, height = img.size
        except Image.DecompressionBombError as exc:
            # PIL refuses > 2x its own MAX_IMAGE_PIXELS at open(): still a bomb, so 413 not 400.
            raise ImageTooLargeError("jpeg image is far over the pixel budget") from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageError("unreadable jpeg header") from exc
        bytes_per_sample = 2 if structure.precision > 8 else 1
        info = ImageInfo(self.name, width, height, structure.components, bytes_per_sample)
        return within_budget(info, max_pixels)


class Png(_Raster):
    name = "png"
    label = "PNG"
    media_type = "image/png"
    accept = ("image/png",)
    magic = PNG_MAGIC

    def header(self, data: bytes, max_pixels: int) -> ImageInfo:
        # IHDR is always the first chunk: its size is at fixed offsets, no parser needed.
        if len(data) < 26 or data[12:16] != b"IHDR":
            raise ImageError("unreadable png header")
        width, height = struct.unpack(">II", data[16:24])
        bits, colour = data[24], data[25]
        info = ImageInfo(
            self.name, width, height, _PNG_CHANNELS.get(colour, 4), 2 if bits > 8 else 1
        )
        return within_budget(info, max_pixels)

    def decode(
        self, data: bytes, target: tuple[int, int] | None, max_pixels: int
    ) -> tuple[np.ndarray, tuple[int, int]]:
        info = self.header(data, max_pixels)  # the budgets, before either decode
        if may_be_transparent(data):
            refuse_transparent(data)
        return self._pixels(data, info, target)


def may_be_transparent(data: bytes) -> bool:
    """An alpha channel (colour types 4, 6) or a tRNS chunk before the image data."""
    if len(data) > 25 and data[25] in _PNG_ALPHA_TYPES:
        return True
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        offset += 12 + length
    return False


def refuse_transparent(data: bytes) -> None:
    """400 when over MAX_TRANSPARENT_SHARE of the picture is not fully opaque.

    Decoded with its alpha first and let go before the colour decode, so the two never hold
    memory at once (a fully opaque RGBA export costs a second decode, nothing more).
    """
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError("corrupt or truncated png image")
    if pixels.ndim != 3 or pixels.shape[2] not in (2, 4):
        return  # the decoder dropped the transparency: nothing hidden from the model
    alpha = pixels[..., -1]
    opaque = 65535 if alpha.dtype == np.uint16 else 255  # PNG alpha is 8 or 16 bits
    share = float(np.count_nonzero(alpha < opaque)) / alpha.size
    del pixels, alpha
    if share > MAX_TRANSPARENT_SHARE:
        raise ImageError(
            f"{share:.0%} of the image is transparent: the model would judge colours that a "
            "viewer does not show; send the photo without transparency"
        )
