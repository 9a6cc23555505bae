"""Hostile and legitimate images built at test time (nothing large is committed)."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

SOS = b"\xff\xda"
DHT = b"\xff\xc4"


def progressive_jpeg(
    size: tuple[int, int], quality: int = 85, mode: str = "RGB", source: bytes | None = None
) -> bytes:
    """A camera-style progressive JPEG (libjpeg's standard scan script, Huffman-optimised) of
    ``source`` resized to ``size``, or of a smooth synthetic picture."""
    width, height = size
    if source is not None:
        image = Image.open(io.BytesIO(source)).convert("RGB").resize(size).convert(mode)
    else:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        rgb = np.stack(
            [
                127 + 100 * np.sin(x / 97.0),
                127 + 100 * np.cos(y / 61.0),
                127 + 100 * np.sin((x + y) / 150.0),
            ],
            axis=-1,
        ).astype(np.uint8)
        image = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, progressive=True, optimize=True)
    return buf.getvalue()


def scan_bomb(repeats: int = 20_000, size: tuple[int, int] = (8000, 5000)) -> bytes:
    """The red team's bomb: a progressive JPEG with one AC scan (and its Huffman table)
    repeated ``repeats`` times before EOI. Within the 40 MP budget; each repeat costs libjpeg
    a pass over the luma coefficients (about 3 ms at 40 MP), whatever the picture: a flat one
    encodes in 0.5 s instead of 5."""
    buf = io.BytesIO()
    Image.new("RGB", size, (180, 120, 110)).save(buf, "JPEG", quality=30, progressive=True)
    data = buf.getvalue()
    sos = [m.start() for m in re.finditer(re.escape(SOS), data)]
    # Scan 1 is the interleaved DC scan; scan 2 is an AC scan of one component. Its table is the
    # last DHT before it, so each repeat decodes with the right code.
    start = data.rfind(DHT, sos[0], sos[1])
    scan = data[start if start != -1 else sos[1] : sos[2]]
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + scan * repeats + data[eoi:]


def zero_png(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A valid PNG of zeros, compressed row by row so the test never holds the decoded image."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" + bytes(width * channels * bit_depth // 8)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_transfer_syntax(dicom: bytes, uid: str | None) -> bytes:
    """The same DICOM file with its Transfer Syntax UID replaced (``None``: removed), written
    as-is: pydicom refuses to save a bogus one itself, but a PACS export or an attacker may."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    group_length = struct.unpack("<I", dicom[140:144])[0]  # (0002,0000) UL, explicit VR LE
    body = dicom[144 + group_length :]
    meta = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True).file_meta
    if uid is None:
        del meta.TransferSyntaxUID
    else:
        meta.TransferSyntaxUID = uid
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_file_meta_info(out, meta, enforce_standard=False)
    return dicom[:132] + out.getvalue() + body


# What a bad Transfer Syntax UID looked like in the red-team corpus, and the status it gets.
BAD_TRANSFER_SYNTAXES = {
    "missing": (None, 400),
    "empty": ("", 400),
    "sop_class": ("1.2.840.10008.5.1.4.1.1.77.1.4", 400),  # VL Photographic Image Storage
    "unknown": ("1.2.3.4.5.6.7", 415),
    "not_a_uid": ("JPEG baseline", 400),
}
