"""Apply the committed Piccolo migrations: `python -m app migrate` and dev-mode start-up."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from app.config import Settings
from app.db.engine import bind, enable_wal, make_engine, start, stop

# Kept here rather than imported from piccolo_app: piccolo.conf.apps imports `black` (~0.2 s),
# which start-up should only pay when there is something to migrate.
APP_NAME = "clinic"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "piccolo_migrations"
_ADVISORY_LOCK_KEY = 0x736B696E_6D696772  # "skinmigr": this service's migration lock
_MIGRATION_ID = re.compile(r"""^ID\s*=\s*["']([^"']+)["']""", re.MULTILINE)

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """Migrations failed or are pending where they must not be."""


async def pending_migrations(engine: Engine[Any]) -> list[str]:
    """Ids of committed migrations not yet applied to the database behind ``engine``."""
    bind(engine)
    ids = {
        match.group(1)
        for path in MIGRATIONS_DIR.glob("*.py")
        if (match := _MIGRATION_ID.search(path.read_text()))
    }
    if not await Migration.table_exists().run():
        return sorted(ids)
    done = set(await Migration.get_migrations_which_ran(app_name=APP_NAME))
    return sorted(ids - done)


def migration_lock_path(engine: SQLiteEngine) -> Path:
    """The file whose lock SQLite migrators take: beside the database, in its directory."""
    db_path = Path(engine.path)
    return db_path.with_name(db_path.name + ".migrate-lock")


def _try_flock(lock_file: IO[str]) -> bool:
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.asynccontextmanager
async def _one_migrator_at_a_time(engine: Engine[Any]) -> AsyncIterator[None]:
    """Hold a lock that other processes migrating the same database wait for.

    Dev-mode workers (APP_WORKERS > 1) each migrate at start-up, and replicas may each run
    `python -m app migrate`; two of them creating the same tables crashed one of them.
    PostgreSQL: a session-level advisory lock on a connection of its own, released when it
    closes, even if this process dies (it does not hold through a transaction-pooling proxy
    such as PgBouncer's transaction mode: migrate against PostgreSQL itself). SQLite: an
    exclusive lock on a file beside the database, which also dies with its process.
    """
    if isinstance(engine, PostgresEngine):
        import asyncpg  # imported here: a SQLite deployment never loads the driver

        conn = await asyncpg.connect(**engine.config)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _ADVISORY_LOCK_KEY):
                log.info("waiting for another process's migrations to finish")
                await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
            yield
        finally:
            await conn.close()
        return
    if not isinstance(engine, SQLiteEngine):
        raise TypeError(f"no migration lock for {type(engine).__name__}")
    with migration_lock_path(engine).open("a") as lock_file:
        if not _try_flock(lock_file):
            log.info("waiting for another process's migrations to finish")
            # Polled, not blocking in a thread, so a cancelled start-up stops waiting.
            while not _try_flock(lock_file):
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


async def apply_migrations(engine: Engine[Any]) -> list[str]:
    """Apply pending migrations on an engine that is already started; returns the ids applied."""
    async with _one_migrator_at_a_time(engine):
        # Under the lock: switching a new SQLite file to WAL takes an exclusive lock that does
        # not wait on the busy timeout, so migrators doing it together failed "database is locked".
        enable_wal(engine)
        return await _apply_pending(engine)


async def _apply_pending(engine: Engine[Any]) -> list[str]:
    todo = await pending_migrations(engine)
    if not todo:
        return []
    from piccolo.apps.migrations.commands.forwards import run_forwards

    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # Piccolo prints progress with emoji; keep it in logs
        result = await run_forwards(app_name=APP_NAME, migration_id="all")
    for line in out.getvalue().splitlines():
        log.info("piccolo: %s", line)
    if not result.success:
        raise MigrationError(f"migrations failed: {result.message}")
    log.info("applied %d migration(s): %s", len(todo), ", ".join(todo))
    return todo


async def _migrate(settings: Settings) -> list[str]:
    engine = make_engine(settings)
    await start(engine)
    try:
        return await apply_migrations(engine)
    finally:
        await stop(engine)


def migrate(settings: Settings) -> list[str]:
    """Apply all pending migrations to the configured database (a CLI entry point)."""
    return asyncio.run(_migrate(settings))
