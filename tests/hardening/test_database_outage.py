"""Finding 7 (low): a database outage is a 503 `database_unavailable`, /health/ready names the
database, and nothing hangs: PostgreSQL stopped or frozen (through a proxy the test controls,
in front of the real server at 127.0.0.1:5432), and a SQLite file whose directory went away.
Both recover without a restart."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db.engine import PG_COMMAND_TIMEOUT_S
from tests.hardening.proxy import TcpProxy
from tests.hardening.server import Server, running_server

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CSRF_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')
JSON = {"Accept": "application/json"}


def _admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server; skips when it is unreachable."""
    name = f"outage_{uuid.uuid4().hex[:10]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable ({type(exc).__name__}: {exc})")
    try:
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def logged_in(server: Server) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=PG_COMMAND_TIMEOUT_S * 3)
    token = CSRF_RE.search(client.get("/register").text)
    assert token
    password = "correct horse battery staple"
    form = {"username": "outage", "password": password, "confirm": password}
    r = client.post("/register", data={**form, "_csrf_token": token.group(1)})
    assert r.status_code in (200, 303), r.text
    assert client.get("/history").status_code == 200
    return client


def ready(server: Server) -> httpx.Response:
    return httpx.get(server.url + "/health/ready", timeout=10)


def assert_database_down(client: httpx.Client, server: Server) -> None:
    r = ready(server)
    assert r.status_code == 503, r.text
    body: dict[str, Any] = r.json()
    assert body["down"] == ["database"] and not body["checks"]["database"]["ok"]
    assert body["checks"]["database"]["detail"]
    r = client.get("/history", headers=JSON)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "database_unavailable" and r.headers["retry-after"]
    page = client.get("/history")  # the HTML page says so too, and is not a 500
    assert page.status_code == 503 and "database" in page.text, page.text[:3000]


def wait_until_up(client: httpx.Client, server: Server, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while ready(server).status_code != 200:
        assert time.monotonic() < deadline, f"not ready again: {ready(server).text}"
        time.sleep(0.5)
    assert ready(server).json()["checks"]["database"]["ok"]
    assert client.get("/history").status_code == 200


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_stopped_or_frozen_is_503_and_recovers(pg_database: str, tmp_path: Path) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database}"
    try:
        with running_server(tmp_path / "data", env={"APP_DATABASE_URL": url}) as server:
            client = logged_in(server)
            body = ready(server).json()
            assert body["status"] == "ready" and body["checks"]["database"]["ok"], body

            proxy.stop()  # was: 500 on pages and API, 200 on /health/ready
            assert_database_down(client, server)
            proxy.start()
            wait_until_up(client, server)

            proxy.freeze()  # was: requests held with no timeout
            t0 = time.monotonic()
            assert_database_down(client, server)
            # Bounded by the client-side command timeout, not by the outage.
            assert time.monotonic() - t0 < 2 * (PG_COMMAND_TIMEOUT_S + 5)
            proxy.thaw()
            wait_until_up(client, server)
            client.close()
    finally:
        proxy.stop()


def test_sqlite_directory_gone_is_503_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as server:
        client = logged_in(server)
        moved = tmp_path / "moved"
        shutil.move(data, moved)  # a disk unmounted under the server
        try:
            assert_database_down(client, server)
        finally:
            shutil.move(moved, data)
        wait_until_up(client, server)
        client.close()
