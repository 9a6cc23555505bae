"""Register, log in, log out, and per-user API tokens."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from argon2 import PasswordHasher
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.params import Body, Dependency
from litestar.response import Redirect, Template

from app import audit, deps
from app.auth.passwords import (
    USERNAME_RE,
    VerificationSlots,
    hash_password,
    password_problem,
    verify_password,
)
from app.auth.session import USER, CurrentUser, end_sessions, optional_user, start_session
from app.auth.throttle import Throttle
from app.auth.tokens import TokenCache, create_token
from app.config import Settings
from app.db.tables import ApiToken, User
from app.page_helpers import client_address, flash, form_text, render

log = logging.getLogger(__name__)

# One message for an unknown user and a wrong password: no account enumeration.
BAD_LOGIN = "Invalid username or password."

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
# Throttle is a Protocol, which Litestar cannot check an instance against: taken as provided.
LoginThrottle = Annotated[Throttle, Dependency(skip_validation=True)]


def safe_next(target: str | None) -> str:
    """Only same-site relative paths: never an open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/dashboard"


def _login_refused(
    request: Request[Any, Any, State], status_code: int, target: str, username: str, error: str
) -> Template:
    """The login form again with ``error``, shown as to no one signed in."""
    request.scope.setdefault("state", {})["current_user"] = None
    return render(
        request,
        "login.html",
        status_code=status_code,
        next=target,
        username=username,
        error=error,
    )


NO_SELF_REGISTRATION = "Accounts are created by an administrator of this service. Ask them for one."


async def _active_tokens(user_id: int) -> list[dict[str, Any]]:
    """The user's unrevoked tokens, newest first (prefix only: the token itself is not stored)."""
    return await (
        ApiToken.select(
            ApiToken.id,
            ApiToken.name,
            ApiToken.prefix,
            ApiToken.created_at,
            ApiToken.last_used_at,
            ApiToken.uses,
        )
        .where((ApiToken.owner == user_id) & (ApiToken.revoked.eq(False)))
        .order_by(ApiToken.id, ascending=False)
        .run()
    )


# What signing in and registering take from the app: typed, each look-up written once in deps.
SIGN_IN = {
    "settings": Provide(deps.settings, sync_to_thread=False),
    "throttle": Provide(deps.login_throttle, sync_to_thread=False),
    "hasher": Provide(deps.password_hasher, sync_to_thread=False),
    "slots": Provide(deps.verification_slots, sync_to_thread=False),
}


class AccountController(Controller):
    """Signing in and out, and creating an account where registration is open."""

    dependencies = SIGN_IN

    @get("/login", name="login")
    async def login_page(
        self, request: Request[Any, Any, State], next: str | None = None
    ) -> Template:
        await optional_user(request)
        return render(request, "login.html", next=safe_next(next))

    @post("/login", status_code=303)
    async def login(
        self,
        request: Request[Any, Any, State],
        data: Form,
        throttle: LoginThrottle,
        hasher: PasswordHasher,
        slots: VerificationSlots,
    ) -> Any:
        username = form_text(data.get("username"), "user name")
        password = data.get("password") or ""
        target = safe_next(data.get("next"))
        address = client_address(request)
        wait = await throttle.check(username, address)
        if wait:
            await audit.record(
                "login_throttled", actor_id=None, actor_name=username, address=address
            )
            return _login_refused(
                request,
                429,
                target,
                username,
                f"Too many failed attempts. Try again in {wait // 60 + 1} minutes.",
            )
        row = (
            await User.select(
                User.id, User.username, User.password_hash, User.active, User.session_epoch
            )
            .where(User.username_key == username.casefold())
            .first()
            .run()
        )
        stored = row["password_hash"] if row and row["active"] else None
        with slots.take() as slot:
            if not slot:  # argon2 is bounded: a flood waits on nobody and costs no memory
                page = _login_refused(
                    request,
                    429,
                    target,
                    username,
                    "Too many sign-ins at this moment. Try again in a few seconds.",
                )
                page.headers["Retry-After"] = "1"
                return page
            result = await verify_password(hasher, stored, password)
        if not result.ok or row is None:
            await throttle.failed_async(username, address)
            await audit.record("login_failed", actor_id=None, actor_name=username, address=address)
            return _login_refused(request, 401, target, username, BAD_LOGIN)
        await throttle.succeeded_async(username, address)
        if result.new_hash:  # parameters changed since this hash was made
            await (
                User.update({User.password_hash: result.new_hash}).where(User.id == row["id"]).run()
            )
            row["password_hash"] = result.new_hash
            log.info("rehashed password of user %s with current argon2 parameters", row["id"])
        start_session(request, row)
        await audit.record("login", actor_id=row["id"], actor_name=row["username"], address=address)
        return Redirect(target, status_code=303)

    @get("/register", name="register")
    async def register_page(
        self, request: Request[Any, Any, State], settings: Settings
    ) -> Template:
        await optional_user(request)
        closed = settings.registration_mode != "open"
        return render(request, "register.html", closed=closed, notice=NO_SELF_REGISTRATION)

    @post("/register", status_code=303)
    async def register(
        self,
        request: Request[Any, Any, State],
        data: Form,
        settings: Settings,
        hasher: PasswordHasher,
    ) -> Any:
        await optional_user(request)
        if settings.registration_mode != "open":
            # The same answer whatever was sent: the form reveals nothing, taken names included.
            return render(
                request, "register.html", status_code=403, closed=True, notice=NO_SELF_REGISTRATION
            )
        username = form_text(data.get("username"), "user name")
        password = data.get("password") or ""
        confirm = data.get("confirm") or ""
        error: str | None = None
        if not USERNAME_RE.match(username):
            error = "Usernames are 3 to 64 letters, digits or . _ @ -"
        elif password != confirm:
            error = "The passwords do not match."
        else:
            error = password_problem(username, password)
        if error is None:
            exists = await User.exists().where(User.username_key == username.casefold()).run()
            if exists:
                error = "That username is taken."
        if error is not None:
            return render(request, "register.html", status_code=400, username=username, error=error)
        password_hash = await hash_password(hasher, password)
        user = User(
            username=username, username_key=username.casefold(), password_hash=password_hash
        )
        try:
            await user.save().run()
        except Exception as exc:  # a concurrent registration won the unique index
            if "unique" not in str(exc).lower():
                raise
            return render(
                request,
                "register.html",
                status_code=400,
                username=username,
                error="That username is taken.",
            )
        await audit.record(
            "register", actor_id=user.id, actor_name=username, address=client_address(request)
        )
        start_session(request, {"id": user.id, "password_hash": password_hash, "session_epoch": 0})
        flash(request, f"Welcome, {username}. Your account is ready.", "success")
        return Redirect("/dashboard", status_code=303)

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, State]) -> Redirect:
        user = await optional_user(request)
        if user is not None:
            await end_sessions(user.id)
            await audit.record(
                "logout",
                actor_id=user.id,
                actor_name=user.username,
                address=client_address(request),
            )
        request.clear_session()
        return Redirect("/login", status_code=303)


# The token pages take the logged-in user; revoking clears the guard's cache.
TOKENS = {**USER, "token_cache": Provide(deps.token_cache, sync_to_thread=False)}


class TokensController(Controller):
    """The logged-in user's API tokens: list, create (shown once), revoke."""

    path = "/tokens"
    dependencies = TOKENS

    @get("/", name="tokens")
    async def tokens_page(
        self,
        request: Request[Any, Any, State],
        user: CurrentUser,
    ) -> Template:
        rows = await _active_tokens(user.id)
        return render(request, "tokens.html", tokens=rows, new_token=None)

    @post("/")
    async def new_token(
        self,
        request: Request[Any, Any, State],
        user: CurrentUser,
        data: Form,
    ) -> Template:
        token = await create_token(user.id, form_text(data.get("name"), "token name"))
        await audit.record(
            "token_created",
            actor_id=user.id,
            actor_name=user.username,
            address=client_address(request),
            target=token[:10],
        )
        rows = await _active_tokens(user.id)
        # Shown once; only its hash is stored.
        return render(request, "tokens.html", status_code=200, tokens=rows, new_token=token)

    @post("/{token_id:int}/revoke", status_code=303)
    async def revoke_token(
        self,
        request: Request[Any, Any, State],
        user: CurrentUser,
        token_cache: TokenCache,
        token_id: int,
    ) -> Redirect:
        await (
            ApiToken.update({ApiToken.revoked: True})
            .where((ApiToken.id == token_id) & (ApiToken.owner == user.id))
            .run()
        )
        token_cache.clear()  # revoked here: refused from the next request
        await audit.record(
            "token_revoked",
            actor_id=user.id,
            actor_name=user.username,
            address=client_address(request),
            target=str(token_id),
        )
        flash(request, "Token revoked.", "info")
        return Redirect("/tokens", status_code=303)


handlers: list[Any] = [AccountController, TokensController]
