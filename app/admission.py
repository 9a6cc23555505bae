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

Under the real server the refusal comes earlier still: app.http_protocol asks :func:`front_door`
as soon as an upload's headers are parsed and writes the same 503 itself, with no ASGI scope, no
task and no Litestar. This class then refuses only what reaches it (the test client, an upload
pipelined behind another request, or one admitted in the same loop turn as the last place).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from app.error_responses import error_body
from app.logs import AccessLog, log_access
from app.metrics import Metrics

RETRY_AFTER_S = 1
# After its last refusal the server still counts as overloaded for this long: admission drops
# below its bound between bursts, and a probe then must not wait for a fresh database check on
# a loop that is still busy (at 1,000 clients those probes took 155-212 ms, the slowest 5 %).
BUSY_FOR_S = 2.0
Header = tuple[bytes, bytes]
ReadyAnswer = tuple[int, list[Header], bytes]  # status, headers, body
_front_door: AdmissionControl | None = None


@functools.lru_cache(maxsize=256)
def _refusal_body(in_flight: int) -> bytes:
    """The 503's body for ``in_flight`` uploads, encoded once: a refusal must cost next to
    nothing (json.dumps per refusal was 2 % of the loop's time at 1,000 clients)."""
    detail = f"{in_flight} uploads are in progress; try again shortly"
    return json.dumps(error_body("overloaded", detail)).encode()


def json_answer(status: int, body: Mapping[str, Any], *headers: Header) -> ReadyAnswer:
    """An answer the server writes itself (app.http_protocol, app.probe_port): compact JSON
    with its type and length, then ``headers``."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    length = (b"content-length", str(len(payload)).encode())
    return status, [(b"content-type", b"application/json"), length, *headers], payload


def front_door() -> AdmissionControl | None:
    """The admission control of this process's app (the last one built), for the server."""
    return _front_door


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
        self.pending = 0  # admitted at their headers this loop turn, not yet in in_flight
        self._last_refusal = -BUSY_FOR_S  # time.monotonic() of the last 503
        # The same access line and X-Request-ID as every answer inside Litestar gets.
        self._refusal = AccessLog(self._refuse)
        # Each route's counters, resolved once: a refusal must cost next to nothing.
        self._counters = {
            path: (
                metrics.requests.labels(path, "POST", "503"),
                metrics.latency.labels(path, "POST"),
            )
            for path in self.paths
        }
        self._at_headers = metrics.upload_refusals.labels("headers")
        self._in_asgi = metrics.upload_refusals.labels("asgi")
        # /health/ready's answer when it needs no wait (set by create_app), for the server.
        self.ready_at_once: Callable[[], ReadyAnswer | None] | None = None
        # Its whole answer, database check included, for the probe port (app.probe_port).
        self.ready_answer: Callable[[], Awaitable[ReadyAnswer]] | None = None
        global _front_door
        _front_door = self

    @property
    def full(self) -> bool:
        return self.in_flight + self.pending >= self.limit

    def admit_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """An upload passed ``full`` at its headers and its ASGI task starts in the next loop
        turn, where ``__call__`` counts it: until then it is ``pending``, so the uploads whose
        headers arrive in the same turn see the place taken and are refused at their headers,
        not through the ASGI stack (a task, the middleware, Litestar's send: py-spy put those
        late refusals at 6 % or more of the loop's time at 1,000 clients). ``pending`` is reset
        by a callback queued before the first such task, so it runs before any of them counts
        itself, and nothing is lost if a task never comes."""
        if not self.pending:
            loop.call_soon(self._settle)
        self.pending += 1

    def _settle(self) -> None:
        self.pending = 0

    @property
    def busy(self) -> bool:
        """Full now, or refused an upload within the last ``BUSY_FOR_S``: under overload."""
        return self.full or time.monotonic() - self._last_refusal < BUSY_FOR_S

    def refusal_body(self) -> bytes:
        return _refusal_body(self.in_flight)

    def refusal_headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"cache-control", b"no-store"),
        ]

    def refused(self, path: str, seconds: float, at_headers: bool) -> None:
        """Count a refusal in /metrics (its access line is AccessLog's)."""
        self._last_refusal = time.monotonic()
        requests, latency = self._counters[path]
        requests.inc()
        latency.observe(seconds)
        (self._at_headers if at_headers else self._in_asgi).inc()

    def answered(
        self, method: str, path: str, status: int, seconds: float, request_id: str
    ) -> None:
        """Count an answer the server wrote itself (app.http_protocol) and write its line."""
        if method == "POST" and status == 503:
            self.refused(path, seconds, at_headers=True)
        else:
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(seconds)
        log_access(method, path, status, seconds, request_id)

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
        body = self.refusal_body()
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 503,
            "headers": self.refusal_headers(body),
        }
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.refused(scope["path"], time.perf_counter() - started, at_headers=False)
