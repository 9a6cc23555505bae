"""Per-user API tokens: random, shown once, stored as SHA-256 (high entropy, so no argon2)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from app.db.tables import ApiToken, User

TOKEN_PREFIX = "slk_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(user_id: int, name: str = "") -> str:
    """Create a token for ``user_id``; the plain token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await ApiToken.insert(
        ApiToken(owner=user_id, name=name[:64], token_hash=hash_token(token), prefix=token[:10])
    ).run()
    return token


async def user_for_token(token: str) -> dict[str, Any] | None:
    """The active user a non-revoked token belongs to, or None."""
    row = (
        await ApiToken.select(ApiToken.id, ApiToken.owner)
        .where((ApiToken.token_hash == hash_token(token)) & (ApiToken.revoked.eq(False)))
        .first()
        .run()
    )
    if row is None:
        return None
    user = (
        await User.select(User.id, User.username, User.role)
        .where((User.id == row["owner"]) & (User.active.eq(True)))
        .first()
        .run()
    )
    if user is not None:
        await (
            ApiToken.update(
                {ApiToken.last_used_at: dt.datetime.now(dt.UTC), ApiToken.uses: ApiToken.uses + 1}
            )
            .where(ApiToken.id == row["id"])
            .run()
        )
    return user


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def api_token_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Litestar guard: ``Authorization: Bearer <token>``; the user lands in ``connection.state``."""
    token = bearer_token(connection)
    user = await user_for_token(token) if token else None
    if user is None:
        raise NotAuthorizedException(
            "a valid API token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    connection.state.api_user = user
