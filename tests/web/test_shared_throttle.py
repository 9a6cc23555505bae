"""The login throttle every replica shares (issue 18): counts in the database (SQLite file and
real PostgreSQL) or in a real Redis, the same rules as the in-memory one, seen by two
throttles ("replicas") at once, and through two apps on one database over HTTP."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from app.auth.throttle import DatabaseThrottle, RedisThrottle, Throttle
from app.config import Settings
from app.db import engine as db_engine
from app.db.tables import LoginFailure

from .conftest import csrf, make_client, migrated, register

REDIS_URL = "redis://127.0.0.1:6379/15"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"])
def backend(request: pytest.FixtureRequest, web_settings: Settings) -> Settings | None:
    """A migrated database (SQLite file, fresh PostgreSQL database), or None for Redis."""
    if request.param == "redis":
        if not _redis_up():
            pytest.skip("Redis is not running at 127.0.0.1:6379 (.ci/run installs redis-server)")
        return None
    if request.param == "postgres":
        return migrated(replace(web_settings, database_url=request.getfixturevalue("pg_url")))
    return migrated(web_settings)


@pytest.fixture
async def replicas(backend: Settings | None) -> AsyncIterator[tuple[Throttle, Throttle, Clock]]:
    """Two throttles on one shared backend, as two replicas have, with one controllable clock."""
    clock = Clock()
    if backend is not None:
        engine = db_engine.make_engine(backend)
        db_engine.bind(engine)
        await db_engine.start(engine)
        try:
            yield DatabaseThrottle(clock=clock), DatabaseThrottle(clock=clock), clock
        finally:
            await db_engine.stop(engine)
        return
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    one = RedisThrottle(REDIS_URL, clock=clock, namespace=namespace)
    two = RedisThrottle(REDIS_URL, clock=clock, namespace=namespace)
    try:
        yield one, two, clock
    finally:
        await one.store.delete_all()
        await one.close()
        await two.close()


async def test_failures_on_two_replicas_add_up(replicas: tuple[Throttle, Throttle, Clock]) -> None:
    one, two, clock = replicas
    for i in range(5):
        assert await (one if i % 2 else two).check("Alice", "10.0.0.1") == 0
        await (one if i % 2 else two).failed_async("alice", "10.0.0.1")
    # 5 for the pair, seen by both, whatever the case of the name
    wait = await one.check("ALICE", "10.0.0.1")
    assert 590 <= wait <= 601
    assert await two.check("alice", "10.0.0.1") == wait
    assert await two.check("alice", "10.0.0.2") == 0  # the account is not locked (5 < 20)
    clock.now += 601
    assert await one.check("alice", "10.0.0.1") == 0  # the window passes


async def test_account_address_and_overall_limits(
    replicas: tuple[Throttle, Throttle, Clock],
) -> None:
    one, two, clock = replicas
    for i in range(20):
        await (one, two)[i % 2].failed_async("bob", f"10.1.{i}.1")
    assert await one.check("bob", "192.168.1.1") > 0  # per account, any address
    assert await one.check("carol", "192.168.1.1") == 0
    for i in range(20):
        await (one, two)[i % 2].failed_async(f"fresh{i}", "10.9.9.9")
    assert await two.check("someone-new", "10.9.9.9") > 0  # per address, any account
    clock.now += 601
    assert await two.check("someone-new", "10.9.9.9") == 0


async def test_a_right_password_forgives_the_pair_only(
    replicas: tuple[Throttle, Throttle, Clock],
) -> None:
    one, two, _ = replicas
    for _ in range(4):
        await one.failed_async("dora", "10.0.0.5")
    await two.succeeded_async("dora", "10.0.0.5")
    for _ in range(4):
        await one.failed_async("dora", "10.0.0.5")
    assert await one.check("dora", "10.0.0.5") == 0  # 4 since the login, not 8
    for i in range(12):
        await one.failed_async("dora", f"10.2.{i}.1")
    assert await one.check("dora", "10.3.0.1") > 0  # the account count kept all 20


async def test_old_failures_are_pruned(replicas: tuple[Throttle, Throttle, Clock]) -> None:
    if isinstance(replicas[0], RedisThrottle):
        pytest.skip("Redis keys expire with their window")
    clock = replicas[2]
    throttle = DatabaseThrottle(clock=clock, prune_every_s=0)
    for i in range(30):
        await throttle.failed_async(f"user{i}", "10.0.0.1")
    clock.now += 601
    await throttle.failed_async("last", "10.0.0.1")
    assert await LoginFailure.count().run() == 1


@pytest.mark.parametrize("shared", ["database", "redis"])
def test_failures_through_two_apps_on_one_database_lock_the_account(
    sqlite_settings: Settings, shared: str
) -> None:
    """Over HTTP: 5 wrong passwords, alternating between two app instances (two replicas
    with one database), lock the account on both; the in-memory throttle let each take 5.
    (SQLite: Piccolo binds tables per process, so two apps in one process cannot share a
    PostgreSQL pool; tests/deploy/test_scale_out.py does that with real processes.)"""
    if shared == "redis":
        if not _redis_up():
            pytest.skip("Redis is not running at 127.0.0.1:6379 (.ci/run installs redis-server)")
        sqlite_settings = replace(sqlite_settings, redis_url=REDIS_URL)
        RedisFlush(REDIS_URL).run()
    with make_client(sqlite_settings) as first, make_client(sqlite_settings) as second:
        register(first, "erin")
        first.cookies.clear()
        codes = []
        for i in range(6):
            client = (first, second)[i % 2]
            token = csrf(client, "/login")
            r = client.post(
                "/login",
                data={"username": "erin", "password": "wrong password!", "_csrf_token": token},
                follow_redirects=False,
            )
            codes.append(r.status_code)
        assert codes == [401] * 5 + [429], codes
        token = csrf(first, "/login")
        right = first.post(
            "/login",
            data={"username": "erin", "password": "correct horse battery", "_csrf_token": token},
            follow_redirects=False,
        )
        assert right.status_code == 429  # locked for everyone, the right password included


class RedisFlush:
    """Forget the throttle's keys (the apps' namespace) so earlier runs do not count."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self) -> None:
        import asyncio

        async def flush() -> None:
            throttle = RedisThrottle(self.url)
            try:
                await throttle.store.delete_all()
            finally:
                await throttle.close()

        asyncio.run(flush())
