"""The readiness probe's database check (issue 16): a busy process is not a database outage,
and an outage still is one. Real SQLite files, real threads, a real event loop."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

from piccolo.engine.sqlite import SQLiteEngine

from app.db.engine import DatabaseProbe, Probe


def _database(path: Path) -> SQLiteEngine:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    return SQLiteEngine(path=str(path))


def test_database_probe_a_busy_loop_is_not_a_database_outage(tmp_path: Path) -> None:
    """Under 1,000 clients 3-6 of 25 probes said "database down": the check's answer waited
    for a loop too busy to read it, and that wait was counted as the database's. Here the loop
    is blocked (as a busy loop is) for longer than the timeout right after the check starts."""
    probe = DatabaseProbe(_database(tmp_path / "app.db"), timeout=0.5)

    async def run() -> Probe:
        task = asyncio.create_task(probe.check())
        await asyncio.sleep(0)  # the check starts...
        await asyncio.sleep(0)
        time.sleep(1.5)  # ...and the loop does not turn again for three timeouts
        return await task

    result = asyncio.run(run())
    assert result.ok, result
    assert result.ms < 500  # the database's own time, not the loop's lag


def test_database_probe_reports_a_missing_database(tmp_path: Path) -> None:
    path = tmp_path / "data" / "app.db"
    probe = DatabaseProbe(_database(path))
    assert asyncio.run(probe.check()).ok
    shutil.move(path.parent, tmp_path / "moved")  # the disk went away under the server
    result = asyncio.run(probe.check())
    assert not result.ok and "unable to open" in result.detail, result
    shutil.move(tmp_path / "moved", path.parent)
    assert asyncio.run(probe.check()).ok  # and back


def test_database_probe_never_creates_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    probe = DatabaseProbe(_database(path))
    path.unlink()
    result = asyncio.run(probe.check())
    assert not result.ok, result
    assert not path.exists()


def test_database_probe_a_database_that_does_not_answer_is_down(tmp_path: Path) -> None:
    """An exclusive lock held elsewhere (rollback journal): the database itself does not answer
    within the timeout, which is an outage however idle the process is."""
    path = tmp_path / "app.db"
    probe = DatabaseProbe(_database(path), timeout=0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    try:
        result = asyncio.run(probe.check())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not result.ok, result
    assert "locked" in result.detail, result
    assert asyncio.run(probe.check()).ok


def test_database_probe_while_busy_a_good_answer_is_reused_briefly_and_an_outage_is_not(
    tmp_path: Path,
) -> None:
    """Under overload a probe gets the last good answer (< 2 s old) at once while a fresh check
    runs behind it; the outage that check finds is what the next probe gets."""
    path = tmp_path / "data" / "app.db"
    probe = DatabaseProbe(_database(path))

    async def run() -> tuple[Probe, Probe, Probe]:
        first = await probe.check(busy=True)  # nothing to reuse yet: a real check
        shutil.move(path.parent, tmp_path / "moved")
        await asyncio.sleep(0.3)  # older than the refresh interval
        reused = await probe.check(busy=True)
        await asyncio.sleep(0.3)  # the refresh started behind it has found the outage
        after = await probe.check(busy=True)
        return first, reused, after

    first, reused, after = asyncio.run(run())
    assert first.ok and first.age_ms == 0, first
    assert reused.ok and reused.age_ms >= 300, reused
    assert not after.ok and "unable to open" in after.detail, after
