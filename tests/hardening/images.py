"""Hostile and legitimate images built at test time (nothing large is committed)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import Any

import cv2
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


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples a stored pixel holds


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(ihdr: tuple[int, int, int, int, int], idat: bytes, extra: bytes = b"") -> bytes:
    """A PNG of an IHDR (width, height, depth, colour type, interlace), ``extra`` chunks and
    already compressed image data, whatever the header claims."""
    width, height, depth, colour, interlace = ihdr
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + extra
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _zero_row(width: int, bit_depth: int, colour_type: int) -> bytes:
    return b"\x00" + bytes((width * _PNG_CHANNELS[colour_type] * bit_depth + 7) // 8)


def zero_png(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A valid PNG of zeros, compressed row by row so the test never holds the decoded image."""
    row = _zero_row(width, bit_depth, colour_type)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return _png((width, height, bit_depth, colour_type, 0), idat)


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


def raw_png(
    width: int,
    height: int,
    bit_depth: int = 8,
    colour_type: int = 2,
    extra: bytes = b"",
    rows: bytes | None = None,
    interlace: int = 0,
) -> bytes:
    """A PNG of zeros (or of ``rows``, filter bytes included) with ``extra`` chunks before
    its image data, whatever its header claims."""
    if rows is None:
        rows = _zero_row(width, bit_depth, colour_type) * height
    ihdr = (width, height, bit_depth, colour_type, interlace)
    return _png(ihdr, zlib.compress(rows, 9), extra)


def _with_sof(
    jpeg: bytes, marker: int, precision: int = 8, size: tuple[int, int] | None = None
) -> bytes:
    """The JPEG with its frame header claiming another process, precision or size."""
    data = bytearray(jpeg)
    at = min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if i >= 0)
    data[at + 1], data[at + 4] = marker, precision
    if size is not None:
        struct.pack_into(">HH", data, at + 5, size[1], size[0])
    return bytes(data)


def dicom_file(
    rows: int,
    columns: int,
    pixels: bytes = b"",
    *,
    fragments: list[bytes] | None = None,
    photometric: str = "RGB",
    samples: int = 3,
    bits: int = 8,
    frames: int | None = None,
    planar: int = 0,
    syntax: str | None = None,
    patient: str | None = None,
) -> bytes:
    """A VL Photographic Image DICOM file (pydicom) with the given tags, written as given even
    where they disagree with each other or with the data: ``pixels`` stored as they are, or
    ``fragments`` encapsulated (compressed frames, for a compressed ``syntax``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "XC"
    if patient is not None:
        ds.PatientName = patient
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = planar
    if frames is not None:
        ds.NumberOfFrames = frames
    if fragments is not None:
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def odd_inputs(lesion: bytes, seed: int = 0) -> dict[str, bytes]:
    """Inputs a clinic's exports or an attacker may send beyond the red team's corpus: rare but
    valid encodings, headers that lie, and seeded random damage to a JPEG, a PNG and a DICOM.

    Each must come out as a picture or as a client error with a reason, never a crash or a
    hang. Built from ``lesion`` (a JPEG) at run time.
    """
    import random

    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    rgb = np.array(Image.open(io.BytesIO(lesion)).convert("RGB"))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    image = Image.fromarray(rgb)

    def save(img: Image.Image, fmt: str, **options: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        return buf.getvalue()

    def exif_orientation(value: int) -> bytes:
        exif = image.getexif()
        exif[0x0112] = value
        return save(image, "JPEG", exif=exif.tobytes())

    def transparent(alpha: int) -> bytes:
        return save(
            Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], alpha, np.uint8)])), "PNG"
        )

    def _dicom(photometric: str = "RGB", **tags: Any) -> bytes:
        """The lesion's pixels (unless given) in a DICOM with these tags."""
        tags.setdefault("pixels", rgb.tobytes())
        return dicom_file(*rgb.shape[:2], photometric=photometric, **tags)

    text = b"k\x00" + b"v" * 1000
    out = {
        "CMYK JPEG": save(image.convert("CMYK"), "JPEG"),
        "greyscale JPEG": save(image.convert("L"), "JPEG"),
        "JPEG with a restart marker every block": bytes(
            cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1]
        ),
        "JPEG claiming 12-bit samples": _with_sof(lesion, 0xC1, precision=12),
        "JPEG claiming lossless coding": _with_sof(lesion, 0xC3),
        "JPEG claiming arithmetic coding": _with_sof(lesion, 0xC9),
        "JPEG claiming hierarchical coding": _with_sof(lesion, 0xC5),
        "JPEG with height 0 (DNL)": _with_sof(lesion, 0xC0, size=(600, 0)),
        "JPEG claiming 65535x65535": _with_sof(lesion, 0xC0, size=(65535, 65535)),
        "JPEG claiming 65500x1": _with_sof(lesion, 0xC0, size=(65500, 1)),
        "JPEG claiming precision 16": _with_sof(lesion, 0xC0, precision=16),
        "JPEG with a 60 KB EXIF": save(image, "JPEG", exif=b"Exif\x00\x00" + bytes(60_000)),
        "JPEG with a 1 MB ICC profile": save(image, "JPEG", icc_profile=bytes(1_000_000)),
        "JPEG 3000x2": save(Image.new("RGB", (3000, 2), (128, 90, 80)), "JPEG"),
        "PNG 1x1": save(Image.fromarray(rgb[:1, :1]), "PNG"),
        "PNG 20000x1": raw_png(20000, 1),
        "PNG 2x20000, 16-bit": raw_png(2, 20000, 16),
        "PNG palette without PLTE": raw_png(300, 225, 8, 3),
        "PNG 1-bit": save(image.convert("1"), "PNG"),
        "PNG grey and alpha, opaque": save(image.convert("LA"), "PNG"),
        "PNG RGBA, opaque": transparent(255),
        "PNG RGBA, fully transparent": transparent(0),
        "PNG RGBA, half transparent": transparent(128),
        "PNG 16-bit RGBA, fully transparent": bytes(
            cv2.imencode(
                ".png", np.dstack([bgr, np.zeros(rgb.shape[:2], np.uint8)]).astype(np.uint16) * 257
            )[1]
        ),
        "PNG 16-bit RGB": bytes(cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1]),
        "PNG interlaced, 4000x3000 claimed, one row sent": raw_png(
            4000, 3000, rows=b"\x00", interlace=1
        ),
        "PNG with a bad bit depth": raw_png(300, 225, 7, 2, rows=b"\x00" * 10),
        "PNG with 1,000 text chunks": raw_png(300, 225, extra=_png_chunk(b"tEXt", text) * 1000),
        "PNG with a 20 MB zTXt bomb": raw_png(
            300, 225, extra=_png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(bytes(20_000_000), 9))
        ),
        "PNG with a 20 MB iCCP bomb": raw_png(
            300,
            225,
            extra=_png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(20_000_000), 9)),
        ),
        "DICOM RGB": _dicom(),
        "DICOM RGB, planar": _dicom(
            pixels=np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes(), planar=1
        ),
        "DICOM RGB, 16-bit": _dicom(bits=16, pixels=(rgb.astype("<u2") * 257).tobytes()),
        "DICOM RGB, 32-bit": _dicom(bits=32, pixels=rgb.astype("<u4").tobytes()),
        "DICOM HSV (retired)": _dicom(photometric="HSV"),
        "DICOM YBR_PARTIAL_420 uncompressed": _dicom(photometric="YBR_PARTIAL_420"),
        "DICOM with a blank colour space": _dicom(photometric=""),
        "DICOM 0 frames": _dicom(frames=0),
        "DICOM 1000 frames, one sent": _dicom(frames=1000),
        "DICOM pixel data short": _dicom(pixels=rgb.tobytes()[:1000]),
        "DICOM pixel data twice": _dicom(pixels=rgb.tobytes() * 2),
        "DICOM RLE, garbage": _dicom(syntax=RLELossless, fragments=[bytes(1000)]),
        "DICOM JPEG, cut in two fragments": _dicom(
            "YBR_FULL_422", syntax=JPEGBaseline8Bit, fragments=[lesion[:5000], lesion[5000:]]
        ),
        "DICOM JPEG holding a PNG": _dicom(
            "YBR_FULL_422", syntax=JPEGBaseline8Bit, fragments=[save(image, "PNG")]
        ),
        "DICOM JPEG holding a greyscale JPEG": _dicom(
            "YBR_FULL_422",
            syntax=JPEGBaseline8Bit,
            fragments=[save(image.convert("L"), "JPEG")],
        ),
    }
    dicom = out["DICOM RGB"]
    out["DICOM without its preamble"] = dicom[128:]
    out["DICOM cut inside its header"] = dicom[:200]
    # Seeded random damage: bytes changed, markers inserted, runs deleted.
    rng = random.Random(seed)
    for name, base in (
        ("JPEG", lesion),
        ("PNG", out["PNG RGBA, opaque"]),
        ("DICOM", dicom[:40_000]),
    ):
        for k in range(12):
            data = bytearray(base)
            for _ in range(rng.choice([1, 4, 16, 64])):
                at = rng.randrange(len(data))
                roll = rng.random()
                if roll < 0.6:
                    data[at] = rng.randrange(256)
                elif roll < 0.8:
                    data[at:at] = bytes([0xFF, rng.randrange(256)])
                else:
                    del data[at : at + rng.randrange(1, 64)]
            out[f"{name} damaged at random ({k})"] = bytes(data)
        for k in range(8):  # the header, where a damaged byte changes what is decoded
            data = bytearray(base)
            for _ in range(rng.choice([1, 2, 4])):
                data[rng.randrange(min(800, len(data)))] = rng.randrange(256)
            out[f"{name} header damaged at random ({k})"] = bytes(data)
    return out
