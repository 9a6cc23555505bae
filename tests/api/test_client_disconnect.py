"""A client that hangs up mid-upload is its own doing: 499, logged at info, never a 5xx."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.main import create_app

BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


class RecordList(logging.Handler):
    """Collects records itself: Litestar's start-up logging config replaces caplog's handler."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_logs() -> Iterator[RecordList]:
    logs = RecordList()
    app_logger = logging.getLogger("app")
    app_logger.addHandler(logs)
    try:
        yield logs
    finally:
        app_logger.removeHandler(logs)


def assert_logged_at_info_only(logs: RecordList) -> None:
    """The disconnect is logged, at info: no error record, no traceback."""
    disconnects = [r for r in logs.records if "disconnected" in r.getMessage()]
    assert disconnects and all(r.levelno == logging.INFO for r in disconnects)
    assert not [r for r in logs.records if r.levelno >= logging.ERROR or r.exc_info]


def image_form(image: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    ).encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


async def post_then_hang_up(
    app: Litestar, path: str, content_type: str, body: bytes
) -> list[dict[str, Any]]:
    """Send the first 3000 bytes of ``body``, then ``http.disconnect``, as uvicorn would."""
    events: Iterator[dict[str, Any]] = iter(
        [
            {"type": "http.request", "body": body[:3000], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(events)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


@pytest.mark.parametrize("path", ["/api/v1/predict", "/api/v1/predict/batch"])
async def test_api_client_disconnect_mid_upload_is_499_not_a_server_error(
    path: str, api_settings: Settings, lesion_jpeg: bytes, tmp_path: Path
) -> None:
    app = create_app(replace(api_settings, data_dir=tmp_path))
    async with AsyncTestClient(app=app):  # the lifespan loads the model: the API is ready
        with captured_logs() as logs:
            sent = await post_then_hang_up(app, path, MULTIPART, image_form(lesion_jpeg))
    assert sent[0]["status"] == 499
    reply = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert reply["error"] == "client_disconnected"
    assert_logged_at_info_only(logs)
    counted = app.state.metrics.render().decode()
    assert re.search(r'http_requests_total\{[^}]*status="499"\} 1\.0', counted)
    # Admission pre-registers its 503 series at 0: only a counted 5xx is one.
    assert not re.search(r'http_requests_total\{[^}]*status="5\d\d"\} [1-9]', counted)


async def test_page_form_client_disconnect_is_499(api_settings: Settings, tmp_path: Path) -> None:
    # Litestar parses this form itself (CSRF middleware), before any of our code runs.
    app = create_app(replace(api_settings, data_dir=tmp_path))
    body = b"username=someone&password=" + b"x" * 8000
    async with AsyncTestClient(app=app):
        with captured_logs() as logs:
            sent = await post_then_hang_up(app, "/login", "application/x-www-form-urlencoded", body)
    assert sent[0]["status"] == 499
    assert_logged_at_info_only(logs)
    # Counted as answered, though raised past the metrics middleware (the CSRF check is inside).
    counted = app.state.metrics.render().decode()
    assert re.search(r'http_requests_total\{[^}]*status="499"\} 1\.0', counted)
    # Admission pre-registers its 503 series at 0: only a counted 5xx is one.
    assert not re.search(r'http_requests_total\{[^}]*status="5\d\d"\} [1-9]', counted)
