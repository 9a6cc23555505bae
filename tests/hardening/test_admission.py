"""Finding "overload is shed late" (medium), in part: API uploads beyond the bound are refused
with 503 + Retry-After as soon as their headers arrive, before any body is read; probes still
answer. Raw sockets hold uploads open mid-body, so the test needs no load and no timing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.hardening.server import Server, running_server

BOUNDARY = "hardeningboundary"
LIMIT = 2  # APP_QUEUE_MAX for this server: uploads in flight at once


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("admission") / "data"
    with running_server(data, env={"APP_QUEUE_MAX": str(LIMIT), "APP_BATCH_MAX": "2"}) as server:
        yield server


def multipart(image: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
            'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def open_upload(server: Server, body_length: int) -> socket.socket:
    """Send the request line and headers of a POST /api/v1/predict, and no body yet."""
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def response_of(sock: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, (head + b"\r\n\r\n" + rest).decode(errors="replace")


def test_uploads_beyond_the_bound_are_refused_before_their_body(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    body = multipart(fixture_images[0][0].read_bytes())
    held = [open_upload(small_server, len(body)) for _ in range(LIMIT)]
    for sock in held:
        sock.sendall(body[: len(body) // 2])  # mid-upload: each holds its place
    try:
        # Probes and pages are never counted (the probe would 503 if the model were busy).
        assert httpx.get(small_server.url + "/health/ready", timeout=10).status_code == 200
        # Before: the server waited for this body (the client would time out here).
        extra = open_upload(small_server, len(body))
        status, text = response_of(extra)
        extra.close()
        assert status == 503, text
        assert "retry-after: 1" in text.lower() and '"error":"overloaded"' in text.replace(" ", "")
    finally:
        for sock in held:
            sock.sendall(body[len(body) // 2 :])
    for sock in held:  # the held uploads complete normally
        status, text = response_of(sock)
        sock.close()
        assert status == 200, text
    files = {"image": ("a.jpg", fixture_images[0][0].read_bytes())}
    r = httpx.post(small_server.url + "/api/v1/predict", files=files, timeout=30)
    assert r.status_code == 200, r.text  # places are given back
