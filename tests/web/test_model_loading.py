"""While the model is not ready (loading, or the server shutting down), each page answers as
its dependency says (app/deps.py): forms that need the model 503 after checking their fields,
pages that only show a heat map go without one, the camera socket asks to try later."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from .conftest import csrf, register, upload

ANALYSIS = re.compile(r"/analyses/([0-9a-f-]{36})$")


def test_pages_while_the_model_is_not_ready(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    from pypdf import PdfReader

    image = fixture_images[0][0].read_bytes()
    register(client, "alice")
    location = upload(client, "Pat", [("a.jpg", image)])
    assert ANALYSIS.search(location)
    token = csrf(client, "/analyses/new")

    client.app.state.ready = False  # what the model's lifespan sets until warmed, and at stop
    try:
        assert client.get("/health/ready").json() == {"status": "starting"}
        missing_patient = client.post(
            "/analyses",
            data={"patient": "", "_csrf_token": token},
            files=[("images", ("a.jpg", image, "image/jpeg"))],
        )
        assert missing_patient.status_code == 400  # the form is checked before the model
        assert "patient" in missing_patient.text
        r = client.post(
            "/analyses",
            data={"patient": "Pat", "_csrf_token": token},
            files=[("images", ("a.jpg", image, "image/jpeg"))],
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        page = client.get(location)
        assert page.status_code == 200 and 'id="explanation"' not in page.text
        assert client.get(f"{location}/explanation.png").status_code == 501
        pdf = PdfReader(io.BytesIO(client.get(f"{location}/report.pdf").content))
        assert len(pdf.pages[0].images) == 1  # the image, without the heat map
        with (
            pytest.raises(WebSocketDisconnect) as info,
            client.websocket_connect(
                "/analyses/live/ws", headers={"origin": "http://testserver.local"}
            ) as ws,
        ):
            ws.send_bytes(image)
            ws.receive_json()
        assert info.value.code == 1013 and "loading" in str(info.value.detail)
    finally:
        client.app.state.ready = True

    assert 'id="explanation"' in client.get(location).text
    assert client.get(f"{location}/explanation.png").status_code == 200
    assert client.get("/health/ready").json()["status"] == "ready"
