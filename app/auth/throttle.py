"""Login throttling: failures within a window, counted per (account, address), per account,
per address and overall; any count at its limit blocks further tries.

- (account, address): a person mistyping; 5 failures.
- account: one account guessed from many addresses; 20 failures.
- address: many accounts (fresh usernames) guessed from one address; 20 failures.
- overall: a flood from many addresses; 300 failures in the window stop every login until it
  passes, which an administrator sees in the audit log (``login_throttled``).

Three backends behind one async interface (``check``, ``failed_async``, ``succeeded_async``):

- ``LoginThrottle``: per process and in memory (tests, and a single process that wants no
  writes); with several workers each keeps its own counts, which bounds guessing to
  workers x N per window.
- ``DatabaseThrottle`` (the default): one row per failure in ``login_failure``, in the
  database every replica shares, so N failures spread over the replicas lock the account and a
  restart forgets nothing.
- ``RedisThrottle`` (``APP_REDIS_URL``): the same counts as sorted sets in Redis/Valkey.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, Protocol

Key = tuple[str, ...]
ACCOUNT_CHARS = 64  # the column's width; longer names are cut alike on every replica
ADDRESS_CHARS = 64


class Throttle(Protocol):
    window_s: float

    async def check(self, account: str, address: str) -> int:
        """Seconds until another try is allowed; 0 when not blocked."""
        ...

    async def failed_async(self, account: str, address: str) -> None: ...

    async def succeeded_async(self, account: str, address: str) -> None: ...


def _wait(oldest_at_limit: float | None, window_s: float, now: float) -> float:
    return 0.0 if oldest_at_limit is None else oldest_at_limit + window_s - now


def _seconds(wait: float) -> int:
    return max(1, int(wait) + 1) if wait > 0 else 0


def _limits(pair: int, account: int, address: int, overall: int) -> dict[str, int]:
    return {"pair": pair, "account": account, "address": address, "overall": overall}


def _columns(account: str, address: str) -> tuple[str, str]:
    """The account and address as the shared backends store them: cut to the column widths."""
    return account.casefold()[:ACCOUNT_CHARS], address[:ADDRESS_CHARS]


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        per_account: int = 20,
        per_address: int = 20,
        overall: int = 300,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._limits = _limits(max_failures, per_account, per_address, overall)
        self._clock = clock
        self._failures: dict[Key, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    @staticmethod
    def _keys(account: str, address: str) -> list[Key]:
        name = account.casefold()
        return [("pair", name, address), ("account", name), ("address", address), ("overall",)]

    def _prune(self, key: Key) -> deque[float]:
        entries = self._failures[key]
        cutoff = self._clock() - self.window_s
        while entries and entries[0] < cutoff:
            entries.popleft()
        if not entries:
            del self._failures[key]  # fresh usernames must not grow the table for ever
            return deque()
        return entries

    def retry_after(self, account: str, address: str) -> int:
        """Seconds until another try is allowed; 0 when not blocked."""
        wait = 0.0
        with self._lock:
            for key in self._keys(account, address):
                entries = self._prune(key)
                limit = self._limits[key[0]]
                if len(entries) >= limit:
                    # free again when the oldest failure that keeps it at the limit expires
                    wait = max(wait, entries[-limit] + self.window_s - self._clock())
        return _seconds(wait)

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys(account, address):
                self._prune(key)
                self._failures[key].append(now)

    def succeeded(self, account: str, address: str) -> None:
        """A right password clears that person's own mistakes, not the wider counts."""
        with self._lock:
            self._failures.pop(("pair", account.casefold(), address), None)

    async def check(self, account: str, address: str) -> int:
        return self.retry_after(account, address)

    async def failed_async(self, account: str, address: str) -> None:
        self.failed(account, address)

    async def succeeded_async(self, account: str, address: str) -> None:
        self.succeeded(account, address)


# (kind, SQL condition) of each count; the pair's count leaves out failures a login forgave.
_DB_KEYS = (
    ("pair", "account = {} AND address = {} AND NOT cleared", 2),
    ("account", "account = {}", 1),
    ("address", "address = {}", 1),
    ("overall", "1 = 1", 0),
)


class DatabaseThrottle:
    """The counts in the shared database (``login_failure``): every replica sees them.

    One query answers all four counts: for each, the time of the failure that holds it at its
    limit (the limit-th newest in the window), or NULL below the limit. Times are the app's
    clock (seconds since the epoch): replicas must keep their clocks in sync (NTP), as they
    must for the session cookies' idle timeout anyway. Rows older than the window are pruned
    at most once a minute per process.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        per_account: int = 20,
        per_address: int = 20,
        overall: int = 300,
        prune_every_s: float = 60.0,
    ) -> None:
        self.window_s = window_s
        self._limits = _limits(max_failures, per_account, per_address, overall)
        self._clock = clock
        self._prune_every_s = prune_every_s
        self._pruned_at = 0.0

    @staticmethod
    def _table() -> Any:
        from app.db.tables import LoginFailure  # the auth layer's tables, bound at start-up

        return LoginFailure

    async def check(self, account: str, address: str) -> int:
        table = self._table()
        name, addr = _columns(account, address)
        now = self._clock()
        cutoff = now - self.window_s
        parts, args = [], []
        for kind, condition, n in _DB_KEYS:
            limit = self._limits[kind]
            parts.append(
                "(SELECT CASE WHEN count(*) >= {} THEN min(at) END FROM (SELECT at FROM "
                f"login_failure WHERE {condition} AND at > {{}} ORDER BY at DESC LIMIT {{}}) "
                f"AS {kind}_window) AS {kind}"
            )
            args += [limit, *([name, addr][:n] if kind != "address" else [addr]), cutoff, limit]
        rows = await table.raw("SELECT " + ", ".join(parts), *args).run()
        row = rows[0] if rows else {}
        wait = max(_wait(row.get(kind), self.window_s, now) for kind, _, _ in _DB_KEYS)
        return _seconds(wait)

    async def failed_async(self, account: str, address: str) -> None:
        table = self._table()
        now = self._clock()
        name, addr = _columns(account, address)
        await table.insert(table(account=name, address=addr, at=now, cleared=False)).run()
        if now - self._pruned_at >= self._prune_every_s:
            self._pruned_at = now
            await table.delete().where(table.at < now - self.window_s).run()

    async def succeeded_async(self, account: str, address: str) -> None:
        table = self._table()
        name, addr = _columns(account, address)
        await (
            table.update({table.cleared: True})
            .where((table.account == name) & (table.address == addr) & (table.cleared.eq(False)))
            .run()
        )


class RedisThrottle:
    """The counts as sorted sets (member: a unique id, score: the time) in Redis or Valkey.

    The connection comes from Litestar's ``RedisStore`` (its client and namespace), but the
    store interface itself has no atomic increment (``get`` then ``set`` loses failures that
    land together on two replicas), so the counts use the client's sorted-set commands in one
    MULTI/EXEC pipeline per call. Each key expires with its window.
    """

    def __init__(
        self,
        url: str,
        max_failures: int = 5,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        per_account: int = 20,
        per_address: int = 20,
        overall: int = 300,
        namespace: str = "skin-lesion-throttle",
    ) -> None:
        from litestar.stores.redis import RedisStore
        from redis.asyncio import Redis

        self.window_s = window_s
        self._limits = _limits(max_failures, per_account, per_address, overall)
        self._clock = clock
        self._client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.store = RedisStore(self._client, namespace=namespace)
        self._counter = 0

    def _keys(self, account: str, address: str) -> dict[str, str]:
        name, addr = _columns(account, address)
        return {
            "pair": self.store._make_key(f"pair:{name}\x00{addr}"),
            "account": self.store._make_key(f"account:{name}"),
            "address": self.store._make_key(f"address:{addr}"),
            "overall": self.store._make_key("overall"),
        }

    async def check(self, account: str, address: str) -> int:
        now = self._clock()
        keys = self._keys(account, address)
        pipe = self._client.pipeline(transaction=True)
        for kind, key in keys.items():
            pipe.zremrangebyscore(key, "-inf", now - self.window_s)
            limit = self._limits[kind]
            # the limit-th newest failure, if there are that many
            pipe.zrevrange(key, limit - 1, limit - 1, withscores=True)
        results = await pipe.execute()
        wait = 0.0
        for i, _kind in enumerate(keys):
            found = results[2 * i + 1]
            if found:
                wait = max(wait, _wait(float(found[0][1]), self.window_s, now))
        return _seconds(wait)

    async def failed_async(self, account: str, address: str) -> None:
        import os

        now = self._clock()
        self._counter += 1
        member = f"{now:.6f}:{os.getpid()}:{self._counter}:{os.urandom(4).hex()}"
        pipe = self._client.pipeline(transaction=True)
        for key in self._keys(account, address).values():
            pipe.zadd(key, {member: now})
            pipe.expire(key, int(self.window_s) + 1)
        await pipe.execute()

    async def succeeded_async(self, account: str, address: str) -> None:
        await self._client.delete(self._keys(account, address)["pair"])

    async def close(self) -> None:
        await self._client.aclose()


def make_throttle(redis_url: str | None, kind: str = "database") -> Throttle:
    """``APP_REDIS_URL`` set: Redis; else the database (``memory`` for a single process)."""
    if redis_url:
        return RedisThrottle(redis_url)
    if kind == "memory":
        return LoginThrottle(clock=time.monotonic)
    return DatabaseThrottle()
