"""WS /api/v1/live: a normal stream, a flood that shows dropping, bad frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from app.config import Settings
from app.main import create_app


def read_until(ws: Any, frame: int) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    while True:
        reply = ws.receive_json()
        replies.append(reply)
        if reply["frame"] == frame:
            return replies


def test_live_answers_every_frame_of_a_paced_stream(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    frames = [p.read_bytes() for p, _ in fixture_images[:5]]
    with client.websocket_connect("/api/v1/live") as ws:
        for n, data in enumerate(frames, start=1):
            ws.send_bytes(data)
            reply = ws.receive_json()  # wait for each answer: nothing to drop
            assert reply["frame"] == n and reply["dropped"] == 0
            assert reply["label"] in reply["probabilities"]
            assert reply["model"]["sha256"] and reply["timing"]["inference_ms"] > 0
            assert "not a diagnosis" in reply["disclaimer"]
        assert reply["dropped_total"] == 0


def test_live_drops_old_frames_under_a_flood(
    client: TestClient[Litestar], lesion_jpeg: bytes
) -> None:
    sent = 40
    with client.websocket_connect("/api/v1/live") as ws:
        for _ in range(sent):
            ws.send_bytes(lesion_jpeg)
        replies = read_until(ws, sent)  # the newest frame is never dropped
    dropped = sum(r["dropped"] for r in replies)
    assert dropped > 0
    assert len(replies) + dropped == sent  # every frame is answered or counted as dropped
    assert replies[-1]["dropped_total"] == dropped
    assert all("label" in r for r in replies)
    metrics = client.get("/metrics").text
    assert "live_frames_dropped_total" in metrics


def test_live_reports_bad_frames_and_keeps_going(
    client: TestClient[Litestar], generated: Path, lesion_jpeg: bytes
) -> None:
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_bytes((generated / "lesion.gif").read_bytes())
        reply = ws.receive_json()
        assert reply["error"] == "unsupported_media_type" and reply["detail"]
        ws.send_text("hello")
        reply = ws.receive_json()
        assert reply["frame"] == 2 and reply["error"] == "bad_frame"
        ws.send_bytes((generated / "png_bomb.png").read_bytes())
        assert ws.receive_json()["error"] == "image_too_large"
        ws.send_bytes(lesion_jpeg)
        reply = ws.receive_json()
        assert reply["frame"] == 4 and "label" in reply


def test_live_refuses_before_the_model_is_ready(api_settings: Settings) -> None:
    client = TestClient(app=create_app(api_settings))  # lifespan not run: no model yet
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/api/v1/live") as ws:
        ws.receive_json()
    assert info.value.code == 1013  # try again later
