"""Cookie sessions (encrypted by Litestar) and the logged-in user, with an idle timeout."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, cast

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from app.db.tables import User
from app.errors import AppError


class LoginRequiredError(AppError):
    """Page routes turn this into a redirect to the login page."""

    status = 401
    code = "login_required"


class ForbiddenError(AppError):
    status = 403
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class CurrentUser:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_fingerprint(password_hash: str) -> str:
    # A new password (or rehash) ends older sessions without a server-side session store.
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def start_session(request: Request[Any, Any, Any], user: dict[str, Any]) -> None:
    request.clear_session()  # a fresh session on login: nothing carried over from before
    request.set_session(
        {
            "uid": user["id"],
            "fp": hash_fingerprint(user["password_hash"]),
            "seen": int(time.time()),
        }
    )


async def optional_user(request: Request[Any, Any, State]) -> CurrentUser | None:
    """The session's user, or None when absent, idle too long, deactivated or re-passworded."""
    if "current_user" in request.scope.get("state", {}):
        return request.scope["state"]["current_user"]  # type: ignore[no-any-return]
    session = cast(dict[str, Any], request.scope.get("session") or {})
    user: CurrentUser | None = None
    uid, seen = session.get("uid"), session.get("seen")
    idle_s = request.app.state["settings"].session_idle_minutes * 60
    now = int(time.time())
    if uid and isinstance(seen, int) and now - seen <= idle_s:
        row = (
            await User.select(User.id, User.username, User.role, User.password_hash)
            .where((User.id == uid) & (User.active.eq(True)))
            .first()
            .run()
        )
        if row is not None and hash_fingerprint(row["password_hash"]) == session.get("fp"):
            user = CurrentUser(row["id"], row["username"], row["role"])
            if now - seen >= 30:  # slide the idle window; not on every request
                request.set_session({**session, "seen": now})
    if user is None and uid:
        request.clear_session()
    request.scope.setdefault("state", {})["current_user"] = user
    return user


async def require_user(request: Request[Any, Any, State]) -> CurrentUser:
    user = await optional_user(request)
    if user is None:
        raise LoginRequiredError("please log in")
    return user


async def require_admin(request: Request[Any, Any, State]) -> CurrentUser:
    user = await require_user(request)
    if not user.is_admin:
        raise ForbiddenError("administrators only")
    return user


# Page routes that need a logged-in user declare ``dependencies=USER`` and take ``user``.
USER = {"user": Provide(require_user)}
ADMIN = {"user": Provide(require_admin)}
