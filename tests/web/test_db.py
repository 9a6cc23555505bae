"""Migrations and engine set-up on SQLite and PostgreSQL; the CLI's admin commands."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from dataclasses import replace
from typing import Any

import pytest

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


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_db_migrators_starting_together_apply_each_migration_once(
    db: str, web_settings: Settings, request: pytest.FixtureRequest
) -> None:
    # Dev-mode workers (APP_WORKERS > 1) each migrate at start-up, and replicas may each run
    # `python -m app migrate`: without a lock one of them crashed ("table already exists").
    settings = web_settings
    if db == "postgres":
        settings = replace(settings, database_url=request.getfixturevalue("pg_url"))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processes = 4
    with multiprocessing.Manager() as manager:
        start = manager.Barrier(processes)
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            outcomes = pool.starmap(_migrate_after, [(settings, start)] * processes)
    assert not [o for o in outcomes if o.startswith("error")], outcomes
    assert sorted(outcomes)[:-1] == ["-"] * (processes - 1), outcomes  # one applied them all
    assert migrate(settings) == []


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
