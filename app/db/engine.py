"""Engine set-up: SQLite (WAL, busy timeout) by default, PostgreSQL via APP_DATABASE_URL."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine
from piccolo.table import Table

from app.config import ConfigError, Settings
from app.db.drivers import is_postgres

log = logging.getLogger(__name__)

PICCOLO_CONF = "app.db.piccolo_conf"
SQLITE_BUSY_TIMEOUT_S = 10.0


def make_engine(settings: Settings) -> Engine[Any]:
    """Build (not connect) the engine the settings select."""
    url = settings.database_url
    if url and is_postgres(url):
        return PostgresEngine(config={"dsn": url})
    if url and not url.startswith("sqlite:///"):
        raise ConfigError(
            f"APP_DATABASE_URL must be postgresql://… or sqlite:///path, got {url.split(':')[0]}:…"
        )
    path = Path(url.removeprefix("sqlite:///")) if url else settings.sqlite_path
    # sqlite3's `timeout` is the busy timeout: writers wait instead of failing "database is locked".
    return SQLiteEngine(path=str(path), timeout=SQLITE_BUSY_TIMEOUT_S)


def enable_wal(engine: Engine[Any]) -> None:
    """Switch a SQLite file to WAL (persistent in the file); readers then never block writers."""
    if not isinstance(engine, SQLiteEngine):
        return
    path = Path(engine.path)
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        log.warning("SQLite %s is in %s mode, not WAL", path, mode)


def bind(engine: Engine[Any]) -> None:
    """Point our tables, Piccolo's migration table and the PICCOLO_CONF module at ``engine``."""
    from piccolo.apps.migrations.tables import Migration

    import app.db.piccolo_conf as conf
    from app.db.tables import TABLES

    os.environ.setdefault("PICCOLO_CONF", PICCOLO_CONF)
    conf.DB = engine
    tables: tuple[type[Table], ...] = (*TABLES, Migration)
    for table in tables:
        table._meta.db = engine


async def start(engine: Engine[Any]) -> None:
    """Open the PostgreSQL pool (a connection per query otherwise: 6.5 ms against 0.3 ms), or
    make the SQLite file's directory."""
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(min_size=1, max_size=10)
    elif isinstance(engine, SQLiteEngine):
        Path(engine.path).parent.mkdir(parents=True, exist_ok=True)


async def stop(engine: Engine[Any]) -> None:
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()
