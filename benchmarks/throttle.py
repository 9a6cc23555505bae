"""What the shared login throttle costs per login attempt: memory, SQLite, PostgreSQL, Redis.

``python -m benchmarks.throttle [--rounds 2000] [--pg postgresql://...] [--redis redis://...]``

A failed login asks ``check`` then records ``failed_async``; a good one asks ``check`` then
``succeeded_async``. Each round here does check + failed, on a table or keyspace that holds
the failures of the rounds before it (up to one window), against services on this machine.
For scale: argon2's verify, which every attempt pays, takes about 90 ms here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from app.auth.throttle import DatabaseThrottle, LoginThrottle, RedisThrottle, Throttle


async def _rounds(throttle: Throttle, rounds: int) -> dict[str, float]:
    times: list[float] = []
    for i in range(rounds):
        account, address = f"user{i % 50}", f"10.0.{i % 200}.1"
        t0 = time.perf_counter()
        await throttle.check(account, address)
        await throttle.failed_async(account, address)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


async def _database(url: str | None, rounds: int) -> dict[str, float]:
    from app.config import Settings
    from app.db import engine as db_engine
    from app.db.migrate import apply_migrations

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=url)
        engine = db_engine.make_engine(settings)
        db_engine.bind(engine)
        await db_engine.start(engine)
        try:
            await apply_migrations(engine)
            return await _rounds(DatabaseThrottle(), rounds)
        finally:
            await db_engine.stop(engine)


async def _postgres(admin_url: str, rounds: int) -> dict[str, float]:
    import asyncpg

    name = f"throttle_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        return await _database(admin_url.rsplit("/", 1)[0] + f"/{name}", rounds)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def _redis(url: str, rounds: int) -> dict[str, float]:
    throttle = RedisThrottle(url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    try:
        return await _rounds(throttle, rounds)
    finally:
        await throttle.store.delete_all()
        await throttle.close()


async def measure(rounds: int, pg: str | None, redis: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {"rounds": rounds}
    results["memory"] = await _rounds(LoginThrottle(), rounds)
    results["sqlite"] = await _database(None, rounds)
    for label, run, url in (("postgresql", _postgres, pg), ("redis", _redis, redis)):
        if not url:
            continue
        try:
            results[label] = await run(url, rounds)
        except (OSError, ConnectionError) as exc:
            results[label] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throttle", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    for name, figures in asyncio.run(measure(args.rounds, args.pg, args.redis)).items():
        print(f"{name:>10}: {figures}")


if __name__ == "__main__":
    main()
