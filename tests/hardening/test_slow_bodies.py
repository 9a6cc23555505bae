"""Finding "slow bodies" (low): a request body must keep arriving, or the server answers 408 and
closes, so stalled clients cannot hold connections and upload places for ever."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.hardening.server import running_server

pytestmark = pytest.mark.slow


def stalled_upload(url: str, sent: int = 100, claimed: int = 100_000) -> socket.socket:
    """Open a connection that announces a body of ``claimed`` bytes and sends ``sent``."""
    parsed = urlparse(url)
    conn = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: {parsed.hostname}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {claimed}\r\n\r\n"
    )
    conn.sendall(head.encode() + b"--xyz\r\n" + b"a" * (sent - 7))
    return conn


def answer(conn: socket.socket) -> tuple[bytes, float]:
    started = time.monotonic()
    data = b""
    while chunk := conn.recv(65536):  # until the server closes
        data += chunk
    return data, time.monotonic() - started


def test_a_stalled_body_gets_408_and_the_connection_closes(tmp_path: Path) -> None:
    env = {"APP_BODY_IDLE_S": "1", "APP_BODY_DEADLINE_S": "3"}
    with running_server(tmp_path / "data", env=env) as server:
        conn = stalled_upload(server.url)
        data, waited = answer(conn)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b"request_timeout" in data
        assert waited < 10  # the idle limit is 1 s; without it this waits for ever

        # A body that trickles (a byte each half second) still ends at the overall deadline.
        conn = stalled_upload(server.url)
        started = time.monotonic()
        conn.settimeout(0.5)
        data = b""
        while time.monotonic() - started < 15:
            try:
                conn.sendall(b"b")
            except OSError:
                break
            try:
                data += conn.recv(65536)
                if data:
                    break
            except TimeoutError:
                continue
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert time.monotonic() - started < 10
        # and the server still serves
        import httpx

        assert httpx.get(server.url + "/health/ready", timeout=5).status_code == 200
