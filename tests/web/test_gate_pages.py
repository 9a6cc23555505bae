"""The intended-use gate on the web upload: retake message, no record, audit, analyse anyway."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from pypdf import PdfReader

from app.auth.admin import set_role
from app.config import Settings, default_model_path
from conversion.devset import _text_page, jpeg
from tests.web.conftest import csrf, make_client, migrated, register

PATIENT = "Zq-Gate-Patient-7"


@pytest.fixture
def real_model_client(web_settings: Settings) -> Iterator[TestClient[Litestar]]:
    """The bundled model with its full gate (quality and distribution checks)."""
    settings = migrated(replace(web_settings, model_path=default_model_path()))
    with make_client(settings) as client:
        client.app.state["test_settings"] = settings
        yield client


@pytest.fixture(scope="module")
def document() -> bytes:
    # Cream paper: colourful enough to pass the quality checks (a near-white page is refused
    # as colourless before the model runs), so the distribution check is the one that refuses.
    return jpeg(_text_page(np.random.default_rng(5), 800, 600, (245, 235, 220)))


def post_upload(
    client: TestClient[Litestar], data: bytes, anyway: bool = False
) -> tuple[int, str, str | None]:
    form = {"patient": PATIENT, "_csrf_token": csrf(client, "/analyses/new")}
    if anyway:
        form["analyse_anyway"] = "yes"
    r = client.post(
        "/analyses",
        data=form,
        files=[("images", ("scan.jpg", data, "image/jpeg"))],
        follow_redirects=False,
    )
    return r.status_code, r.text, r.headers.get("location")


def test_a_document_is_refused_and_nothing_is_stored(
    real_model_client: TestClient[Litestar], document: bytes
) -> None:
    client = real_model_client
    register(client, "alice")
    status, page, _ = post_upload(client, document)
    assert status == 422
    assert 'id="retake"' in page and "Please retake the image" in page
    assert "does not look like a dermoscopic image" in page
    assert 'name="analyse_anyway"' in page  # offered, never ticked for them
    history = client.get("/history")
    assert history.status_code == 200 and PATIENT not in history.text
    set_role(client.app.state["test_settings"], "alice", "admin")
    audit = client.get("/audit").text
    assert "analysis_refused" in audit and "out_of_distribution" in audit
    assert "analysis_created" not in audit


def test_analyse_anyway_is_audited_and_marked_on_page_and_pdf(
    real_model_client: TestClient[Litestar], document: bytes
) -> None:
    client = real_model_client
    register(client, "bob")
    status, _, location = post_upload(client, document, anyway=True)
    assert status == 303 and location
    page = client.get(location).text
    assert 'id="outside-intended-use"' in page and "Outside intended use" in page
    pdf = client.get(f"{location}/report.pdf")
    assert pdf.status_code == 200
    text = " ".join(PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text().split())
    assert "OUTSIDE INTENDED USE" in text
    set_role(client.app.state["test_settings"], "bob", "admin")
    audit = client.get("/audit").text
    assert "analysis_outside_intended_use" in audit


def test_a_good_image_is_not_marked(
    real_model_client: TestClient[Litestar], fixture_images: list[tuple[object, str]]
) -> None:
    client = real_model_client
    register(client, "carol")
    data = fixture_images[1][0].read_bytes()  # type: ignore[attr-defined]
    status, _, location = post_upload(client, data, anyway=True)  # ticked, but nothing failed
    assert status == 303 and location
    page = client.get(location).text
    assert 'id="outside-intended-use"' not in page
    text = " ".join(
        PdfReader(io.BytesIO(client.get(f"{location}/report.pdf").content))
        .pages[0]
        .extract_text()
        .split()
    )
    assert "OUTSIDE INTENDED USE" not in text
