"""The clinic web app's wiring: database lifespan, sessions, CSRF, templates, static files.

``create_app`` (app/main.py) merges ``web_parts(settings)`` into the one Litestar app.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.config.csrf import CSRFConfig
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.enums import ScopeType
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.analyses import seal_legacy_rows
from app.auth.passwords import VerificationSlots, default_hasher
from app.auth.throttle import RedisThrottle, make_throttle
from app.auth.tokens import TokenCache
from app.config import ConfigError, Settings
from app.db import engine as db_engine
from app.db.blobs import make_store
from app.db.migrate import apply_migrations, pending_migrations
from app.page_helpers import MACHINE_PREFIXES
from app.storage import parse_key

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def _derive(secret: str, label: str) -> bytes:
    # One APP_SECRET_KEY, independent keys per use.
    return hmac.new(secret.encode(), label.encode(), hashlib.sha256).digest()


class SecureCookiesWhenHttps:
    """Mark Set-Cookie ``Secure`` when the request came over HTTPS; add a few safe headers.

    Litestar's cookie configs take a fixed ``secure`` flag; a kiosk on plain HTTP on a LAN must
    still work, while the same app behind TLS must never leak the session cookie over HTTP.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = []
                for name, value in message.get("headers", []):
                    if https and name.lower() == b"set-cookie" and b"secure" not in value.lower():
                        value = value + b"; Secure"
                    headers.append((name, value))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


@dataclass
class WebParts:
    route_handlers: list[Any]
    middleware: list[Any]
    lifespan: Callable[[Litestar], Any]
    template_config: TemplateConfig[JinjaTemplateEngine]
    csrf_config: CSRFConfig
    state: dict[str, Any] = field(default_factory=dict)


def web_parts(settings: Settings) -> WebParts:
    """Everything the web pages add to the app; ``settings`` must carry both secrets."""
    from app.routes import auth, live, pages, records, reports

    if not settings.secret_key or not settings.storage_key:
        raise ConfigError("APP_SECRET_KEY and APP_STORAGE_KEY must be set outside dev mode")
    store = make_store(settings.storage, settings.images_dir, parse_key(settings.storage_key))
    engine = db_engine.make_engine(settings)
    # shared by every replica: the database's login_failure table, or Redis
    throttle = make_throttle(settings.redis_url)

    @asynccontextmanager
    async def db_lifespan(app: Litestar) -> AsyncIterator[None]:
        db_engine.bind(engine)
        await db_engine.start(engine)
        try:
            if settings.dev:
                await apply_migrations(engine)  # dev convenience; production runs `migrate`
            else:
                # No migration lock here: a replica that starts while `migrate` runs elsewhere
                # refuses to start (pending migrations) and its supervisor retries it.
                todo = await pending_migrations(engine)
                if todo:
                    raise ConfigError(
                        f"{len(todo)} database migration(s) pending: run `python -m app migrate`"
                    )
                # After the check: `migrate` left the file in WAL, so this is a no-op that
                # takes no lock, unless the file was restored from a non-WAL copy.
                db_engine.enable_wal(engine)
            await seal_legacy_rows(store)  # rows written before patient names were sealed
            yield
        finally:
            if isinstance(throttle, RedisThrottle):
                await throttle.close()
            await db_engine.stop(engine)

    idle_s = settings.session_idle_minutes * 60
    sessions = CookieBackendConfig(
        secret=_derive(settings.secret_key, "session")[:32],
        key="session",
        httponly=True,
        samesite="lax",
        secure=False,  # upgraded per request by SecureCookiesWhenHttps
        max_age=idle_s,
        exclude=[f"^{p}(/|$)" for p in MACHINE_PREFIXES],
    )
    csrf = CSRFConfig(
        secret=_derive(settings.secret_key, "csrf").hex(),
        cookie_name="csrftoken",
        cookie_httponly=True,  # forms carry the token; no script needs the cookie
        cookie_samesite="lax",
        exclude=[f"^{p}(/|$)" for p in MACHINE_PREFIXES],
    )
    templates = TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine)
    static = create_static_files_router(path="/static", directories=[STATIC_DIR], name="static")
    return WebParts(
        route_handlers=[
            # Pages, their forms and files are for browsers, not API clients: not in the schema.
            Router(
                path="/",
                route_handlers=[
                    static,
                    *auth.handlers,
                    *pages.handlers,
                    *live.handlers,
                    *reports.handlers,
                ],
                include_in_schema=False,
            ),
            *records.handlers,
        ],
        middleware=[SecureCookiesWhenHttps, sessions.middleware],
        lifespan=db_lifespan,
        template_config=templates,
        csrf_config=csrf,
        state={
            "store": store,
            "db_engine": engine,
            "password_hasher": default_hasher(),
            "login_throttle": throttle,
            "verification_slots": VerificationSlots(),
            "token_cache": TokenCache(),
        },
    )
