"""deploy/nginx in front of a real replica (issue 18): TLS and the redirect, the body limit
matching APP_MAX_UPLOAD_MB, the live camera's WebSocket, and X-Forwarded-* believed only from
APP_TRUSTED_PROXIES. Real nginx, real server processes; skipped without nginx."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.cluster import Nginx, Replica, running_nginx, start_replica, wait_ready

pytestmark = pytest.mark.usefixtures("fleet_tools")

CLIENT_ADDRESS = "127.0.0.2"  # the "browser": another loopback address than nginx's


@pytest.fixture
def front(tmp_path: Path, fleet_model: Path) -> Iterator[tuple[Nginx, Replica]]:
    """One replica (dev mode, SQLite, 1 MB uploads) behind nginx rendered for 1 MB."""
    env = {
        "APP_DEV": "1",
        "APP_API_AUTH": "0",
        "APP_MODEL_PATH": str(fleet_model),
        "APP_PROVIDERS": "cpu",
        "APP_ORT_THREADS": "1",
        "APP_MAX_UPLOAD_MB": "1",
        "APP_TRUSTED_PROXIES": "127.0.0.1",
        "APP_LOG_LEVEL": "WARNING",
    }
    replica = start_replica("replica1", env, tmp_path / "replica1")
    try:
        wait_ready(replica)
        with running_nginx(tmp_path / "nginx", [f"127.0.0.1:{replica.port}"], 1) as nginx:
            yield nginx, replica
    finally:
        replica.stop()


def _small_jpeg(fixture_images: list[tuple[Path, str]]) -> bytes:
    return min((p.read_bytes() for p, _ in fixture_images), key=len)


def test_tls_in_front_and_plain_http_redirected(front: tuple[Nginx, Replica]) -> None:
    nginx, _ = front
    with nginx.client() as client:
        page = client.get("/login")
        assert page.status_code == 200 and "csrftoken" in page.headers.get("set-cookie", "")
        # The app saw https (X-Forwarded-Proto from a trusted proxy): Secure cookies and HSTS.
        assert "secure" in page.headers["set-cookie"].lower()
        assert page.headers["strict-transport-security"].startswith("max-age=")
    plain = httpx.get(f"http://127.0.0.1:{nginx.http_port}/history?x=1")
    assert plain.status_code == 308
    assert plain.headers["location"] == f"https://127.0.0.1:{nginx.https_port}/history?x=1"
    # probes answer on plain HTTP too (load balancers, orchestrators)
    assert httpx.get(f"http://127.0.0.1:{nginx.http_port}/health/ready").status_code == 200
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused, as it should
        httpx.get(nginx.url + "/health/live", verify=True)


def test_the_body_limit_is_the_apps(
    front: tuple[Nginx, Replica], fixture_images: list[tuple[Path, str]]
) -> None:
    nginx, _ = front
    jpeg = _small_jpeg(fixture_images)
    assert len(jpeg) < 1024 * 1024
    with nginx.client(timeout=30) as client:
        ok = client.post("/api/v1/predict", files={"image": ("a.jpg", jpeg, "image/jpeg")})
        assert ok.status_code == 200, ok.text
        assert ok.json()["label"]
        big = jpeg + b"\0" * (1024 * 1024)
        refused = client.post("/api/v1/predict", files={"image": ("a.jpg", big, "image/jpeg")})
        assert refused.status_code == 413
        assert "nginx" in refused.text  # refused at the front, before any replica read it


def test_the_live_camera_socket_passes_through(
    front: tuple[Nginx, Replica], fixture_images: list[tuple[Path, str]]
) -> None:
    from websockets.sync.client import connect

    nginx, _ = front
    context = ssl.create_default_context(cafile=str(nginx.cert))
    url = f"wss://127.0.0.1:{nginx.https_port}/api/v1/live"
    with connect(url, ssl=context, open_timeout=10) as socket:
        for n in range(3):
            socket.send(_small_jpeg(fixture_images))
            reply = json.loads(socket.recv(timeout=20))
            assert reply["frame"] == n + 1 and reply["label"] in reply["probabilities"]


def _last_login_address(replica: Replica) -> str:
    with sqlite3.connect(replica.log.parent / "replica1" / "app.sqlite3") as db:
        row = db.execute(
            "SELECT address FROM audit_event WHERE action = 'login_failed' ORDER BY id DESC"
        ).fetchone()
    return str(row[0])


def _fail_login(client: httpx.Client, headers: dict[str, str] | None = None) -> httpx.Response:
    page = client.get("/login")
    token = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
    return client.post(
        "/login",
        data={"username": "nobody", "password": "wrong password", "_csrf_token": token},
        headers=headers or {},
    )


def test_forwarded_headers_count_only_from_trusted_proxies(front: tuple[Nginx, Replica]) -> None:
    nginx, replica = front
    # Through nginx (trusted): the audit log names the browser, not nginx.
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS, verify=str(nginx.cert))
    with httpx.Client(base_url=nginx.url, transport=transport) as client:
        assert _fail_login(client, {"X-Forwarded-For": "6.6.6.6"}).status_code == 401
    assert _last_login_address(replica) == CLIENT_ADDRESS  # nginx replaced the forged header
    # Straight to the replica from an address it does not trust: the headers are ignored.
    direct = httpx.HTTPTransport(local_address=CLIENT_ADDRESS)
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=replica.url, transport=direct) as client:
        r = _fail_login(client, forged)
        assert r.status_code == 401
        assert "strict-transport-security" not in r.headers  # still plain http to the app
    assert _last_login_address(replica) == CLIENT_ADDRESS


def test_a_frozen_replica_is_taken_out_by_the_health_watch(
    tmp_path: Path, fleet_model: Path
) -> None:
    """deploy/nginx/health_watch.py polls /health/ready: a replica frozen with SIGSTOP (its
    port still accepts connections, so nginx's passive checks would wait for proxy_read_timeout,
    120 s) is marked down and requests go to the other; it comes back once it answers."""
    env = {
        "APP_DEV": "1",
        "APP_MODEL_PATH": str(fleet_model),
        "APP_PROVIDERS": "cpu",
        "APP_ORT_THREADS": "1",
        "APP_LOG_LEVEL": "WARNING",
    }
    replicas = [start_replica(f"r{i}", env, tmp_path / f"r{i}") for i in (1, 2)]
    try:
        for replica in replicas:
            wait_ready(replica)
        upstreams = [f"127.0.0.1:{r.port}" for r in replicas]
        with running_nginx(tmp_path / "nginx", upstreams, watch_interval_s=0.3) as nginx:
            conf = tmp_path / "nginx" / "nginx.conf"
            os.kill(replicas[1].process.pid, signal.SIGSTOP)
            try:
                _wait_for(
                    lambda: f"{upstreams[1]} max_fails=1 fail_timeout=5s down;" in conf.read_text()
                )
                time.sleep(0.5)  # the reload reaches nginx's workers
                with nginx.client(timeout=3) as client:
                    for _ in range(6):  # round robin would give the frozen one every other
                        assert client.get("/health/ready").status_code == 200
            finally:
                os.kill(replicas[1].process.pid, signal.SIGCONT)
            _wait_for(lambda: " down;" not in conf.read_text())
            watch_log = (tmp_path / "nginx" / "health_watch.log").read_text()
            assert f"down: {upstreams[1]}" in watch_log and "down: none" in watch_log
    finally:
        for replica in replicas:
            replica.stop()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
