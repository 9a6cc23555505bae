"""API tokens are looked up once per few seconds, not per request, and their use still counted."""

from __future__ import annotations

import asyncio

from app.auth.tokens import TokenCache, create_token
from app.config import Settings
from app.db.engine import bind, make_engine, start, stop
from app.db.tables import ApiToken, User


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_expires_counts_uses_and_sees_a_deactivated_account(
    sqlite_settings: Settings,
) -> None:
    async def scenario() -> None:
        engine = make_engine(sqlite_settings)
        bind(engine)
        await start(engine)
        try:
            user = User(username="tok", username_key="tok", password_hash="!")
            await user.save().run()
            token = await create_token(user.id, "station")
            clock = Clock()
            cache = TokenCache(ttl_s=5, flush_s=30, clock=clock)
            for _ in range(3):
                assert (await cache.user_for(token))["username"] == "tok"  # type: ignore[index]
            await User.update({User.active: False}).where(User.id == user.id).run()
            assert await cache.user_for(token) is not None  # within the 5 s it remembers
            clock.now += 6
            assert await cache.user_for(token) is None  # then it asks again: refused
            assert await cache.user_for("slk_not-a-token") is None
            await cache.flush()
            (row,) = await ApiToken.select(ApiToken.uses, ApiToken.last_used_at).run()
            assert row["uses"] == 4 and row["last_used_at"] is not None
        finally:
            await stop(engine)

    asyncio.run(scenario())
