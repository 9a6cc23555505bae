"""PICCOLO_CONF module for the Piccolo CLI and the migration runner.

``DB`` is built from ``APP_*`` settings; ``app.db.engine.bind`` replaces it at run time so
the CLI, the migration runner and the app always talk to the same database.
"""

from __future__ import annotations

from typing import Any

from piccolo.conf.apps import AppRegistry
from piccolo.engine.base import Engine

from app.config import Settings
from app.db.engine import make_engine

DB: Engine[Any] = make_engine(Settings.from_env())

APP_REGISTRY = AppRegistry(apps=["app.db.piccolo_app"])
