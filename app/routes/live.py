"""The camera flow for phones and kiosks: live predictions over a WebSocket, then save a frame.

The page streams camera frames (JPEG, from the browser's canvas) to ``/analyses/live/ws`` and
shows each reply; "Save this frame" posts the frame through the ordinary upload form, so a
saved analysis is stored, reported and audited like any other. The socket is the JSON API's
``LiveSession`` behind the web session instead of an API token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Request, WebSocket, get, websocket
from litestar.datastructures import State
from litestar.response import Template
from litestar.status_codes import WS_1008_POLICY_VIOLATION, WS_1013_TRY_AGAIN_LATER

from app.auth.session import USER, CurrentUser, optional_user
from app.routes.api import LiveSession
from app.web import render


@get("/analyses/live", name="live", dependencies=USER)
async def live_page(request: Request[Any, Any, State], user: CurrentUser) -> Template:
    return render(request, "live.html")


@websocket("/analyses/live/ws")
async def live_frames(socket: WebSocket[Any, Any, Any]) -> None:
    """Binary JPEG/PNG frames in, one JSON prediction each out, for a logged-in user."""
    # A WebSocket handshake carries the session cookie from any site and has no CSRF token:
    # only this site's own pages may open one (cross-site WebSocket hijacking).
    origin = urlsplit(socket.headers.get("origin", ""))
    if origin.netloc != socket.headers.get("host"):
        await socket.close(code=WS_1008_POLICY_VIOLATION, reason="cross-site connection refused")
        return
    if await optional_user(socket) is None:
        await socket.close(code=WS_1008_POLICY_VIOLATION, reason="log in first")
        return
    state = socket.app.state
    service = state.get("inference")
    if service is None or not state.get("ready"):
        await socket.close(code=WS_1013_TRY_AGAIN_LATER, reason="model is loading")
        return
    await socket.accept()
    await LiveSession(socket, service, state.get("metrics")).run()


handlers: list[Any] = [live_page, live_frames]
