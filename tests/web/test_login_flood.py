"""Login under attack: throttled per account, per address and overall; argon2 work bounded."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher

from app.auth.passwords import ARGON2_MEMORY_KIB, default_hasher
from app.auth.throttle import LoginThrottle
from app.config import Settings

from .conftest import csrf, make_client, register


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fresh_usernames_from_one_address_are_throttled() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for i in range(20):
        assert throttle.retry_after(f"user{i}", "10.0.0.1") == 0
        throttle.failed(f"user{i}", "10.0.0.1")
    assert throttle.retry_after("someone-new", "10.0.0.1") > 0  # per address
    assert throttle.retry_after("someone-new", "10.0.0.2") == 0  # others are not affected
    clock.now += 601
    assert throttle.retry_after("someone-new", "10.0.0.1") == 0  # the window passes


def test_one_account_from_many_addresses_is_throttled() -> None:
    throttle = LoginThrottle(clock=Clock())
    for i in range(20):
        throttle.failed("alice", f"10.0.{i}.1")
    assert throttle.retry_after("alice", "192.168.1.1") > 0  # per account
    assert throttle.retry_after("bob", "192.168.1.1") == 0


def test_a_flood_from_everywhere_is_throttled_overall() -> None:
    throttle = LoginThrottle(clock=Clock(), overall=50)
    for i in range(50):
        throttle.failed(f"user{i}", f"10.{i}.0.1")
    assert throttle.retry_after("carol", "172.16.0.1") > 0


def test_the_table_does_not_grow_with_fresh_usernames() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for i in range(1000):
        throttle.failed(f"user{i}", f"10.{i % 250}.0.1")
    clock.now += 601
    throttle.retry_after("x", "y")
    for i in range(1000):
        throttle.retry_after(f"user{i}", f"10.{i % 250}.0.1")
    assert len(throttle._failures) == 0


def test_argon2_parameters_a_kiosk_can_afford() -> None:
    hasher = default_hasher()
    assert hasher.memory_cost == ARGON2_MEMORY_KIB <= 19 * 1024
    assert hasher.type.name == "ID"
    old = PasswordHasher().hash("a long enough password")  # argon2-cffi's defaults
    assert hasher.check_needs_rehash(old)  # so old hashes move to the new parameters


def test_verifications_beyond_the_bound_are_refused_at_once(
    sqlite_settings: Settings,
) -> None:
    # A slow hasher (argon2 at 64 MiB, t=6) keeps two verifications busy while more arrive.
    with make_client(sqlite_settings) as client:
        register(client, "alice")
        client.app.state.password_hasher = PasswordHasher(time_cost=6, memory_cost=65536)
        statuses: list[int] = []
        retry: list[str | None] = []

        barrier = threading.Barrier(6)

        def same_app(i: int) -> None:
            token = csrf(client)
            barrier.wait()
            r = client.post(
                "/login",
                data={"username": f"nobody{i}", "password": "x" * 12, "_csrf_token": token},
                follow_redirects=False,
            )
            statuses.append(r.status_code)
            retry.append(r.headers.get("retry-after"))

        threads = [threading.Thread(target=same_app, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses.count(429) >= 1, statuses  # refused, not queued behind argon2
        assert statuses.count(401) >= 1 and statuses.count(401) + statuses.count(429) == 6
        assert all(r == "1" for s, r in zip(statuses, retry, strict=True) if s == 429)
