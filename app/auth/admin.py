"""Account administration for the command line: API tokens and roles."""

from __future__ import annotations

import asyncio

from app.config import Settings
from app.db import engine as db_engine
from app.db.tables import ROLES, User


class AdminError(RuntimeError):
    """An administrative command cannot be carried out (unknown user, bad role)."""


async def _with_db(settings: Settings, username: str, action: str, arg: str) -> str:
    from app import audit
    from app.auth.tokens import create_token

    engine = db_engine.make_engine(settings)
    db_engine.bind(engine)
    await db_engine.start(engine)
    try:
        user = (
            await User.select(User.id, User.username)
            .where(User.username_key == username.casefold())
            .first()
            .run()
        )
        if user is None:
            raise AdminError(f"no user named {username!r}")
        if action == "token":
            token = await create_token(user["id"], arg)
            await audit.record(
                "token_created",
                actor_id=user["id"],
                actor_name=user["username"],
                address="cli",
                target=token[:10],
            )
            return token
        if arg not in ROLES:
            raise AdminError(f"role must be one of {', '.join(ROLES)}")
        await User.update({User.role: arg}).where(User.id == user["id"]).run()
        await audit.record(
            "role_changed",
            actor_id=None,
            actor_name="cli",
            address="cli",
            target=str(user["id"]),
            detail=f"{user['username']} -> {arg}",
        )
        return arg
    finally:
        await db_engine.stop(engine)


def create_api_token(settings: Settings, username: str, name: str = "cli") -> str:
    """Create an API token for ``username``; returns the plain token (shown once)."""
    return asyncio.run(_with_db(settings, username, "token", name))


def set_role(settings: Settings, username: str, role: str) -> str:
    """Make ``username`` a clinician or an admin (admins see the audit log)."""
    return asyncio.run(_with_db(settings, username, "role", role))
