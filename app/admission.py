"""Admission control in front of the framework: excess API uploads get 503 before any body.

:class:`AdmissionControl` wraps Litestar's own ASGI handler (outside its router, exception
handler and middleware), so a refusal costs no routing and no middleware stack: at 1,000
clients on 2 cores that turned about 30 % more refusals a second than the same check as
Litestar middleware (benchmarks/RESULTS.md, "Overload"). A refusal still gets what every
answer gets: its ``app.access`` line, an ``X-Request-ID`` and its count in ``/metrics``.

The refusal keeps the connection open. The server (app.http_protocol) reads the body it was
never asked for and drops it, within the body deadlines, so the client reads its 503 (closing a
socket with unread data sends a reset, which can destroy the answer before the client reads it)
and its next request comes on the same connection instead of queueing behind a thousand new
ones in the listen backlog, where the health probes wait too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from app.error_responses import error_body
from app.logs import AccessLog
from app.metrics import Metrics


class AdmissionControl:
    """Refuse API uploads beyond ``limit`` in flight: 503 + Retry-After before reading the body.

    The inference queue and the decode bound refuse only once a body has been read and parsed:
    at 1,000 clients the 503s themselves took 6.3 s (issue 16). Here a refusal costs no read.
    Only POSTs to ``paths`` (the API's upload routes) are counted; probes, pages, static files
    and WebSockets never are.
    """

    def __init__(self, app: ASGIApp, limit: int, paths: Collection[str], metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.paths = frozenset(paths)
        self.metrics = metrics
        self.in_flight = 0
        # The same access line and X-Request-ID as every answer inside Litestar gets.
        self._refusal = AccessLog(self._refuse)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted = (
            scope["type"] == ScopeType.HTTP
            and scope["method"] == "POST"
            and scope["path"] in self.paths
        )
        if not counted:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await self._refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The 503 itself; ``self._refusal`` wraps it in AccessLog for its line and id."""
        started = time.perf_counter()
        path = scope["path"]
        detail = f"{self.in_flight} uploads are in progress; try again shortly"
        body = json.dumps(error_body("overloaded", detail)).encode()
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"cache-control", b"no-store"),
            ],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.metrics.requests.labels(path, "POST", "503").inc()
        self.metrics.latency.labels(path, "POST").observe(time.perf_counter() - started)
