"""A JPEG's structure read from its markers before any pixel is decoded: size, scans, segments,
so a file whose decode would cost far more than its picture is refused first."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.inference.formats.base import ImageError

JPEG_MAGIC = b"\xff\xd8\xff"

# JPEG structure limits, counted from the bytes before decoding. libjpeg makes one pass over a
# component's coefficients per scan, so a progressive file that repeats one small scan thousands
# of times costs minutes (about 3 ms a scan at 40 MP) for no more picture. Measured maxima:
# every HAM10000 image (10,015) and the 600x450 originals are baseline with 1 scan; Pillow and
# OpenCV progressive JPEGs (libjpeg's standard script) have 10 scans (RGB), 6 (grey), 18 (CMYK),
# at most 6 per component; the JPEG frames of pydicom's DICOM test files have 1 scan and at most
# 9 marker segments. The limits leave room for other encoders (mozjpeg, jpegli, cameras).
MAX_JPEG_SCANS = 64
MAX_JPEG_SCANS_PER_COMPONENT = 32
# Marker segments before the end of the image (APPn, DQT, DHT, SOS...): cameras write a few
# dozen; parsing millions of tiny ones would cost more than the decode they precede.
MAX_JPEG_SEGMENTS = 1024


@dataclass(frozen=True, slots=True)
class JpegStructure:
    """What a JPEG's marker segments say, read without decoding any pixel."""

    width: int
    height: int
    components: int
    precision: int  # bits per sample: 8, 12 or 16
    progressive: bool
    scans: int  # SOS markers
    most_scans_per_component: int


# A marker is 0xFF then a code that is not 0x00 (a stuffed 0xFF inside entropy-coded data), not
# RST0-7 (inside a scan) and not 0xFF (fill bytes before a marker: the last 0xFF is the one that
# matches). libjpeg reads markers the same way, skipping stray bytes between segments, so this
# walk sees the segments the decoder sees. Two bytes, never ``\xff+``: a search for that over a
# long run of 0xFF backtracks quadratically (a 1 MB run would take hours).
_JPEG_MARKER = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")
_JPEG_STANDALONE = {0x01, 0xD8}  # TEM, SOI: no length field
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def inspect_jpeg(data: bytes) -> JpegStructure:
    """Walk a JPEG's marker segments (skipping entropy-coded data) up to EOI, without decoding.

    Raises ImageError (400) for a structure that costs more to decode than a picture can be
    worth: too many scans in all or for one component, or too many marker segments.
    """
    pos, scans, segments = 2, 0, 0
    per_component: dict[int, int] = {}
    frame: tuple[int, int, int, int, bool] | None = None  # width, height, components, bits, prog
    while (match := _JPEG_MARKER.search(data, pos)) is not None:
        code, pos = match.group(1)[0], match.end()
        if code == _JPEG_EOI:
            break
        if code in _JPEG_STANDALONE:
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageError(f"the jpeg has over {MAX_JPEG_SEGMENTS} marker segments")
        if pos + 2 > len(data):
            break  # truncated: the decoder reports it
        length = int.from_bytes(data[pos : pos + 2], "big")
        body = data[pos + 2 : pos + length]
        if code in _JPEG_SOF and frame is None and len(body) >= 6:
            frame = (
                int.from_bytes(body[3:5], "big"),
                int.from_bytes(body[1:3], "big"),
                body[5],
                body[0],
                code in _JPEG_PROGRESSIVE,
            )
        elif code == _JPEG_SOS and body:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(
                    f"the jpeg has over {MAX_JPEG_SCANS} scans; encoders write at most a few "
                    "dozen, and each costs a pass over the image"
                )
            for i in range(min(body[0], (len(body) - 1) // 2)):
                component = body[1 + 2 * i]
                per_component[component] = per_component.get(component, 0) + 1
                if per_component[component] > MAX_JPEG_SCANS_PER_COMPONENT:
                    raise ImageError(
                        f"the jpeg has over {MAX_JPEG_SCANS_PER_COMPONENT} scans of one "
                        "component; encoders write at most a dozen"
                    )
        pos += max(length, 2)
    if frame is None:
        raise ImageError("unreadable jpeg header")
    width, height, components, precision, progressive = frame
    return JpegStructure(
        width,
        height,
        components,
        precision,
        progressive,
        scans,
        max(per_component.values(), default=0),
    )
