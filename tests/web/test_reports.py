"""The PDF renderer: content, and borb's telemetry/signal side effects switched off."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

from pypdf import PdfReader

from app.inference.spec import HAM10000_LABELS, HAM10000_NAMES
from app.reports.pdf import ReportData, build_report

REPO = Path(__file__).resolve().parents[2]


def _data(image: bytes, patient: str = "Zoë Ünal") -> ReportData:
    probs = dict(zip(HAM10000_LABELS, (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.79), strict=True))
    return ReportData(
        report_id="4f1c2d3e-0000-4000-8000-000000000001",
        patient=patient,
        clinician="dr-who",
        created_at=dt.datetime(2025, 3, 4, 5, 6, tzinfo=dt.UTC),
        image=image,
        image_sha256=hashlib.sha256(image).hexdigest(),
        predicted_class="mel",
        predicted_name="Melanoma",
        risk_group="malignant",
        confidence=0.79,
        probabilities=probs,
        label_names=HAM10000_NAMES,
        melanoma_flag=True,
        melanoma_threshold=0.31,
        model_name="mobilenetv2",
        model_version="3",
        model_sha256="ab" * 32,
    )


def test_report_contains_everything(fixture_images: list[tuple[Path, str]]) -> None:
    image = fixture_images[0][0].read_bytes()
    pdf = build_report(_data(image))
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    assert "Zoë Ünal" in text  # Latin-1 names survive the standard fonts
    assert "Melanoma (mel), confidence 79.0%" in text
    for label, pct in zip(
        HAM10000_LABELS,
        ("1.00%", "2.00%", "3.00%", "4.00%", "5.00%", "6.00%", "79.00%"),
        strict=True,
    ):
        assert label in text and pct in text
    assert "ab" * 32 in text and hashlib.sha256(image).hexdigest() in text
    assert "threshold 0.310" in text and "dr-who" in text
    assert "second opinion, not a diagnosis" in text
    assert len(PdfReader(io.BytesIO(pdf)).pages[0].images) == 1  # the thumbnail


def test_report_fits_one_page_with_the_longest_names(
    fixture_images: list[tuple[Path, str]],
) -> None:
    # The longest fields the forms allow, with no spaces: borb cannot wrap inside a word and
    # failed the whole report (a 500 on every view); and one extra line pushed the disclaimer
    # alone onto a second page.
    image = fixture_images[0][0].read_bytes()
    not_flagged_bcc = {"predicted_class": "bcc", "melanoma_flag": False}  # its own advice line
    for patient, change in (("P" * 128, {}), ("Ж" * 128, {}), ("Ж" * 128, not_flagged_bcc)):
        # "Ж": the name cannot be printed, which adds a line that says so.
        data = dataclasses.replace(
            _data(image),
            patient=patient,
            clinician="W" * 64,
            **change,  # type: ignore[arg-type]
        )
        pages = PdfReader(io.BytesIO(build_report(data))).pages
        assert len(pages) == 1, patient
        text = "".join(pages[0].extract_text().split())
        assert data.image_sha256 in text  # the last line
        assert "secondopinion,notadiagnosis" in text
        advice = "advisesseeingadermatologistpromptly" if change else "YES:seeadermatologist"
        assert advice in text
    assert "P" * 128 not in text and "?" * 128 in text
    assert "W" * 64 in text  # split over lines, nothing dropped


def test_report_says_when_a_name_cannot_be_printed(
    fixture_images: list[tuple[Path, str]],
) -> None:
    image = fixture_images[0][0].read_bytes()
    data = _data(image, patient="Иван Петров")
    text = " ".join(PdfReader(io.BytesIO(build_report(data))).pages[0].extract_text().split())
    assert "Patient: ???? ??????" in text
    assert "cannot be printed and show as '?'" in text
    latin = " ".join(
        PdfReader(io.BytesIO(build_report(_data(image)))).pages[0].extract_text().split()
    )
    assert "cannot be printed" not in latin


def test_report_of_a_damaged_image_says_so(fixture_images: list[tuple[Path, str]]) -> None:
    # A cut-off JPEG: PIL refuses it. The report still renders, and warns instead of a 500.
    image = fixture_images[0][0].read_bytes()[:4000]
    pdf = build_report(_data(image))
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    assert "stored image is damaged" in text and "may be unreliable" in text
    assert "Melanoma (mel), confidence 79.0%" in text
    assert len(PdfReader(io.BytesIO(pdf)).pages[0].images) == 0


# Runs in a fresh interpreter so borb's one-time, main-thread side effects are observable.
_PROBE = r"""
import json, signal, socket, sys
events = []
def hook(name, args):
    if name in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
        events.append([name, repr(args)[:200]])
sys.addaudithook(hook)
def mine(signum, frame): pass
signal.signal(signal.SIGTERM, mine)
signal.signal(signal.SIGINT, mine)
from app.reports.pdf import build_report  # opts out of borb's usage statistics at import
sys.path.insert(0, "tests")
from web.test_reports import _data
image = open(sys.argv[1], "rb").read()
for _ in range(70):  # past borb's 64-document queue flush and licence nag
    build_report(_data(image))
import threading, time
time.sleep(0.5)  # give any telemetry thread a chance to run
loopback = ("127.", "::1", "localhost")
outbound = [e for e in events if not any(l in e[1] for l in loopback)]
print(json.dumps({
    "outbound": outbound,
    "sigterm_unchanged": signal.getsignal(signal.SIGTERM) is mine,
    "sigint_unchanged": signal.getsignal(signal.SIGINT) is mine,
    "threads": [t.name for t in threading.enumerate()],
}))
"""


def test_report_borb_no_network_and_signals_unchanged(
    fixture_images: list[tuple[Path, str]],
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(fixture_images[0][0])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"borb printed to stdout: {proc.stdout[:500]!r}"  # no licence nag
    result = json.loads(lines[0])
    assert result["outbound"] == []
    assert result["sigterm_unchanged"] and result["sigint_unchanged"]
    assert result["threads"] == ["MainThread"]


def test_report_never_decodes_a_scan_bomb(fixture_images: list[tuple[Path, str]]) -> None:
    # A stored file that would take PIL a minute (a progressive JPEG with one scan repeated
    # thousands of times) is refused from its markers, as an upload is: a warning, at once.
    import time

    from tests.hardening.images import scan_bomb

    started = time.perf_counter()
    pdf = build_report(_data(scan_bomb()))
    assert time.perf_counter() - started < 10  # a decode of it took 54 s in the red-team pass
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    assert "stored image is damaged" in text
