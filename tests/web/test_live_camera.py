"""The camera page's WebSocket: the web session authenticates it, and only this site's pages
may open it (a handshake carries the cookie from any site and no CSRF token)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from .conftest import csrf, register

SAME_SITE = {"origin": "http://testserver.local"}


def test_live_camera_page_warns_and_streams_predictions(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    register(client, "alice")
    page = client.get("/analyses/live")
    assert page.status_code == 200
    assert "second opinion, not a diagnosis" in page.text and "dermatoscope" in page.text
    with client.websocket_connect("/analyses/live/ws", headers=SAME_SITE) as ws:
        ws.send_bytes(fixture_images[0][0].read_bytes())
        reply = ws.receive_json()
        assert reply["frame"] == 1 and len(reply["probabilities"]) == 7
        assert reply["label"] in reply["probabilities"] and "second opinion" in reply["disclaimer"]
        ws.send_bytes(b"not an image")
        assert ws.receive_json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("logged_in", "headers", "reason"),
    [
        (True, {"origin": "https://evil.example"}, "cross-site"),
        (True, {}, "cross-site"),  # no Origin: not a browser page of this site
        (False, SAME_SITE, "log in first"),
    ],
)
def test_live_camera_socket_refuses_strangers(
    client: TestClient[Litestar], logged_in: bool, headers: dict[str, str], reason: str
) -> None:
    if logged_in:
        register(client, "alice")
    with (
        pytest.raises(WebSocketDisconnect) as info,
        client.websocket_connect("/analyses/live/ws", headers=headers) as ws,
    ):
        ws.send_bytes(b"a frame")  # an accepted socket would answer it (a JSON error)
        ws.receive_json()
    assert info.value.code == 1008 and reason in str(info.value.detail)


def test_live_camera_socket_ends_with_the_session(
    client: TestClient[Litestar],
    fixture_images: list[tuple[Path, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Checked once at connect, a socket outlived a logout elsewhere: frames were still answered.
    import app.live_session as api

    monkeypatch.setattr(api, "RECHECK_S", 0.0)
    register(client, "alice")
    frame = fixture_images[0][0].read_bytes()
    with client.websocket_connect("/analyses/live/ws", headers=SAME_SITE) as ws:
        ws.send_bytes(frame)
        assert "label" in ws.receive_json()
        other = TestClient(app=client.app)
        other.cookies.update(dict(client.cookies))  # the same session on another device
        token = csrf(other, "/dashboard")
        assert other.post("/logout", data={"_csrf_token": token}).status_code == 200
        ws.send_bytes(frame)
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
    assert info.value.code == 1008 and "log in again" in str(info.value.detail)


@pytest.mark.parametrize(
    ("origin", "headers", "same"),
    [
        ("https://clinic.example", {"host": "Clinic.Example:443"}, True),
        ("http://clinic.example:8000", {"host": "clinic.example:8000"}, True),
        (
            "https://clinic.example",
            {"host": "127.0.0.1:8000", "x-forwarded-host": "clinic.example"},
            True,
        ),
        ("https://evil.example", {"host": "clinic.example"}, False),
        ("null", {"host": "clinic.example"}, False),
        ("https://clinic.example:8443", {"host": "clinic.example"}, False),
    ],
)
def test_live_camera_origin_matching(origin: str, headers: dict[str, str], same: bool) -> None:
    from app.routes.live import _same_site

    assert _same_site(origin, headers) is same
