"""The Piccolo app config: tables and the committed migrations folder."""

from __future__ import annotations

from piccolo.conf.apps import AppConfig

from app.db.migrate import APP_NAME, MIGRATIONS_DIR
from app.db.tables import TABLES

APP_CONFIG = AppConfig(
    app_name=APP_NAME,
    migrations_folder_path=str(MIGRATIONS_DIR),
    table_classes=list(TABLES),
    migration_dependencies=[],
    commands=[],
)
