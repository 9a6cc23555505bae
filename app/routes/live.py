"""The camera flow for phones and kiosks: live predictions over a WebSocket, then save a frame.

The page streams camera frames (JPEG, from the browser's canvas) to ``/analyses/live/ws`` and
shows each reply; "Save this frame" posts the frame through the ordinary upload form, so a
saved analysis is stored, reported and audited like any other. The socket is the JSON API's
``LiveSession`` behind the web session instead of an API token.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from litestar import Controller, Request, WebSocket, get, websocket
from litestar.datastructures import State
from litestar.response import Template
from litestar.status_codes import WS_1008_POLICY_VIOLATION, WS_1013_TRY_AGAIN_LATER

from app.auth.session import USER, CurrentUser, optional_user, session_still_valid
from app.inference.service import InferenceService
from app.live_session import LiveSession
from app.metrics import Metrics
from app.page_helpers import render
from app.routes.api import LIVE

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _host(netloc: str, scheme: str) -> str:
    """``host[:port]`` lower-cased, without the scheme's default port."""
    host = netloc.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    return host.removesuffix(f":{default}") if default else host


def _same_site(origin: str, headers: Any) -> bool:
    """The page's Origin names this host: as the client asked for it (Host) or, behind a
    reverse proxy that rewrites Host, as the proxy says (X-Forwarded-Host; a browser cannot set
    that header on a WebSocket)."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    mine = _host(parts.netloc, parts.scheme)
    for name in ("host", "x-forwarded-host"):
        for value in (headers.get(name) or "").split(","):
            if value.strip() and _host(value, parts.scheme) == mine:
                return True
    return False


class LiveCameraController(Controller):
    """The live camera page and its socket (``/analyses/live``, ``/analyses/live/ws``)."""

    path = "/analyses/live"

    @get("/", name="live", dependencies=USER)
    async def live_page(self, request: Request[Any, Any, State], user: CurrentUser) -> Template:
        return render(request, "live.html")

    @websocket("/ws", dependencies=LIVE)  # the API socket's: not ready, it closes with 1013
    async def live_frames(
        self,
        socket: WebSocket[Any, Any, Any],
        service: InferenceService | None,
        metrics: Metrics | None,
    ) -> None:
        """Binary JPEG/PNG frames in, one JSON prediction each out, for a logged-in user."""
        # A WebSocket handshake carries the session cookie from any site and has no CSRF
        # token: only this site's own pages may open one (cross-site WebSocket hijacking).
        if not _same_site(socket.headers.get("origin", ""), socket.headers):
            await socket.close(
                code=WS_1008_POLICY_VIOLATION, reason="cross-site connection refused"
            )
            return
        if await optional_user(socket) is None:
            await socket.close(code=WS_1008_POLICY_VIOLATION, reason="log in first")
            return
        if service is None:
            await socket.close(code=WS_1013_TRY_AGAIN_LATER, reason="model is loading")
            return
        await socket.accept()

        still_allowed = functools.partial(session_still_valid, socket)
        await LiveSession(socket, service, metrics, still_allowed).run()


handlers: list[Any] = [LiveCameraController]
