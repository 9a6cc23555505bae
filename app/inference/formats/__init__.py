"""The input formats the service accepts, recognised by content (never by file name).

Adding a format is one module with a class that follows ``base.Format`` and one line in
``FORMATS``; preprocessing, the stored analyses, the pages, the PDF and the API's schema ask
the registry and never name a format themselves.
"""

from __future__ import annotations

from app.inference.formats.base import Format, ImageError, UnsupportedImageError
from app.inference.formats.dicom import Dicom
from app.inference.formats.raster import Jpeg, Png

FORMATS: tuple[Format, ...] = (Jpeg(), Png(), Dicom())


def listing(conjunction: str, notes: bool = False, formats: tuple[Format, ...] = FORMATS) -> str:
    """The formats' labels in words: "JPEG, PNG and DICOM", with ``notes`` "... DICOM (one
    colour frame)"."""
    labels = [f"{f.label} ({f.note})" if notes and f.note else f.label for f in formats]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} {conjunction} {labels[-1]}"


def accept(formats: tuple[Format, ...] = FORMATS) -> str:
    """A file input's ``accept`` attribute for every format."""
    return ",".join(item for f in formats for item in f.accept)


def format_of(data: bytes, formats: tuple[Format, ...] = FORMATS) -> Format:
    """The format ``data`` is in, by its magic bytes; 400 when empty, 415 when none matches."""
    for fmt in formats:
        if fmt.sniff(data):
            return fmt
    if not data:
        raise ImageError("empty upload")
    raise UnsupportedImageError(f"only {listing('and', formats=formats)} images are accepted")
