"""Database driver selection that must happen before Piccolo is imported."""

from __future__ import annotations

import sys


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in {"postgres", "postgresql"}  # type: ignore[union-attr]


def hide_unused_postgres_driver(database_url: str | None) -> bool:
    """Keep asyncpg out of a process that serves SQLite; returns True when it did.

    Piccolo imports asyncpg whenever it is installed (``piccolo.querystring``), which cost a
    SQLite kiosk 14 MB of RSS and 30 ms of start-up here (measured; RSS is a target). A ``None``
    entry in ``sys.modules`` makes ``find_spec`` report it missing; Piccolo's PostgreSQL engine,
    which this process will not use, loads it lazily. Call before anything imports Piccolo.
    """
    if is_postgres(database_url) or "piccolo" in sys.modules:
        return False
    sys.modules.setdefault("asyncpg", None)  # type: ignore[arg-type]
    return True
