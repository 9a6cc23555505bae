"""create_app(settings) -> Litestar: the one place things are wired."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components
from litestar.plugins import PluginProtocol
from litestar.plugins.core import MsgspecDIPlugin
from litestar.types import (
    ASGIApp,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from app.admission import AdmissionControl
from app.auth.tokens import BEARER, BEARER_SCHEME, api_token_guard
from app.config import Settings
from app.db.blobs import check_database_store
from app.db.engine import DatabaseProbe
from app.error_responses import exception_to_response
from app.inference.classifier import Classifier
from app.inference.service import InferenceService, load_service
from app.logs import AccessLog, configure_logging
from app.metrics import Metrics, metrics_endpoint
from app.routes import health
from app.routes.api import build_api_router
from app.storage import check_storage
from app.web import web_parts

log = logging.getLogger(__name__)


class _Litestar(Litestar):
    """Litestar without its automatic pydantic plugins.

    Litestar adds them whenever pydantic is importable, and Piccolo installs pydantic. This app
    has no pydantic models (msgspec and dataclasses only), and the plugins cost 9.5 MB of RSS and
    0.1 s of start-up (measured; benchmarks/ startup suite). tests/api/test_startup.py notices
    if a Litestar upgrade renames this private hook and pydantic comes back.
    """

    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        return [*plugins, MsgspecDIPlugin()]


# A year; no includeSubDomains: a clinic's other hosts on the same domain may not have TLS.
HSTS = b"max-age=31536000"
# Pages load only this server's own files: no inline script (a stored XSS could not run), no
# framing, forms post only here. The live page needs its WebSocket and the camera's stream.
CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    b"media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'; object-src 'none'"
)


class PrivateResponses:
    """``Cache-Control: no-store`` on every response but static files, HSTS over HTTPS, and a
    Content-Security-Policy without inline script.

    Pages, stored images, explanations, reports and API results all carry patient data, and a
    kiosk's browser is shared: nothing of it may stay in a cache. A response that sets its own
    Cache-Control keeps it. ``scheme`` is https behind a proxy that uvicorn trusts
    (``--forwarded-allow-ips``), as for the Secure cookie flag.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")
        https = scope.get("scheme") == "https"

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not cacheable and not any(n.lower() == b"cache-control" for n, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                if https:
                    headers.append((b"strict-transport-security", HSTS))
                if not scope["path"].startswith("/schema"):  # Swagger UI loads a CDN's script
                    headers.append((b"content-security-policy", CSP))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


class BodyDeadline:
    """A request body must keep arriving: 408 when a chunk is ``idle_s`` late or the whole
    body takes longer than ``deadline_s``.

    1,100 connections sending partial bodies were all still held after 20-40 s (issue 16):
    each holds a socket, memory and, for uploads, a place in AdmissionControl. Once the body
    is complete, later receives (a handler waiting for the client to hang up) are not timed.
    """

    def __init__(self, app: ASGIApp, idle_s: float, deadline_s: float) -> None:
        self.app = app
        self.idle_s = idle_s
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        body_done = False

        async def timed_receive() -> ReceiveMessage:
            nonlocal body_done
            if body_done:
                return await receive()
            wait = min(self.idle_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                raise HTTPException(
                    status_code=408,
                    detail="the request body did not arrive in time",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


TRIM_EVERY_S = 10.0


async def _return_memory_when_idle(service: InferenceService) -> None:
    """Give memory back to the system once a burst is over.

    After 1,000 clients for 20 s the idle process kept 141-156 MB more than before: about
    110 MB in onnxruntime's CPU arena, grown for the largest micro-batches and never shrunk,
    the rest freed heap that glibc keeps. ``Classifier.release_memory`` shrinks the arenas
    and ``malloc_trim(0)`` returns the freed heap; both run only when nothing is queued or
    decoding at two checks in a row, so they never compete with requests
    (benchmarks/RESULTS.md, "Overload", and ``python -m benchmarks.arena``).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): the arenas only
        trim = None

    def release() -> None:
        service.classifier.release_memory()
        if trim is not None:
            trim(0)

    quiet = 0
    while True:
        await asyncio.sleep(TRIM_EVERY_S)
        busy = service.batcher.depth or service.decoding
        quiet = 0 if busy else quiet + 1
        if quiet == 2:
            await asyncio.to_thread(release)


def create_app(settings: Settings | None = None, classifier: Classifier | None = None) -> Litestar:
    """Build the app; ``classifier`` lets ``python -m app`` hand over the model it checked."""
    # Outside dev mode a missing APP_SECRET_KEY/APP_STORAGE_KEY stops start-up here (ConfigError).
    settings = (settings or Settings.from_env()).with_secrets()
    configure_logging(settings.log_level, settings.log_format)  # the app, uvicorn and Litestar
    web = web_parts(settings)  # clinic pages: DB, sessions, CSRF, templates, static files
    metrics = Metrics()

    @asynccontextmanager
    async def model_lifespan(app: Litestar) -> AsyncIterator[None]:
        # Loaded and warmed once per process, before readiness; inference never waits for it.
        app.state.ready = False
        service = await asyncio.to_thread(
            load_service, settings, metrics, classifier, metrics.observe_rejection
        )
        metrics.set_model(service.classifier)
        await service.start()
        app.state.inference = service  # pages predict through this too: state.inference.analyse
        app.state.classifier = service.classifier
        app.state.ready = True
        trimmer = asyncio.get_running_loop().create_task(_return_memory_when_idle(service))
        try:
            yield
        finally:
            app.state.ready = False
            trimmer.cancel()
            await service.stop()

    @asynccontextmanager
    async def storage_lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.storage == "database":
            # Blobs share the rows' transactions: only a report whose claim a crash cut off
            # can be left over. Reported and removed (over an hour old) like orphan files.
            for problem in await check_database_store(repair=True):
                log.warning("storage check at start-up: %s", problem)
            yield
            return
        # Files a crash left between write and row insert (kill -9 mid-upload) are patient
        # images nothing could ever delete: remove those over an hour old, report the rest.
        check = await check_storage(settings.images_dir, repair=True)
        if check.removed or check.missing:
            log.warning("storage check at start-up: %s", check.summary())
            for analysis_id, name in check.missing:
                log.warning("analysis %s: its image %s is missing", analysis_id, name)
        yield

    app = _Litestar(
        logging_config=None,  # configure_logging above is the one set-up
        route_handlers=[
            *health.handlers,
            metrics_endpoint,
            # Auth hook: the web-app's API-token guard goes here, e.g. guards=[api_token_guard].
            build_api_router(settings, guards=(api_token_guard,) if settings.api_auth else ()),
            *web.route_handlers,
        ],
        middleware=[
            AccessLog,  # every request gets its line and id (AdmissionControl's refusals too)
            metrics.middleware,
            DefineMiddleware(
                BodyDeadline, idle_s=settings.body_idle_s, deadline_s=settings.body_deadline_s
            ),
            PrivateResponses,
            *web.middleware,
        ],
        lifespan=[web.lifespan, storage_lifespan, model_lifespan],
        state=State(
            {
                "settings": settings,
                "ready": False,
                "classifier": None,
                "inference": None,
                "metrics": metrics,
                # /health/ready's database check (SELECT 1 within 1 s, one at a time).
                "database_probe": DatabaseProbe(web.state["db_engine"]),
                **web.state,
            }
        ),
        template_config=web.template_config,
        csrf_config=web.csrf_config,
        exception_handlers={Exception: exception_to_response},
        request_max_body_size=settings.max_upload_bytes,
        openapi_config=OpenAPIConfig(
            title="Skin lesion classification service",
            version="0.1.0",
            description="A second opinion on dermoscopic images, not a diagnosis.",
            components=Components(security_schemes={BEARER: BEARER_SCHEME}),
        ),
        debug=False,  # stack traces never reach clients, dev mode included
    )
    # Outside Litestar's router and middleware: a refusal costs no routing (app/admission.py).
    uploads = [r.path for r in app.routes if r.path.startswith("/api/") and "POST" in r.methods]
    admission = AdmissionControl(app.asgi_handler, settings.uploads_max, uploads, metrics)
    # Under overload the server answers the readiness probe itself when it needs no wait,
    # with the headers PrivateResponses gives every answer (app/http_protocol.py).
    private = [(b"cache-control", b"no-store"), (b"content-security-policy", CSP)]
    admission.ready_at_once = functools.partial(health.ready_at_once, app.state, private)
    admission.ready_answer = functools.partial(health.ready_answer, app.state, private)
    app.asgi_handler = admission
    return app
