"""Tiny server-side SVG charts (no JavaScript, works offline and in PDFs and kiosks)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def hbar_svg(
    rows: Sequence[tuple[str, float, str]],
    max_value: float | None = None,
    fmt: str = "{:.1%}",
    width: int = 560,
    row_height: int = 26,
    label_width: int = 190,
    title: str = "",
) -> Markup:
    """Horizontal bars: ``rows`` is (label, value, colour); accessible via <title>/<desc>."""
    top = max_value if max_value is not None else max((v for _, v, _ in rows), default=0.0)
    top = top or 1.0
    # Room for the longest label at 13 px (about 7.2 px a character in the default sans font):
    # "Benign keratosis-like lesion (bkl)" was clipped at the fixed 190.
    longest = max((len(label) for label, _, _ in rows), default=0)
    label_width = max(label_width, round(longest * 7.2) + 10)
    bar_space = width - label_width - 70
    height = row_height * max(1, len(rows)) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="chart" role="img" aria-label="{escape(title)}" width="100%">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, value, colour) in enumerate(rows):
        y = i * row_height + 2
        w = max(1.0, bar_space * value / top) if value > 0 else 0.0
        parts.append(
            f'<text x="{label_width - 6}" y="{y + row_height * 0.65:.1f}" text-anchor="end" '
            f'font-size="13">{escape(label)}</text>'
            f'<rect x="{label_width}" y="{y + 4}" width="{w:.1f}" height="{row_height - 8}" '
            f'fill="{escape(colour)}" rx="3"><title>{escape(label)}: {escape(fmt.format(value))}'
            f"</title></rect>"
            f'<text x="{label_width + w + 6:.1f}" y="{y + row_height * 0.65:.1f}" '
            f'font-size="12">{escape(fmt.format(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def column_svg(
    columns: Sequence[tuple[str, int]],
    colour: str = "#0d6efd",
    width: int = 560,
    height: int = 200,
    title: str = "",
) -> Markup:
    """Vertical columns with integer counts (analyses per week)."""
    n = max(1, len(columns))
    top = max((v for _, v in columns), default=0) or 1
    plot_h = height - 40
    step = (width - 20) / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="chart" role="img" aria-label="{escape(title)}" width="100%">',
        f"<title>{escape(title)}</title>",
        f'<line x1="10" y1="{plot_h + 10}" x2="{width - 10}" y2="{plot_h + 10}" stroke="#adb5bd"/>',
    ]
    for i, (label, value) in enumerate(columns):
        h = plot_h * value / top
        x = 10 + i * step + step * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{plot_h + 10 - h:.1f}" width="{step * 0.7:.1f}" '
            f'height="{h:.1f}" fill="{escape(colour)}" rx="2"><title>{escape(label)}: {value}'
            f"</title></rect>"
            f'<text x="{x + step * 0.35:.1f}" y="{plot_h + 10 - h - 4:.1f}" font-size="11" '
            f'text-anchor="middle">{value}</text>'
            f'<text x="{x + step * 0.35:.1f}" y="{height - 8}" font-size="10" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
