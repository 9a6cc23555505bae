"""Migrations and engine set-up on SQLite and PostgreSQL; the CLI's admin commands."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from dataclasses import replace
from typing import Any

import pytest
from piccolo.engine.sqlite import SQLiteEngine

from app.__main__ import main
from app.auth.tokens import hash_token
from app.config import ConfigError, Settings
from app.db.engine import make_engine
from app.db.migrate import migrate, pending_migrations
from app.db.tables import TABLES


def test_db_migrations_apply(db_settings: Settings) -> None:
    """``db_settings`` has just been migrated (SQLite file or fresh PostgreSQL database)."""
    engine = make_engine(db_settings)

    async def check() -> tuple[list[str], list[bool]]:
        pending = await pending_migrations(engine)
        exists = [await t.table_exists().run() for t in TABLES]
        return pending, exists

    pending, exists = asyncio.run(check())
    assert pending == [] and all(exists)
    assert migrate(db_settings) == []  # idempotent
    if db_settings.database_url is None:
        with sqlite3.connect(db_settings.sqlite_path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _migrate_after(settings: Settings, start: Any) -> str:  # start: a Manager().Barrier proxy
    start.wait()  # every process finds the same pending migrations at the same moment
    try:
        return ",".join(migrate(settings)) or "-"
    except Exception as exc:  # reported to the parent, which shows it
        return f"error: {type(exc).__name__}: {exc}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def unmigrated(request: pytest.FixtureRequest, web_settings: Settings) -> Settings:
    """A fresh database nobody has migrated yet: a SQLite file or a PostgreSQL database."""
    settings = web_settings
    if request.param == "postgres":
        settings = replace(settings, database_url=request.getfixturevalue("pg_url"))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def test_db_migrators_starting_together_apply_each_migration_once(unmigrated: Settings) -> None:
    # Dev-mode workers (APP_WORKERS > 1) each migrate at start-up, and replicas may each run
    # `python -m app migrate`: without a lock one of them crashed ("table already exists").
    settings = unmigrated
    processes = 4
    with multiprocessing.Manager() as manager:
        start = manager.Barrier(processes, timeout=60)
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            outcomes = pool.starmap(_migrate_after, [(settings, start)] * processes)
    assert not [o for o in outcomes if o.startswith("error")], outcomes
    applied = [o for o in outcomes if o != "-"]
    assert len(applied) == 1, outcomes  # one process applied them all, the others found none
    assert migrate(settings) == []


def test_db_migrate_waits_while_another_process_holds_the_lock(unmigrated: Settings) -> None:
    """The race above can pass by luck; this cannot: migrate must wait for the lock's holder."""
    import fcntl
    import threading

    import asyncpg

    from app.db.migrate import _ADVISORY_LOCK_KEY, migration_lock_path

    settings = unmigrated
    engine = make_engine(settings)
    done: list[list[str]] = []
    migrator = threading.Thread(target=lambda: done.append(migrate(settings)))

    async def hold_pg_lock_while(check: Any) -> None:  # another process's advisory lock
        assert settings.database_url is not None
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
            await asyncio.to_thread(check)
        finally:
            await conn.close()

    def while_held() -> None:
        migrator.start()
        migrator.join(timeout=1.5)
        assert migrator.is_alive() and not done  # still waiting for the lock
        if settings.database_url is None:
            # Nothing touches the file before the lock: switching a new file to WAL outside it
            # raced other migrators ("database is locked", 1 start in 40 with 4 migrators).
            assert not settings.sqlite_path.exists()

    if settings.database_url is not None:
        asyncio.run(hold_pg_lock_while(while_held))
    else:
        assert isinstance(engine, SQLiteEngine)
        with migration_lock_path(engine).open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # an open file description of its own
            while_held()
    migrator.join(timeout=30)
    assert done and done[0], "migrate applied the migrations once the lock was free"


def test_db_engine_selection(tmp_path: pytest.TempPathFactory) -> None:
    pg = make_engine(Settings(database_url="postgresql://postgres@127.0.0.1:5432/test"))
    assert pg.engine_type == "postgres"
    sqlite = make_engine(Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    assert sqlite.engine_type == "sqlite"
    assert sqlite.connection_kwargs["timeout"] > 0  # busy timeout
    with pytest.raises(ConfigError):
        make_engine(Settings(database_url="mysql://x"))


def test_db_cli_create_token_and_set_role(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from litestar.testing import TestClient  # noqa: F401  (register through the app below)

    from .conftest import make_client, register

    with make_client(sqlite_settings) as client:
        register(client, "henry")
    monkeypatch.setenv("APP_DATA_DIR", str(sqlite_settings.data_dir))
    monkeypatch.delenv("APP_DATABASE_URL", raising=False)
    assert main(["create-token", "henry", "--name", "scanner"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("slk_") and len(token) > 40
    with sqlite3.connect(sqlite_settings.sqlite_path) as conn:
        stored = conn.execute("SELECT token_hash, name FROM api_token").fetchall()
    assert stored == [(hash_token(token), "scanner")]  # only the hash is stored
    assert main(["set-role", "henry", "admin"]) == 0
    assert main(["create-token", "nobody"]) == 2
