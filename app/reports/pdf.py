"""build_report(ReportData) -> PDF bytes, rendered with borb (AGPL-3.0 or commercial licence).

borb 3.0.9 posts usage statistics to a remote endpoint and, on its first write on the main
thread, replaces the SIGINT/SIGTERM handlers. Opting out here, at import, before any write,
prevents both; tests prove it (no non-loopback socket, SIGTERM handler unchanged).
"""

from __future__ import annotations

import datetime as dt
import io

from borb.pdf import UsageStatistics

UsageStatistics.opt_out()

from borb.pdf import (  # noqa: E402  (opt out before anything else of borb runs)
    PDF,
    Document,
    FixedColumnWidthTable,
    Heading,
    HexColor,
    HorizontalBreak,
    Image,
    Page,
    Paragraph,
    ProgressBar,
    SingleColumnLayout,
)
from PIL import Image as PILImage  # noqa: E402

from app.inference.formats import format_of  # noqa: E402
from app.inference.preprocess import DEFAULT_MAX_PIXELS, read_header  # noqa: E402
from app.reports.data import ReportData  # noqa: E402

APP_NAME = "Skin Lesion Second Opinion"
DISCLAIMER = (
    "Disclaimer: this result is a second opinion, not a diagnosis. It was produced by a "
    "machine-learning model and may be wrong. Always have suspicious lesions examined by a "
    "qualified dermatologist."
)
RISK_COLOURS = {"malignant": "#B02A37", "pre-cancerous": "#B35C00", "benign": "#146C43"}


def _thumbnail(data: bytes, box: tuple[int, int] = (160, 120)) -> PILImage.Image | None:
    """The image for the report, or None when PIL cannot decode it.

    OpenCV repairs some damaged JPEG data silently (and so classifies it); PIL refuses it.
    """
    try:
        # What a page shows: the upload as sent, or its format's pixels as PNG (DICOM).
        shown = format_of(data).picture(data, DEFAULT_MAX_PIXELS).data
        # The same structural and pixel bounds as an upload (a JPEG scan bomb is refused
        # from its markers), then a JPEG decoded at reduced size (DCT scaling).
        read_header(shown, DEFAULT_MAX_PIXELS)
        img: PILImage.Image = PILImage.open(io.BytesIO(shown))
        img.draft("RGB", box)
        img = img.convert("RGB")
    except (OSError, SyntaxError, ValueError):  # ImageError is a ValueError
        return None
    img.thumbnail(box)
    return img


def _printable(text: str) -> str:
    """``text`` in the standard-14 fonts' Latin-1, with "?" for each character they lack.

    An embedded Unicode font (DejaVu Sans) was measured at 470 KB per report and 1.1 s to load,
    and still lacks CJK; the report says instead when a name was not printed in full.
    """
    return text.encode("latin-1", "replace").decode("latin-1")


def _breakable(text: str, size: int) -> str:
    """Split words too wide for the column: borb cannot wrap inside a word and fails the whole
    report on one (a 100-character patient ID without spaces)."""
    limit = int(460 / size)  # characters of the widest glyph (0.94 em) that fit 477 pt
    return " ".join(
        " ".join(word[i : i + limit] for i in range(0, len(word), limit)) or word
        for word in text.split(" ")
    )


def _p(text: str, size: int = 10, colour: str = "#212529", bold: bool = False) -> Paragraph:
    font = "Helvetica-Bold" if bold else "Helvetica"
    text = _breakable(_printable(text), size)
    return Paragraph(text, font=font, font_size=size, font_color=HexColor(colour))


def build_report(data: ReportData) -> bytes:
    """Render the one-page PDF report; pure function of ``data`` (call it off the event loop)."""
    doc = Document()
    page = Page()
    doc.append_page(page)
    layout = SingleColumnLayout(page)
    layout.append_layout_element(Heading(f"{APP_NAME}: analysis report", font_size=16))
    # First, so that however long the rest runs, the first page says what this result is.
    layout.append_layout_element(_p(DISCLAIMER, 9, "#6C757D"))
    when = data.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    layout.append_layout_element(_p(f"Patient: {data.patient}", 11, bold=True))
    layout.append_layout_element(_p(f"Date and time: {when}    Clinician: {data.clinician}"))
    if _printable(data.patient) != data.patient:
        layout.append_layout_element(
            _p(
                "Some characters of this name cannot be printed and show as '?'; "
                "the analysis page shows it in full.",
                9,
                "#B35C00",
            )
        )

    if data.outside_intended_use:
        layout.append_layout_element(
            _p(
                "OUTSIDE INTENDED USE: analysed at the clinician's request although the "
                f"intended-use check refused the image. {data.outside_intended_use} "
                "Treat this result as unreliable.",
                10,
                "#B02A37",
                bold=True,
            )
        )

    thumb = _thumbnail(data.image)
    if thumb is None:
        layout.append_layout_element(
            _p(
                "The stored image is damaged and could not be shown. The result below was "
                "computed from a partly unreadable image and may be unreliable.",
                11,
                "#B02A37",
                bold=True,
            )
        )
    elif data.explanation_png is None:
        layout.append_layout_element(Image(thumb, size=(thumb.width, thumb.height)))
    else:
        # The image and, beside it, where the model found its evidence, at the same size.
        heat = PILImage.open(io.BytesIO(data.explanation_png)).convert("RGB")
        heat.thumbnail((thumb.width, thumb.height))
        pair = FixedColumnWidthTable(number_of_rows=2, number_of_columns=2)
        pair.append_layout_element(Image(thumb, size=(thumb.width, thumb.height)))
        pair.append_layout_element(Image(heat, size=(heat.width, heat.height)))
        pair.append_layout_element(_p("The image", 8, "#495057"))
        pair.append_layout_element(_p("Where the model looked (Layer-CAM)", 8, "#495057"))
        pair.no_borders()
        layout.append_layout_element(pair)
        layout.append_layout_element(_p(data.explanation_caveat, 7, "#495057"))

    colour = RISK_COLOURS.get(data.risk_group, "#212529")
    layout.append_layout_element(
        _p(
            f"Predicted class: {data.predicted_name} ({data.predicted_class}), "
            f"confidence {data.confidence * 100:.1f}%",
            12,
            colour,
            bold=True,
        )
    )
    # A malignant class advises a dermatologist even below the melanoma threshold (whose own
    # line says so when flagged); on this line, so the page never runs over.
    advise = data.risk_group == "malignant" and not data.melanoma_flag
    risk = f"Risk group: {data.risk_group}"
    if advise:
        risk += ". This result advises seeing a dermatologist promptly."
    layout.append_layout_element(_p(risk, 10, colour, bold=advise))

    rows = len(data.probabilities) + 1
    table = FixedColumnWidthTable(number_of_rows=rows, number_of_columns=4)
    for header in ("Class", "Name", "Probability", ""):
        table.append_layout_element(_p(header, 9, bold=True))
    for label, prob in data.probabilities.items():
        table.append_layout_element(_p(label, 9))
        table.append_layout_element(_p(data.label_names.get(label, label), 8))
        table.append_layout_element(_p(f"{prob * 100:.2f}%", 9))
        table.append_layout_element(ProgressBar(value=round(prob * 100), max_value=100))
    table.set_padding_on_all_cells(1, 3, 1, 3)
    layout.append_layout_element(table)

    threshold = (
        f"{data.melanoma_threshold:.3f}" if data.melanoma_threshold is not None else "top class"
    )
    flag = "YES: see a dermatologist promptly" if data.melanoma_flag else "no"
    layout.append_layout_element(
        _p(f"Melanoma flag: {flag} (threshold {threshold})", 10, bold=data.melanoma_flag)
    )
    layout.append_layout_element(HorizontalBreak())
    layout.append_layout_element(
        _p(
            f"Model: {data.model_name}, version {data.model_version}.    "
            f"Report id: {data.report_id}",
            8,
            "#495057",
        )
    )
    layout.append_layout_element(_p(f"Model sha256: {data.model_sha256}", 7, "#495057"))
    layout.append_layout_element(_p(f"Image sha256: {data.image_sha256}", 7, "#495057"))

    # borb counts documents and prints a licence nag to stdout every 64, opted out or not;
    # a server's stdout is its log, so keep the counter at zero.
    UsageStatistics._UsageStatistics__UNLICENSED_DOCS_COUNT = 0
    out = io.BytesIO()  # an open file object silently gets 0 bytes in borb 3.0.9
    PDF.write(what=doc, where_to=out)
    return out.getvalue()
