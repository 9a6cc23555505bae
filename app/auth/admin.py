"""Account administration for the command line: accounts, API tokens and roles."""

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


async def _create_user(settings: Settings, username: str, password: str, role: str) -> int:
    from app import audit
    from app.auth.passwords import USERNAME_RE, default_hasher, hash_password, password_problem

    if not USERNAME_RE.match(username):
        raise AdminError("usernames are 3 to 64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise AdminError(f"role must be one of {', '.join(ROLES)}")
    problem = password_problem(username, password)
    if problem:
        raise AdminError(problem)
    engine = db_engine.make_engine(settings)
    db_engine.bind(engine)
    await db_engine.start(engine)
    try:
        if await User.exists().where(User.username_key == username.casefold()).run():
            raise AdminError(f"a user named {username!r} exists already")
        password_hash = await hash_password(default_hasher(), password)
        user = User(
            username=username,
            username_key=username.casefold(),
            password_hash=password_hash,
            role=role,
        )
        await user.save().run()
        await audit.record(
            "user_created", actor_id=None, actor_name="cli", address="cli", target=str(user.id)
        )
        return int(user.id)
    finally:
        await db_engine.stop(engine)


def create_user(settings: Settings, username: str, password: str, role: str = "clinician") -> int:
    """Create an account (how accounts are made when registration is invite or closed)."""
    return asyncio.run(_create_user(settings, username, password, role))
