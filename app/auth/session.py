"""Cookie sessions (encrypted by Litestar) and the logged-in user, with an idle timeout."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide

from app.db.tables import User
from app.errors import AppError
from app.page_helpers import session_data


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


def session_fingerprint(user: dict[str, Any]) -> str:
    """What a session must still match: a new password (or rehash) or a logout, which bumps
    ``session_epoch``, ends the sessions signed before it without a server-side session store.
    A copied cookie (a shared kiosk) therefore stops working once its user logs out."""
    material = f"{user['password_hash']}|{user['session_epoch']}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def start_session(request: Request[Any, Any, Any], user: dict[str, Any]) -> None:
    """``user``: the row's id, password_hash and session_epoch."""
    request.clear_session()  # a fresh session on login: nothing carried over from before
    request.set_session(
        {"uid": user["id"], "fp": session_fingerprint(user), "seen": int(time.time())}
    )


async def end_sessions(user_id: int) -> None:
    """Log out: every cookie session of this account stops working, on all devices."""
    await User.update({User.session_epoch: User.session_epoch + 1}).where(User.id == user_id).run()


async def _session_account(session: dict[str, Any]) -> dict[str, Any] | None:
    """The session's account row while it stands: active, and no logout or new password since
    the session was signed."""
    row = (
        await User.select(User.id, User.username, User.role, User.password_hash, User.session_epoch)
        .where((User.id == session.get("uid")) & (User.active.eq(True)))
        .first()
        .run()
    )
    return row if row is not None and session_fingerprint(row) == session.get("fp") else None


async def session_still_valid(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the session a long-lived connection opened with still stands. (Its idle clock
    does not run while the connection is in use.)"""
    return await _session_account(session_data(connection)) is not None


async def optional_user(request: ASGIConnection[Any, Any, Any, State]) -> CurrentUser | None:
    """The session's user, or None when absent, idle too long, deactivated or re-passworded."""
    if "current_user" in request.scope.get("state", {}):
        return request.scope["state"]["current_user"]  # type: ignore[no-any-return]
    session = session_data(request)
    user: CurrentUser | None = None
    uid, seen = session.get("uid"), session.get("seen")
    idle_s = request.app.state["settings"].session_idle_minutes * 60
    now = int(time.time())
    if uid and isinstance(seen, int) and now - seen <= idle_s:
        row = await _session_account(session)
        if row is not None:
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
