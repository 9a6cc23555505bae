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

from app.reports.data import ReportData  # noqa: E402

APP_NAME = "Skin Lesion Second Opinion"
DISCLAIMER = (
    "Disclaimer: this result is a second opinion, not a diagnosis. It was produced by a "
    "machine-learning model and may be wrong. Always have suspicious lesions examined by a "
    "qualified dermatologist."
)
RISK_COLOURS = {"malignant": "#B02A37", "pre-cancerous": "#B35C00", "benign": "#146C43"}


def _thumbnail(data: bytes, box: tuple[int, int] = (220, 165)) -> PILImage.Image | None:
    """The image for the report, or None when PIL cannot decode it.

    OpenCV repairs some damaged JPEG data silently (and so classifies it); PIL refuses it.
    """
    try:
        img = PILImage.open(io.BytesIO(data)).convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return None
    img.thumbnail(box)
    return img


def _p(text: str, size: int = 10, colour: str = "#212529", bold: bool = False) -> Paragraph:
    # The standard-14 fonts cover Latin-1 only; never fail a report on an exotic name.
    text = text.encode("latin-1", "replace").decode("latin-1")
    font = "Helvetica-Bold" if bold else "Helvetica"
    return Paragraph(text, font=font, font_size=size, font_color=HexColor(colour))


def build_report(data: ReportData) -> bytes:
    """Render the one-page PDF report; pure function of ``data`` (call it off the event loop)."""
    doc = Document()
    page = Page()
    doc.append_page(page)
    layout = SingleColumnLayout(page)
    layout.append_layout_element(Heading(f"{APP_NAME}: analysis report", font_size=16))
    when = data.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    layout.append_layout_element(_p(f"Patient: {data.patient}", 11, bold=True))
    layout.append_layout_element(_p(f"Date and time: {when}    Clinician: {data.clinician}"))

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
    else:
        layout.append_layout_element(Image(thumb, size=(thumb.width, thumb.height)))

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
    layout.append_layout_element(_p(f"Risk group: {data.risk_group}", 10, colour))

    rows = len(data.probabilities) + 1
    table = FixedColumnWidthTable(number_of_rows=rows, number_of_columns=4)
    for header in ("Class", "Name", "Probability", ""):
        table.append_layout_element(_p(header, 9, bold=True))
    for label, prob in data.probabilities.items():
        table.append_layout_element(_p(label, 9))
        table.append_layout_element(_p(data.label_names.get(label, label), 8))
        table.append_layout_element(_p(f"{prob * 100:.2f}%", 9))
        table.append_layout_element(ProgressBar(value=round(prob * 100), max_value=100))
    table.set_padding_on_all_cells(2, 3, 2, 3)
    layout.append_layout_element(table)

    threshold = (
        f"{data.melanoma_threshold:.3f}" if data.melanoma_threshold is not None else "top class"
    )
    flag = "YES: see a dermatologist promptly" if data.melanoma_flag else "no"
    layout.append_layout_element(
        _p(f"Melanoma flag: {flag} (threshold {threshold})", 10, bold=data.melanoma_flag)
    )
    if data.risk_group == "malignant" or data.melanoma_flag:
        layout.append_layout_element(
            _p("This result advises seeing a dermatologist promptly.", 10, "#B02A37", bold=True)
        )
    layout.append_layout_element(HorizontalBreak())
    layout.append_layout_element(
        _p(f"Model: {data.model_name}, version {data.model_version}", 8, "#495057")
    )
    layout.append_layout_element(_p(f"Model sha256: {data.model_sha256}", 7, "#495057"))
    layout.append_layout_element(_p(f"Report id: {data.report_id}", 7, "#495057"))
    layout.append_layout_element(_p(f"Image sha256: {data.image_sha256}", 7, "#495057"))
    layout.append_layout_element(_p(DISCLAIMER, 9, "#6C757D"))

    # borb counts documents and prints a licence nag to stdout every 64, opted out or not;
    # a server's stdout is its log, so keep the counter at zero.
    UsageStatistics._UsageStatistics__UNLICENSED_DOCS_COUNT = 0
    out = io.BytesIO()  # an open file object silently gets 0 bytes in borb 3.0.9
    PDF.write(what=doc, where_to=out)
    return out.getvalue()
