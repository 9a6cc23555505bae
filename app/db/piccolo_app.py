"""The Piccolo app config: tables and the committed migrations folder."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig

from app.db.tables import TABLES

APP_NAME = "clinic"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "piccolo_migrations"

APP_CONFIG = AppConfig(
    app_name=APP_NAME,
    migrations_folder_path=str(MIGRATIONS_DIR),
    table_classes=list(TABLES),
    migration_dependencies=[],
    commands=[],
)
