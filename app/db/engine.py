"""Engine set-up: SQLite (WAL, busy timeout) by default, PostgreSQL via APP_DATABASE_URL."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine
from piccolo.table import Table

from app.config import ConfigError, Settings
from app.db.drivers import is_postgres
from app.storage import private_dir, private_file

log = logging.getLogger(__name__)

PICCOLO_CONF = "app.db.piccolo_conf"
SQLITE_BUSY_TIMEOUT_S = 10.0
# PostgreSQL bounds, so an outage answers 503 instead of holding requests (a SIGSTOPped server
# held them with no end). Queries here take milliseconds; a page makes a handful.
PG_CONNECT_TIMEOUT_S = 5.0  # opening a connection (asyncpg's default is 60 s)
PG_ACQUIRE_TIMEOUT_S = 5.0  # waiting for a pooled connection (Piccolo passes none: forever)
PG_STATEMENT_TIMEOUT_MS = 10_000  # server side: a slow or blocked statement is cancelled
PG_COMMAND_TIMEOUT_S = 12.0  # client side: a server that stopped answering (after the above)


class _BoundedPool:
    """An asyncpg pool whose ``acquire`` waits at most ``timeout`` seconds by default.

    Piccolo calls ``pool.acquire()`` with no timeout (queries and transactions); the same
    timeout also bounds resetting the connection on release (asyncpg's rule).
    """

    def __init__(self, pool: Any, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return self._pool.acquire(timeout=self._timeout if timeout is None else timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class BoundedPostgresEngine(PostgresEngine):
    """Piccolo's PostgresEngine with a bounded pool acquire (see ``_BoundedPool``)."""

    async def start_connection_pool(self, **kwargs: Any) -> None:
        await super().start_connection_pool(**kwargs)
        if self.pool is not None and not isinstance(self.pool, _BoundedPool):
            self.pool = _BoundedPool(self.pool, PG_ACQUIRE_TIMEOUT_S)


def postgres_config(url: str) -> dict[str, Any]:
    """asyncpg connection arguments: the DSN plus the timeouts that end outage hangs."""
    return {
        "dsn": url,
        "timeout": PG_CONNECT_TIMEOUT_S,
        "command_timeout": PG_COMMAND_TIMEOUT_S,
        "server_settings": {"statement_timeout": str(PG_STATEMENT_TIMEOUT_MS)},
    }


def make_engine(settings: Settings) -> Engine[Any]:
    """Build (not connect) the engine the settings select."""
    url = settings.database_url
    if url and is_postgres(url):
        return BoundedPostgresEngine(config=postgres_config(url))
    if url and not url.startswith("sqlite:///"):
        raise ConfigError(
            f"APP_DATABASE_URL must be postgresql://… or sqlite:///path, got {url.split(':')[0]}:…"
        )
    path = Path(url.removeprefix("sqlite:///")) if url else settings.sqlite_path
    # sqlite3's `timeout` is the busy timeout: writers wait instead of failing "database is locked".
    return SQLiteEngine(path=str(path), timeout=SQLITE_BUSY_TIMEOUT_S)


def _tighten_sqlite_files(path: Path) -> None:
    """The database file and its -wal/-shm files, where they exist, to 0600."""
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists():
            private_file(name)


def enable_wal(engine: Engine[Any]) -> None:
    """Switch a SQLite file to WAL (persistent in the file); readers then never block writers."""
    if not isinstance(engine, SQLiteEngine):
        return
    path = Path(engine.path)
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        # connect() created a new file under the umask (0644): patient records are 0600, and
        # SQLite gives the -wal and -shm files the database file's mode when it makes them.
        _tighten_sqlite_files(path)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        log.warning("SQLite %s is in %s mode, not WAL", path, mode)


def bind(engine: Engine[Any]) -> None:
    """Point our tables, Piccolo's migration table and the PICCOLO_CONF module at ``engine``."""
    from piccolo.apps.migrations.tables import Migration

    from app.db.tables import TABLES

    os.environ.setdefault("PICCOLO_CONF", PICCOLO_CONF)
    # By name, as Piccolo itself finds it: piccolo_conf builds its DB with make_engine above.
    conf = importlib.import_module(PICCOLO_CONF)
    conf.DB = engine  # type: ignore[attr-defined]
    tables: tuple[type[Table], ...] = (*TABLES, Migration)
    for table in tables:
        table._meta.db = engine


async def start(engine: Engine[Any]) -> None:
    """Open the PostgreSQL pool (a connection per query otherwise: 6.5 ms against 0.3 ms), or
    make the SQLite file's directory."""
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(min_size=1, max_size=10)
    elif isinstance(engine, SQLiteEngine):
        # Not the file itself: nothing may touch it before the migration lock (enable_wal).
        private_dir(Path(engine.path).parent)
        _tighten_sqlite_files(Path(engine.path))


async def stop(engine: Engine[Any]) -> None:
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()


@dataclass(frozen=True, slots=True)
class Probe:
    """One database check: whether it answered, how fast, and why not."""

    ok: bool
    ms: float
    detail: str = ""
    age_ms: float = 0.0  # > 0: a recent answer given again (only while the server is busy)


# While the server refuses work, /health/ready answers with a good database check up to this old
# and refreshes it behind the answer: under 1,000 clients a probe that waited for a check of its
# own waited for a thread and the busy loop several times over. A failed check is never reused.
BUSY_MAX_AGE_S = 2.0
BUSY_REFRESH_S = 0.25


class _SqliteCheck:
    """One SQLite check in a thread of its own, timing itself.

    ``began`` and ``ended`` (monotonic) are set by that thread, so the event loop can tell a
    database that is slow to answer from a check that has not run yet, or whose answer the loop
    has not read yet: under 1,000 clients on 2 cores the loop and the CPU were what was slow.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.began = 0.0
        self.ended = 0.0
        self.error = ""
        self.done = threading.Event()

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            # mode=rw: a missing file is an outage, not a new empty database.
            # Half the timeout for a lock: a locked database says so before the probe gives up.
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=self.timeout / 2)
            try:
                conn.execute("PRAGMA schema_version").fetchone()  # reads the file's header
            finally:
                conn.close()
        except Exception as exc:  # any failure to answer is "down", with its reason
            self.error = f"{type(exc).__name__}: {exc}"[:200]
        self.ended = time.monotonic()
        self.done.set()

    @property
    def ms(self) -> float:
        return ((self.ended or time.monotonic()) - self.began) * 1000 if self.began else 0.0


class DatabaseProbe:
    """A database check within ``timeout`` seconds, shared by concurrent readiness probes.

    One check runs at a time and every probe that arrives meanwhile shares its answer, so a
    flood of probes against a frozen database holds one connection, not the whole pool.
    ``max_age`` (seconds) reuses an answer for longer; 0 reports an outage at once.

    SQLite is checked with one blocking call in a thread of its own (``_SqliteCheck``), not
    through aiosqlite's thread and its six hops back to the loop, and the timeout applies to
    the database's own time, measured in that thread. Under overload 3-6 of 25 probes said
    "database down" (issue 16): each of those hops waited for a busy loop, and the loop's lag
    was counted as the database's. A check that has not started, or whose answer the loop has
    not read yet, is waited for up to ``busy_limit`` seconds; a database that does not answer
    within ``timeout`` once asked is down, as is one that fails.
    """

    def __init__(
        self,
        engine: Engine[Any],
        timeout: float = 1.0,
        max_age: float = 0.0,
        busy_limit: float = 10.0,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.max_age = max_age
        self.busy_limit = busy_limit
        self._last: tuple[float, Probe] | None = None
        self._running: asyncio.Task[Probe] | None = None
        self._stuck: _SqliteCheck | None = None  # a check that never returned (a hung disk)

    async def check(self, busy: bool = False) -> Probe:
        """The database's state; ``busy``: the server is refusing work, so a good answer up to
        ``BUSY_MAX_AGE_S`` old is given at once while a fresh one is fetched behind it."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.max_age:
            return self._last[1]
        recent = self.recent() if busy else None
        if recent is not None:
            return recent
        # shield: one caller's cancellation (a client hanging up) leaves the check running.
        return await asyncio.shield(self._start())

    def recent(self) -> Probe | None:
        """The last answer if it was good and is under ``BUSY_MAX_AGE_S`` old, with a fresh
        check started behind it once it is ``BUSY_REFRESH_S`` old; else None. On the loop."""
        if self._last is None or not self._last[1].ok:
            return None
        age = time.monotonic() - self._last[0]
        if age >= BUSY_MAX_AGE_S:
            return None
        if age > BUSY_REFRESH_S:
            self._start()
        return replace(self._last[1], age_ms=round(age * 1000, 1))

    def _start(self) -> asyncio.Task[Probe]:
        """The check in flight, or a new one; its answer is kept for the next caller."""
        if self._running is None or self._running.done():
            ping = self._ping_sqlite() if isinstance(self.engine, SQLiteEngine) else self._ping()
            self._running = asyncio.get_running_loop().create_task(self._keep(ping))
        return self._running

    async def _keep(self, ping: Coroutine[Any, Any, Probe]) -> Probe:
        probe = await ping
        self._last = (time.monotonic(), probe)
        return probe

    async def _ping(self) -> Probe:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(self.engine.run_ddl("SELECT 1"), self.timeout)
        except TimeoutError:
            detail = f"no answer within {self.timeout:g} s"
        except Exception as exc:  # any failure to answer is "down", with its reason
            detail = f"{type(exc).__name__}: {exc}"[:200]
        else:
            return Probe(True, (time.perf_counter() - t0) * 1000)
        return Probe(False, (time.perf_counter() - t0) * 1000, detail)

    async def _ping_sqlite(self) -> Probe:
        stuck = self._stuck
        if stuck is not None:
            if not stuck.done.is_set():  # one hung thread is enough: no second one
                return Probe(False, stuck.ms, f"no answer for {stuck.ms / 1000:.0f} s")
            self._stuck = None
        assert isinstance(self.engine, SQLiteEngine)
        check = _SqliteCheck(str(self.engine.path), self.timeout)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            check.run()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=finished, name="database-probe", daemon=True).start()
        asked = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(done), 0.1)
                break
            except TimeoutError:
                pass
            if check.ended:  # answered: only the loop was late to read it
                break
            now = time.monotonic()
            if check.began and now - check.began >= self.timeout:
                self._stuck = check
                return Probe(False, check.ms, f"no answer within {self.timeout:g} s")
            if now - asked >= self.busy_limit:  # the check could not even start
                self._stuck = check
                return Probe(False, 0.0, f"the check did not run within {self.busy_limit:g} s")
        if check.error:
            return Probe(False, check.ms, check.error)
        return Probe(True, check.ms)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
