"""Image bytes -> model input. The one preprocessing path for serving, evaluation,
calibration and training data, so all of them see exactly the same pixels.

Contract: decode (EXIF orientation applied), centre-crop to the model's aspect ratio,
resize with INTER_AREA, RGB order, float32 pixels in [0, 255]; the model's own metadata
(``input_scale``/``input_offset``) maps them to what its first layer expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.inference.field_of_view import disc_box, fill_outside
from app.inference.formats import format_of
from app.inference.formats.base import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from app.inference.formats.base import ImageError as ImageError
from app.inference.formats.base import ImageInfo as ImageInfo
from app.inference.formats.base import ImageTooLargeError as ImageTooLargeError
from app.inference.formats.base import UnsupportedImageError as UnsupportedImageError
from app.inference.formats.base import encode_png as encode_png
from app.inference.formats.jpeg_markers import MAX_JPEG_SCANS as MAX_JPEG_SCANS
from app.inference.formats.jpeg_markers import inspect_jpeg as inspect_jpeg
from app.inference.spec import ModelSpec


def sniff_format(data: bytes) -> str:
    """The name of the registered format ``data`` is in, by magic bytes; never the file name."""
    return format_of(data).name


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read format and size from the header alone, refusing decompression bombs before decode."""
    return format_of(data).header(data, max_pixels)


def decode_image(
    data: bytes,
    target: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduced: bool = True,
) -> np.ndarray:
    """Decode an upload in any registered format to an RGB uint8 array (H, W, 3), upright.

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
    return format_of(data).decode(data, target if reduced else None, max_pixels)


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


# HAM10000's 200x150 copies are baseline JPEGs at libjpeg quality 75 (their quantisation tables
# match the standard ones scaled to 75 exactly). An upload resampled down to that resolution is
# compressed the same way, so the model sees the artefacts it was trained with: on the 44
# full-resolution originals the distribution check refused 12 without it and 1 with it, and the
# top class matched the stored copy's for 41 instead of 39 (3 x MobileNetV2-0.35 at 200x150).
STORED_JPEG_QUALITY = 75


def as_stored(rgb: np.ndarray) -> np.ndarray:
    """A JPEG round trip at the training copies' quality (4:2:0, as they were)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, STORED_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR_RGB))


def resize_rgb(
    rgb: np.ndarray, size: tuple[int, int], via: tuple[int, int] | None = None
) -> np.ndarray:
    """Centre-crop to the aspect of ``size`` (width, height) and resize with INTER_AREA.

    Args:
        via: (width, height) the training images were stored at: a larger upload is resampled
            to it and JPEG-compressed as they were (``as_stored``), then resized to ``size``.
            An image already at that size is used as it is.
    """
    image = center_crop_to_aspect(rgb, size[0] / size[1])
    if via and via[0] >= size[0] and image.shape[1] > via[0]:
        image = as_stored(cv2.resize(image, via, interpolation=cv2.INTER_AREA))
    if image.shape[1] != size[0] or image.shape[0] != size[1]:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
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


def crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) that ``center_crop_to_aspect`` keeps of a width x height image."""
    if abs(width / height - aspect) < 0.01:
        return 0, 0, width, height
    if width / height > aspect:
        kept = round(height * aspect)
        return (width - kept) // 2, 0, kept, height
    kept = round(width / aspect)
    return 0, (height - kept) // 2, width, kept


def upright(sent: tuple[int, int], decoded: np.ndarray) -> tuple[int, int]:
    """The upload's (width, height) as shown: an EXIF rotation of 90 degrees swaps the header's."""
    width, height = sent
    if width != height and (decoded.shape[1] > decoded.shape[0]) != (width > height):
        return height, width
    return width, height


@dataclass(frozen=True, slots=True)
class Prepared:
    """One upload on its way to the model, each stage kept for whoever needs it."""

    rgb: np.ndarray  # decoded, EXIF-upright, possibly reduced; a small disc's box of it only
    size: tuple[int, int]  # (width, height) as sent
    resized: np.ndarray  # uint8 RGB at the model's input size (the gate measures it too)
    tensor: np.ndarray  # float32 model input, no batch axis
    filled: float = 0.0  # share of ``resized`` that was a round field of view's black outside
    # (x, y, w, h) in the upload's upright pixels that ``rgb`` shows, when a small round field
    # of view was cropped to (field_of_view.disc_box); None: the whole picture
    box: tuple[int, int, int, int] | None = None

    @property
    def seen_size(self) -> tuple[int, int]:
        """(width, height) in the upload's pixels of what the model's view is taken from."""
        return self.box[2:] if self.box else self.size

    def view_crop(self, aspect: float) -> tuple[int, int, int, int]:
        """(x, y, w, h) in the upload's upright pixels of the centre crop the model saw."""
        if self.box is None:
            return crop_box(*upright(self.size, self.rgb), aspect)
        x, y, w, h = self.box
        cx, cy, cw, ch = crop_box(w, h, aspect)
        return x + cx, y + cy, cw, ch


def prepare(
    data: bytes,
    spec: ModelSpec,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduced: bool = True,
    field_of_view: bool = True,
) -> Prepared:
    """Image bytes -> every stage of the one preprocessing path (serving, the gate, explanations,
    evaluation), so all of them see exactly the same pixels. ``field_of_view=False`` leaves a
    round field of view as sent, neither cropped nor filled (only to measure what that does)."""
    rgb, size = decode_sized(data, decode_target(spec), max_pixels, reduced)
    box = None
    found = disc_box(rgb, spec.input_size[0] / spec.input_size[1]) if field_of_view else None
    if found is not None:  # a dermatoscope on a phone: a small disc in black, cropped to
        x, y, w, h = found
        scale = upright(size, rgb)[0] / rgb.shape[1]  # a reduced decode is smaller than sent
        box = (round(x * scale), round(y * scale), round(w * scale), round(h * scale))
        rgb = rgb[y : y + h, x : x + w]
    resized = resize_rgb(rgb, spec.input_size, spec.resample_via)
    resized, filled = fill_outside(resized) if field_of_view else (resized, 0.0)
    return Prepared(rgb, size, resized, to_model_input(resized, spec), filled, box)


def preprocess(
    data: bytes, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS, reduced: bool = True
) -> np.ndarray:
    """Image bytes -> one float32 model input (no batch axis). The function everything shares."""
    return prepare(data, spec, max_pixels, reduced).tensor
