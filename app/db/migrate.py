"""Apply the committed Piccolo migrations: `python -m app migrate` and dev-mode start-up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import Any

from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.commands.forwards import run_forwards
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine

from app.config import Settings
from app.db.engine import bind, enable_wal, make_engine, start, stop
from app.db.piccolo_app import APP_CONFIG, APP_NAME

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """Migrations failed or are pending where they must not be."""


async def pending_migrations(engine: Engine[Any]) -> list[str]:
    """Ids of committed migrations not yet applied to the database behind ``engine``."""
    bind(engine)
    manager = BaseMigrationManager()
    modules = manager.get_migration_modules(APP_CONFIG.resolved_migrations_folder_path)
    ids = set(manager.get_migration_ids(modules))
    if not await Migration.table_exists().run():
        return sorted(ids)
    done = set(await Migration.get_migrations_which_ran(app_name=APP_NAME))
    return sorted(ids - done)


async def apply_migrations(engine: Engine[Any]) -> list[str]:
    """Apply pending migrations on an engine that is already started; returns the ids applied."""
    enable_wal(engine)
    todo = await pending_migrations(engine)
    if not todo:
        return []
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
