"""The probe port's answers (app.probe_port) from what the loop last published: a loop that
stops publishing is reported, not hidden behind an old "ready"."""

from __future__ import annotations

import time

from app.admission import AdmissionControl
from app.metrics import Metrics
from app.probe_port import LIVE_MAX_AGE_S, READY_MAX_AGE_S, ProbePort
from tests.hardening.server import free_port


async def _no_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("the probe port never calls the app")


def test_answers_follow_the_age_of_what_the_loop_published() -> None:
    gate = AdmissionControl(_no_app, 1, [], Metrics())  # type: ignore[arg-type]
    port = ProbePort("127.0.0.1", free_port(), gate)  # bound, not started
    try:
        assert port.answer("GET", "/health/ready")[0] == 503  # nothing published: starting
        assert port.answer("GET", "/health/live")[0] == 200
        ready = (200, [(b"content-type", b"application/json")], b'{"status":"ready"}')
        port._ready = (time.monotonic(), ready)
        assert port.answer("GET", "/health/ready") == ready
        assert port.answer("HEAD", "/health/ready") == ready
        port._ready = (time.monotonic() - READY_MAX_AGE_S - 0.1, ready)
        status, _, body = port.answer("GET", "/health/ready")
        assert status == 503 and b'"down":["event_loop"]' in body
        port._beat = time.monotonic() - LIVE_MAX_AGE_S - 0.1
        status, _, body = port.answer("GET", "/health/live")
        assert status == 503 and b"stalled" in body
        assert port.answer("GET", "/api/v1/predict")[0] == 404
        assert port.answer("POST", "/health/ready")[0] == 404
    finally:
        port.httpd.server_close()
