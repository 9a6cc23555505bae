"""DICOM input: one colour frame (a VL photographic / dermoscopic image) to RGB pixels.

Read with pydicom, whose pixel decoders (numpy for uncompressed data, Pillow for JPEG and
JPEG 2000) return RGB for YBR-encoded colour. Only what the model was trained on is accepted:
single-frame colour images. Greyscale (radiology) and multi-frame (video) objects are refused
with a reason, never classified: the model has seen neither.

Uploads are untrusted: every header field is read defensively (a 400, never a 500), the header
before the pixel data is capped (pydicom parses it in Python, about 2 µs an element), and a
compressed frame's own size is checked against the pixel budget before it is decoded.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from app.inference.formats.base import (
    ImageError,
    ImageInfo,
    Picture,
    UnsupportedImageError,
    check_budget,
    encode_png,
    within_budget,
)
from app.inference.formats.jpeg_markers import JPEG_MAGIC, inspect_jpeg

DICOM_MAGIC = b"DICM"  # after the 128-byte preamble (PS3.10 section 7.1)
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
# Header bytes before the pixel data: room for an ICC profile and private tags; a file of
# millions of tiny elements took 3 s to parse at 15 MB.
MAX_HEADER_BYTES = 1 << 20
# The colour spaces whose samples reach the model as RGB: pydicom converts the YBR_FULL pair
# (and the JPEG decoders do, for JPEG frames); any other 3-sample label is refused.
COLOUR_SPACES = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == DICOM_MAGIC


def _transfer_syntax(dataset: Any) -> Any:
    """The file's Transfer Syntax UID, checked to be one; ImageError (4xx) with the reason.

    pydicom raises AttributeError or ValueError for a missing, empty or bogus one (a SOP Class
    UID in its place, an unknown UID) only when the pixels are reached, outside any mapping.
    """
    from pydicom.uid import UID

    meta = getattr(dataset, "file_meta", None)
    raw = meta.get("TransferSyntaxUID") if meta is not None else None
    text = str(raw or "").strip().rstrip("\x00")
    if not text:
        raise ImageError("the DICOM file has no Transfer Syntax UID (0002,0010)")
    syntax = UID(text)
    if not syntax.is_valid:
        raise ImageError(f"the DICOM Transfer Syntax UID {text[:64]!r} is not a valid UID")
    if not syntax.is_transfer_syntax:
        if syntax.name != text:  # a registered UID of another kind, a SOP Class say
            raise ImageError(
                f"the DICOM Transfer Syntax UID is {syntax.name} ({text}), not a transfer syntax"
            )
        raise UnsupportedImageError(f"the DICOM Transfer Syntax UID {text} is unknown here")
    return syntax


def _read(data: bytes, pixels: bool) -> tuple[Any, int, int]:
    """The dataset, checked to be one colour frame; raises ImageError (4xx) for anything else."""
    # Imported here: a JPEG/PNG-only deployment never loads pydicom.
    import pydicom

    header_end = data.find(PIXEL_DATA_TAG, 132)
    if header_end == -1:
        raise ImageError("the DICOM file has no image (no Pixel Data)")
    if header_end > MAX_HEADER_BYTES:
        raise ImageError(f"the DICOM header is over {MAX_HEADER_BYTES >> 20} MB")
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
        samples = int(dataset.get("SamplesPerPixel", 0) or 0)
        kind = str(dataset.get("PhotometricInterpretation", "unknown"))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        width, height = int(dataset.Columns), int(dataset.Rows)
        # pydicom parses an element when it is first read: read here every one used later, so
        # a damaged value (an odd length for a US, say) is this 400, not an error elsewhere.
        dataset.get("BitsAllocated"), dataset.get("BitsStored")
    except (Exception, RecursionError) as exc:  # malformed values surface as many types
        raise ImageError(f"unreadable DICOM header: {type(exc).__name__}") from exc
    _transfer_syntax(dataset)
    if frames != 1:
        raise UnsupportedImageError(
            f"multi-frame DICOM ({frames} frames) is not supported: send one frame"
        )
    if samples != 3:
        raise UnsupportedImageError(
            f"this DICOM image is not colour ({kind}, {samples} sample(s) per pixel): the model "
            "was trained on colour dermoscopic images only"
        )
    if kind not in COLOUR_SPACES:
        # pydicom hands out the samples of any other label (HSV, a blank one) unconverted, and
        # they would be judged as if they were RGB: wrong colours, a confident answer.
        raise UnsupportedImageError(
            f"this DICOM image's colour space {kind[:32]!r} is not one of "
            f"{', '.join(sorted(COLOUR_SPACES))}"
        )
    return dataset, width, height


def _bytes_per_sample(dataset: Any) -> int:
    try:
        bits = int(dataset.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        bits = 8
    return max(1, (bits + 7) // 8)


def dicom_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, bytes per sample) from the header alone, before any pixel is decoded."""
    dataset, width, height = _read(data, pixels=False)
    return width, height, _bytes_per_sample(dataset)


def _check_compressed_frame(dataset: Any, width: int, height: int) -> None:
    """A compressed frame must be what the header says: pydicom decodes the whole embedded
    image before comparing, so a 600x450 header could carry a 169 MP JPEG (850 MB decoded)."""
    from PIL import Image
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except Exception as exc:
        raise ImageError(f"corrupt DICOM pixel data: {type(exc).__name__}") from exc
    if frame.startswith(JPEG_MAGIC):
        inspect_jpeg(frame)  # the same scan limits as a JPEG upload: Pillow decodes it alike
    try:
        with Image.open(io.BytesIO(frame)) as img:  # the header only
            size = img.size
    except Exception as exc:  # a codec Pillow cannot read is one this service cannot decode
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImageError(f"DICOM compression {name} cannot be decoded here") from exc
    if size != (width, height):
        raise ImageError(f"the DICOM frame is {size[0]}x{size[1]}, its header {width}x{height}")


def _check_decoder(syntax: Any) -> None:
    """415 for a compression no installed plugin decodes (JPEG-LS, lossless JPEG, HTJ2K...)."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImageError(f"DICOM compression {name} cannot be decoded here")


def decode_dicom(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the file's one colour frame, within ``max_pixels``."""
    dataset, width, height = _read(data, pixels=True)
    check_budget("dicom", width, height, max_pixels, 3, _bytes_per_sample(dataset))
    syntax = _transfer_syntax(dataset)
    if syntax.is_compressed:
        _check_decoder(syntax)
        _check_compressed_frame(dataset, width, height)
    try:
        pixels = dataset.pixel_array  # YBR is converted to RGB by pydicom's decoders
    except NotImplementedError as exc:  # no decoder for this transfer syntax here
        raise UnsupportedImageError("this DICOM compression cannot be decoded here") from exc
    except (Exception, RecursionError) as exc:
        raise ImageError(f"corrupt DICOM pixel data: {type(exc).__name__}") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageError(f"unexpected DICOM pixel layout {pixels.shape}")
    if pixels.dtype != np.uint8:
        # 12/16-bit colour: scale the stored range to 8 bits, as the training images were.
        top = float(2 ** int(dataset.get("BitsStored", 16)) - 1)
        pixels = np.clip(np.rint(pixels.astype(np.float32) * (255.0 / top)), 0, 255)
    return np.ascontiguousarray(pixels, dtype=np.uint8)


class Dicom:
    """DICOM (PS3.10 file): one colour frame; browsers cannot show it, so pages get PNG."""

    name = "dicom"
    label = "DICOM"
    note = "one colour frame"
    media_type = "application/dicom"
    accept = ("application/dicom", ".dcm")

    def sniff(self, data: bytes) -> bool:
        return is_dicom(data)

    def header(self, data: bytes, max_pixels: int) -> ImageInfo:
        width, height, sample_bytes = dicom_size(data)
        return within_budget(ImageInfo(self.name, width, height, 3, sample_bytes), max_pixels)

    def decode(
        self, data: bytes, target: tuple[int, int] | None, max_pixels: int
    ) -> tuple[np.ndarray, tuple[int, int]]:
        # Parsed once, header and pixels; no EXIF, no reduced decode.
        frame = decode_dicom(data, max_pixels)
        return frame, (frame.shape[1], frame.shape[0])

    def picture(self, data: bytes, max_pixels: int) -> Picture:
        return Picture(encode_png(decode_dicom(data, max_pixels)), "image/png")
