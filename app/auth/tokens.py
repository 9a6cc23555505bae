"""Per-user API tokens: random, shown once, stored as SHA-256 (high entropy, so no argon2)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from app.db.tables import ApiToken

TOKEN_PREFIX = "slk_"
# How the OpenAPI schema names and describes the token (routes behind the guard declare it).
BEARER = "apiToken"
BEARER_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="A per-user API token (`slk_...`) from the API tokens page or "
    "`python -m app create-token USERNAME`.",
)
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(user_id: int, name: str = "") -> str:
    """Create a token for ``user_id``; the plain token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await ApiToken.insert(
        ApiToken(owner=user_id, name=name[:64], token_hash=hash_token(token), prefix=token[:10])
    ).run()
    return token


class TokenCache:
    """Who a token belongs to, remembered for ``ttl_s``, and its use counted in memory.

    Looking a token up cost two queries and an update per API request (5 ms of CPU on SQLite,
    which opens a connection per query): as much as the prediction itself. A revocation in
    this process forgets at once (``clear``); another replica's cache keeps a revoked or
    deactivated account for at most ``ttl_s``. Use counts reach the table at most every
    ``flush_s`` seconds, so the tokens page may show them that late.
    """

    def __init__(
        self,
        ttl_s: float = 5.0,
        flush_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.flush_s = flush_s
        self._clock = clock
        self._users: dict[str, tuple[float, int, dict[str, Any]]] = {}
        self._uses: dict[int, tuple[int, dt.datetime]] = {}
        self._flushed = clock()

    def clear(self) -> None:
        self._users.clear()

    async def user_for(self, token: str) -> dict[str, Any] | None:
        digest = hash_token(token)
        now = self._clock()
        cached = self._users.get(digest)
        if cached is not None and now - cached[0] < self.ttl_s:
            token_id, user = cached[1], cached[2]
        else:
            found = await _lookup(digest)
            if found is None:
                self._users.pop(digest, None)
                return None
            token_id, user = found
            self._users[digest] = (now, token_id, user)
        count = self._uses[token_id][0] if token_id in self._uses else 0
        self._uses[token_id] = (count + 1, dt.datetime.now(dt.UTC))
        if now - self._flushed >= self.flush_s:
            await self.flush()
        return user

    async def flush(self) -> None:
        """Write the counted uses and last-use times to the table."""
        pending, self._uses = self._uses, {}
        self._flushed = self._clock()
        for token_id, (count, last) in pending.items():
            await (
                ApiToken.update({ApiToken.last_used_at: last, ApiToken.uses: ApiToken.uses + count})
                .where(ApiToken.id == token_id)
                .run()
            )


async def _lookup(digest: str) -> tuple[int, dict[str, Any]] | None:
    """(token id, user) for an unrevoked token of an active user: one query."""
    row = (
        await ApiToken.select(
            ApiToken.id,
            ApiToken.owner.id.as_alias("user_id"),
            ApiToken.owner.username.as_alias("username"),
            ApiToken.owner.role.as_alias("role"),
        )
        .where(
            (ApiToken.token_hash == digest)
            & (ApiToken.revoked.eq(False))
            & (ApiToken.owner.active == True)  # noqa: E712 (a SQL comparison)
        )
        .first()
        .run()
    )
    if row is None:
        return None
    return row["id"], {"id": row["user_id"], "username": row["username"], "role": row["role"]}


async def user_for_token(token: str) -> dict[str, Any] | None:
    """The active user a non-revoked token belongs to, or None (uncached: the CLI, tests)."""
    found = await _lookup(hash_token(token))
    return found[1] if found else None


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
    cache: TokenCache | None = connection.app.state.get("token_cache")
    if token is None:
        user = None
    else:
        user = await cache.user_for(token) if cache else await user_for_token(token)
    if user is None:
        raise NotAuthorizedException(
            "a valid API token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    connection.state.api_user = user
