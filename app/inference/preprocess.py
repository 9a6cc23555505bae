"""Image bytes -> model input. The one preprocessing path for serving, evaluation,
calibration and training data, so all of them see exactly the same pixels.

Contract: decode (EXIF orientation applied), centre-crop to the model's aspect ratio,
resize with INTER_AREA, RGB order, float32 pixels in [0, 255]; the model's own metadata
(``input_scale``/``input_offset``) maps them to what its first layer expects.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from app.inference.dicom import decode_dicom, dicom_size, is_dicom
from app.inference.image_errors import BUDGET_BYTES_PER_PIXEL as BUDGET_BYTES_PER_PIXEL
from app.inference.image_errors import ImageError as ImageError
from app.inference.image_errors import ImageTooLargeError as ImageTooLargeError
from app.inference.image_errors import UnsupportedImageError as UnsupportedImageError
from app.inference.image_errors import check_budget as check_budget
from app.inference.jpeg import JPEG_MAGIC as JPEG_MAGIC
from app.inference.jpeg import MAX_JPEG_SCANS as MAX_JPEG_SCANS
from app.inference.jpeg import MAX_JPEG_SCANS_PER_COMPONENT as MAX_JPEG_SCANS_PER_COMPONENT
from app.inference.jpeg import MAX_JPEG_SEGMENTS as MAX_JPEG_SEGMENTS
from app.inference.jpeg import JpegStructure as JpegStructure
from app.inference.jpeg import inspect_jpeg as inspect_jpeg
from app.inference.spec import ModelSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # "jpeg" | "png" | "dicom"
    width: int
    height: int
    channels: int = 3  # as stored: 1 grey, 2 grey + alpha, 3 colour, 4 RGBA or CMYK
    bytes_per_sample: int = 1  # 2 for 12- and 16-bit samples


def sniff_format(data: bytes) -> str:
    """Identify JPEG, PNG or DICOM by magic bytes; the file name is never trusted."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if is_dicom(data):
        return "dicom"
    if not data:
        raise ImageError("empty upload")
    raise UnsupportedImageError("only JPEG, PNG and DICOM images are accepted")


# PNG colour type -> samples a decoded pixel holds (a palette expands to RGB).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read format and size from the header alone, refusing decompression bombs before decode."""
    fmt = sniff_format(data)
    if fmt == "dicom":
        width, height, sample_bytes = dicom_size(data)
        check_budget(fmt, width, height, max_pixels, 3, sample_bytes)
        return ImageInfo(fmt, width, height, 3, sample_bytes)
    if fmt == "png":
        # IHDR is always the first chunk: its size is at fixed offsets, no parser needed.
        if len(data) < 26 or data[12:16] != b"IHDR":
            raise ImageError("unreadable png header")
        width, height = struct.unpack(">II", data[16:24])
        bits, colour = data[24], data[25]
        info = ImageInfo(fmt, width, height, _PNG_CHANNELS.get(colour, 4), 2 if bits > 8 else 1)
        check_budget(fmt, width, height, max_pixels, info.channels, info.bytes_per_sample)
        return info
    structure = inspect_jpeg(data)
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: parses the header only
            width, height = img.size
    except Image.DecompressionBombError as exc:
        # PIL refuses > 2x its own MAX_IMAGE_PIXELS at open(): still a bomb, so 413 not 400.
        raise ImageTooLargeError(f"{fmt} image is far over the pixel budget") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"unreadable {fmt} header") from exc
    info = ImageInfo(fmt, width, height, structure.components, 2 if structure.precision > 8 else 1)
    check_budget(fmt, width, height, max_pixels, info.channels, info.bytes_per_sample)
    return info


def _reduced_flag(info: ImageInfo, target: tuple[int, int]) -> int:
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


def decode_image(
    data: bytes,
    target: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduced: bool = True,
) -> np.ndarray:
    """Decode JPEG/PNG/DICOM bytes in memory to an RGB uint8 array (H, W, 3), EXIF-upright.

    Args:
        target: (width, height) the image will be resized to; lets large JPEGs decode reduced.
    """
    return decode_sized(data, target, max_pixels, reduced)[0]


def decode_sized(
    data: bytes,
    target: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduced: bool = True,
) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image`` plus the (width, height) the upload was sent at: a JPEG decoded reduced
    is smaller than that, and the header is parsed once."""
    if is_dicom(data):  # parsed once, header and pixels; no EXIF, no reduced decode
        frame = decode_dicom(data, max_pixels)
        return frame, (frame.shape[1], frame.shape[0])
    info = read_header(data, max_pixels)
    flag = _reduced_flag(info, target) if (target and reduced) else cv2.IMREAD_COLOR
    # IMREAD_COLOR(_RGB) and the REDUCED variants apply the EXIF orientation tag, for JPEG and
    # PNG (seen with OpenCV 5.0; tests/unit/test_preprocess.py checks all 8 against PIL).
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _as_rgb(flag))
    if rgb is None:
        raise ImageError(f"corrupt or truncated {info.format} image")
    return rgb, (info.width, info.height)


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


def center_crop_to_aspect(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """Crop the centre to width/height == aspect, so phone photos are not squashed."""
    h, w = rgb.shape[:2]
    if abs(w / h - aspect) < 0.01:
        return rgb
    if w / h > aspect:
        new_w = round(h * aspect)
        x0 = (w - new_w) // 2
        return rgb[:, x0 : x0 + new_w]
    new_h = round(w / aspect)
    y0 = (h - new_h) // 2
    return rgb[y0 : y0 + new_h]


def resize_rgb(
    rgb: np.ndarray, size: tuple[int, int], via: tuple[int, int] | None = None
) -> np.ndarray:
    """Centre-crop to the aspect of ``size`` (width, height) and resize with INTER_AREA.

    Args:
        via: (width, height) to pass through first when larger than ``size``: the resolution
            the training images were stored at, so uploads are resampled as they were.
    """
    image = center_crop_to_aspect(rgb, size[0] / size[1])
    steps = [via, size] if via and via[0] > size[0] and image.shape[1] > via[0] else [size]
    for step in steps:
        if image.shape[1] != step[0] or image.shape[0] != step[1]:
            image = cv2.resize(image, step, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def to_model_input(resized_rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 RGB (H, W, 3) at model size -> float32 tensor of one image in the model's layout."""
    x = resized_rgb.astype(np.float32)
    if spec.input_scale != 1.0 or spec.input_offset != 0.0:
        x = x * np.float32(spec.input_scale) + np.float32(spec.input_offset)
    if spec.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
    return x


# The least a JPEG decodes to (DCT scaling), whatever the model: the intended-use gate measures a
# 160x120 view of the decoded image, which a 28x28 model's reduced decode would leave upsampled.
MIN_DECODE = (160, 120)


def decode_target(spec: ModelSpec) -> tuple[int, int]:
    """(width, height) an upload is decoded to at least: the model's need and MIN_DECODE."""
    model = spec.resample_via or spec.input_size
    return max(model[0], MIN_DECODE[0]), max(model[1], MIN_DECODE[1])


@dataclass(frozen=True, slots=True)
class Prepared:
    """One upload on its way to the model, each stage kept for whoever needs it."""

    rgb: np.ndarray  # decoded, EXIF-upright, possibly reduced
    size: tuple[int, int]  # (width, height) as sent
    resized: np.ndarray  # uint8 RGB at the model's input size (the gate measures it too)
    tensor: np.ndarray  # float32 model input, no batch axis


def prepare(
    data: bytes, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS, reduced: bool = True
) -> Prepared:
    """Image bytes -> every stage of the one preprocessing path (serving, the gate, explanations,
    evaluation), so all of them see exactly the same pixels."""
    rgb, size = decode_sized(data, decode_target(spec), max_pixels, reduced)
    resized = resize_rgb(rgb, spec.input_size, spec.resample_via)
    return Prepared(rgb, size, resized, to_model_input(resized, spec))


def preprocess(
    data: bytes, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS, reduced: bool = True
) -> np.ndarray:
    """Image bytes -> one float32 model input (no batch axis). The function everything shares."""
    return prepare(data, spec, max_pixels, reduced).tensor
