"""Finding "overload is shed late" (medium), in part: API uploads beyond the bound are refused
with 503 + Retry-After as soon as their headers arrive, before any body is read; probes still
answer. Raw sockets hold uploads open mid-body, so the tests need no load and no timing.

A refusal keeps its connection: the server reads the unasked-for body and drops it, within the
body deadlines, and the connection serves the next request (app/admission.py,
app/http_protocol.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.hardening.server import Server, free_port, running_server

BOUNDARY = "hardeningboundary"
LIMIT = 2  # APP_UPLOADS_MAX for this server: uploads in flight at once


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory, health_port: int) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("admission") / "data"
    env = {"APP_UPLOADS_MAX": str(LIMIT), "APP_BATCH_MAX": "2", "APP_HEALTH_PORT": str(health_port)}
    with running_server(data, env=env) as server:
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


def upload_head(server: Server, framing: str) -> bytes:
    """The request line and headers of a POST /api/v1/predict; ``framing`` is its
    Content-Length or Transfer-Encoding header."""
    return (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n"
    ).encode()


def open_upload(server: Server, body_length: int) -> socket.socket:
    """Send the request line and headers of a POST /api/v1/predict, and no body yet."""
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(upload_head(server, f"Content-Length: {body_length}"))
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


def hold_all_places(server: Server, body: bytes) -> list[socket.socket]:
    """LIMIT uploads mid-body: every place is taken until the rest is sent."""
    held = [open_upload(server, len(body)) for _ in range(LIMIT)]
    for sock in held:
        sock.sendall(body[: len(body) // 2])
    return held


def release(held: list[socket.socket], body: bytes) -> None:
    for sock in held:
        sock.sendall(body[len(body) // 2 :])
    for sock in held:
        status, text = response_of(sock)
        sock.close()
        assert status == 200, text


def test_many_concurrent_uploads_beyond_the_bound_each_get_a_clear_503(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    """Real concurrent clients sending whole bodies: each gets the JSON 503, none a reset, and
    each refusal has its request id and its count in /metrics."""
    image = fixture_images[0][0].read_bytes()
    body = multipart(image)
    held = hold_all_places(small_server, body)
    try:

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                files = {"image": ("a.jpg", image, "image/jpeg")}
                return await asyncio.gather(
                    *(
                        client.post(small_server.url + "/api/v1/predict", files=files)
                        for _ in range(40)
                    )
                )

        responses = asyncio.run(burst())  # a reset or a dropped answer would raise here
    finally:
        release(held, body)
    for r in responses:
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and r.headers["x-request-id"]
        assert r.json()["error"] == "overloaded" and r.json()["detail"]
    metrics = httpx.get(small_server.url + "/metrics", timeout=10).text
    refused = re.search(
        r'http_requests_total\{method="POST",route="/api/v1/predict",status="503"\} (\d+)', metrics
    )
    assert refused and int(refused.group(1)) >= 40, metrics


def _refusals(server: Server) -> dict[str, int]:
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.findall(r'upload_refusals_total\{stage="(\w+)"\} (\d+)', metrics)
    return {stage: int(float(n)) for stage, n in found}


def test_a_first_burst_on_a_calm_server_is_refused_at_the_headers(
    tmp_path: Path, fixture_images: list[tuple[Path, str]]
) -> None:
    """Uploads whose headers arrive in the same loop turn on a calm server: those beyond the
    bound are refused by the protocol, not each through an ASGI task. The server is stopped
    while the headers are sent, so they all arrive in the turns right after it resumes."""
    body = multipart(fixture_images[0][0].read_bytes())
    with running_server(tmp_path / "data", env={"APP_UPLOADS_MAX": str(LIMIT)}) as server:
        assert _refusals(server) == {"headers": 0, "asgi": 0}  # calm: nothing refused yet
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            socks = [open_upload(server, len(body)) for _ in range(LIMIT + 3)]
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        try:
            for sock in socks:
                sock.settimeout(2.0)
            answered = []
            for sock in socks:
                try:
                    answered.append(response_of(sock)[0])
                except TimeoutError:  # admitted: its answer waits for its body
                    sock.settimeout(30)
            assert sorted(answered) == [503] * 3, answered
            assert _refusals(server) == {"headers": 3, "asgi": 0}
        finally:
            for sock in socks:
                sock.close()


def test_a_refused_connection_serves_the_next_request(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    body = multipart(fixture_images[0][0].read_bytes())
    held = hold_all_places(small_server, body)
    try:
        extra = open_upload(small_server, len(body))
        status, text = response_of(extra)
        assert status == 503, text
        assert "connection: close" not in text.lower()
        extra.sendall(body)  # read and dropped by the server, not a reset
        host = urlsplit(small_server.url).netloc
        extra.sendall(f"GET /health/ready HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, text = response_of(extra)
        assert status == 200, text
        extra.close()
        # Its body all read, and no request after it, a refused connection is an ordinary
        # keep-alive one: the server closes it once idle (uvicorn's 5 s), not never.
        idle = open_upload(small_server, len(body))
        status, text = response_of(idle)
        assert status == 503, text
        idle.sendall(body)
        assert idle.recv(1) == b""
        idle.close()
    finally:
        release(held, body)


def _bytes_read(pid: int) -> int:
    """What the process has read with read(2) (/proc/PID/io rchar), as uvloop reads a socket; a
    body dropped in the kernel with recv(MSG_TRUNC) is not counted."""
    with open(f"/proc/{pid}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def _answers_to(server: Server, *requests: bytes) -> list[bytes]:
    """Send the requests in one go on one connection, as a client that does not wait for its
    answers does, and read an answer to each (JSON bodies)."""
    url = urlsplit(server.url)
    answers = b""
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        while answers.count(b"HTTP/1.1 ") < len(requests) or not answers.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk
    return [b"HTTP/1.1 " + a for a in answers.split(b"HTTP/1.1 ")[1:]]


def _upload(server: Server, body: bytes) -> bytes:
    return upload_head(server, f"Content-Length: {len(body)}") + body


def _ready(server: Server) -> bytes:
    return f"GET /health/ready HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n\r\n".encode()


@pytest.mark.skipif(sys.platform != "linux", reason="the body is dropped in the kernel on Linux")
@pytest.mark.parametrize("megabytes", [0.2, 4])
def test_a_refused_body_is_dropped_unread_up_to_the_next_request(
    small_server: Server, fixture_images: list[tuple[Path, str]], megabytes: float
) -> None:
    """Before: the server read, copied and parsed every refused byte. Now it reads the headers
    and drops the rest in the kernel, to the byte: a request sent right behind the body is
    answered."""
    upload = multipart(fixture_images[0][0].read_bytes())
    held = hold_all_places(small_server, upload)
    try:
        _answers_to(small_server, _upload(small_server, b"warm-up"))  # loads code: rchar counts it
        body = os.urandom(int(megabytes * 1e6))
        before = _bytes_read(small_server.process.pid)
        refusal, ready = _answers_to(
            small_server, _upload(small_server, body), _ready(small_server)
        )
        read = _bytes_read(small_server.process.pid) - before
        assert refusal.startswith(b"HTTP/1.1 503"), refusal
        assert ready.startswith(b"HTTP/1.1 200"), ready  # the probe: parsed from its first byte
        assert read < len(body) / 4, f"{read} bytes read for a refused {len(body)}-byte body"
    finally:
        release(held, upload)


def test_small_refused_bodies_sent_together_are_each_answered_in_order(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    """Two refused uploads and a probe in one read: each body ends where its length says, and
    the request after it is parsed, not dropped."""
    upload = multipart(fixture_images[0][0].read_bytes())
    held = hold_all_places(small_server, upload)
    try:
        answers = _answers_to(
            small_server,
            _upload(small_server, os.urandom(1000)),
            _upload(small_server, os.urandom(3000)),
            _ready(small_server),
        )
    finally:
        release(held, upload)
    assert [a[:12] for a in answers] == [b"HTTP/1.1 503", b"HTTP/1.1 503", b"HTTP/1.1 200"]


def test_a_refused_chunked_body_is_read_to_its_end(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    """A chunked body has no length to drop by: the parser reads it and finds its end, and the
    request behind it is answered."""
    upload = multipart(fixture_images[0][0].read_bytes())
    body = os.urandom(300_000)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536])
        for i in range(0, len(body), 65536)
    )
    chunked = upload_head(small_server, "Transfer-Encoding: chunked") + chunks + b"0\r\n\r\n"
    held = hold_all_places(small_server, upload)
    try:
        answers = _answers_to(small_server, chunked, _ready(small_server))
    finally:
        release(held, upload)
    assert [a[:12] for a in answers] == [b"HTTP/1.1 503", b"HTTP/1.1 200"]


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("admission-drain") / "data"
    env = {"APP_UPLOADS_MAX": "1", "APP_BODY_IDLE_S": "2"}
    with running_server(data, env=env) as server:
        yield server


def test_a_refused_body_that_stalls_is_cut_off(
    impatient_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    """After its 503, the rest of a body must keep arriving as an admitted one must."""
    body = multipart(fixture_images[0][0].read_bytes())
    held = open_upload(impatient_server, len(body))
    held.sendall(body[:1000])  # the one place, mid-body
    extra = open_upload(impatient_server, len(body))
    status, text = response_of(extra)
    assert status == 503, text
    extra.sendall(body[:1000])  # then nothing more
    assert extra.recv(1) == b""  # closed by the server once APP_BODY_IDLE_S passed
    extra.close()
    held.close()


def _listening_inode(port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows.readlines()[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def test_the_listening_socket_is_polled_by_many_handles(small_server: Server) -> None:
    """libuv accepts one connection per listening handle per loop turn: with one handle, under
    1,000 clients, new connections (probes too) waited seconds in the accept queue. The server
    polls ACCEPTORS descriptors of the one listening socket (app.http_protocol)."""
    from app.http_protocol import ACCEPTORS

    inode = _listening_inode(int(urlsplit(small_server.url).port or 0))
    fds = Path(f"/proc/{small_server.process.pid}/fd")
    handles = [fd for fd in fds.iterdir() if fd.readlink().name == f"socket:[{inode}]"]
    assert len(handles) == ACCEPTORS > 1
    # and every connection still gets its answer
    assert httpx.get(small_server.url + "/health/live", timeout=10).status_code == 200


def test_while_full_the_ready_probe_answers_as_the_route_does(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    """While admission is full the server answers /health/ready itself (app.http_protocol):
    the same body, the headers every answer gets, its id and its count in /metrics."""
    calm = httpx.get(small_server.url + "/health/ready", timeout=10)
    assert calm.status_code == 200, calm.text
    body = multipart(fixture_images[0][0].read_bytes())
    held = hold_all_places(small_server, body)
    try:
        busy = [httpx.get(small_server.url + "/health/ready", timeout=10) for _ in range(3)]
    finally:
        release(held, body)
    for r in busy:
        assert r.status_code == 200, r.text
        assert r.json().keys() == calm.json().keys()
        assert r.json()["status"] == "ready" and r.json()["checks"]["database"]["ok"]
        assert r.headers["cache-control"] == "no-store"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-request-id"] and r.headers["content-type"] == "application/json"
    # a reused database answer says how old it is
    assert any("age_ms" in r.json()["checks"]["database"] for r in busy)
    metrics = httpx.get(small_server.url + "/metrics", timeout=10).text
    assert re.search(r'route="/health/ready",status="200"\} ([4-9]|\d\d)', metrics), metrics


def test_just_after_a_refusal_the_ready_probe_still_reuses_a_recent_check(
    small_server: Server, fixture_images: list[tuple[Path, str]]
) -> None:
    """Between bursts admission drops below its bound while the loop is still busy: for 2 s
    after a refusal (app.admission BUSY_FOR_S) the probe reuses a recent good database check
    instead of waiting for a fresh one (those were the slowest 5 % of probes at 1,000 clients)."""
    from app.admission import BUSY_FOR_S

    body = multipart(fixture_images[0][0].read_bytes())
    held = hold_all_places(small_server, body)
    try:
        primed = httpx.get(small_server.url + "/health/ready", timeout=10)  # a recent check
        refused = open_upload(small_server, len(body))
        status, text = response_of(refused)
        refused_at = time.monotonic()
        refused.close()
        assert status == 503, text
        release(held[:1], body)  # one place free again: admission no longer full
        after = httpx.get(small_server.url + "/health/ready", timeout=10)
        elapsed = time.monotonic() - refused_at
    finally:
        release(held[1:], body)
    assert primed.status_code == 200 and after.status_code == 200, after.text
    if elapsed >= BUSY_FOR_S:
        pytest.skip(f"this machine took {elapsed:.1f} s from the refusal to the probe")
    assert "age_ms" in after.json()["checks"]["database"], after.json()


def test_the_health_port_answers_the_probes_and_nothing_else(
    small_server: Server, health_port: int, fixture_images: list[tuple[Path, str]]
) -> None:
    """APP_HEALTH_PORT: the probes answered by a thread of their own (app.probe_port) from
    what the loop last published, so a flood of uploads on the main port delays them neither
    in the accept queue nor behind loop turns; every other path is 404 there."""
    probes = f"http://127.0.0.1:{health_port}"
    main = httpx.get(small_server.url + "/health/ready", timeout=10)
    ready = httpx.get(probes + "/health/ready", timeout=10)
    assert ready.status_code == 200 and main.status_code == 200, ready.text
    assert ready.json().keys() == main.json().keys() and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["database"]["ok"]
    assert ready.headers["x-request-id"] and ready.headers["cache-control"] == "no-store"
    assert httpx.get(probes + "/health/live", timeout=10).json() == {"status": "ok"}
    refusals = [
        httpx.post(probes + "/api/v1/predict", content=b"x" * 100, timeout=10),
        httpx.get(probes + "/", timeout=10),
        httpx.get(probes + "/metrics", timeout=10),
    ]
    for refused in refusals:
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"] == "not_found"
    # while every upload place is taken, the probe port still says ready
    body = multipart(fixture_images[0][0].read_bytes())
    held = hold_all_places(small_server, body)
    try:
        busy = httpx.get(probes + "/health/ready", timeout=10)
    finally:
        release(held, body)
    assert busy.status_code == 200 and busy.json()["status"] == "ready", busy.text
    # each probe answer is counted and logged as every other answer
    metrics = httpx.get(small_server.url + "/metrics", timeout=10).text
    assert re.search(r'method="GET",route="unmatched",status="404"\} [2-9]', metrics), metrics
    assert re.search(r'method="GET",route="/health/ready",status="200"\} ', metrics), metrics
    assert small_server.output().count("Probes on http://127.0.0.1:") == 1


def test_a_taken_health_port_stops_the_server_with_its_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"APP_HEALTH_PORT": str(port)}
        refused = pytest.raises(RuntimeError, match=r"exited \(3\)[\s\S]*APP_HEALTH_PORT")
        with refused, running_server(tmp_path / "data", env=env):
            pass
