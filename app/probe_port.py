"""The probe port (``APP_HEALTH_PORT``): ``/health/live`` and ``/health/ready`` answered by a
thread of its own from what the event loop last published, so a probe waits for no loop turn.

At 1,000 clients a probe on the main port waited behind the flood's new connections (the
slowest 130-306 ms), and on a second port served by the same loop it still waited for busy loop
turns (p99 83-151 ms). Here the loop publishes a heartbeat and the readiness answer the route
would give (app.routes.health ``ready_answer``, database check included) every ``REFRESH_S``,
and a thread with its own listening socket (the standard library's ThreadingHTTPServer)
answers from them:

- ``/health/live``: 200 while the loop's heartbeat is under ``LIVE_MAX_AGE_S`` old, else 503: a
  loop that stopped turning is not alive, whatever this thread can still say;
- ``/health/ready``: the published answer while it is under ``READY_MAX_AGE_S`` old, else 503
  naming the event loop;
- anything else: 404, so the port opens nothing else of the app.

Each answer gets its access line, X-Request-ID and /metrics count, as every other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from app.admission import AdmissionControl, ReadyAnswer, json_answer
from app.error_responses import error_body
from app.logs import new_request_id

log = logging.getLogger(__name__)

REFRESH_S = 0.25  # how often the loop publishes its heartbeat and readiness
READY_MAX_AGE_S = 2.0  # an older readiness answer means the loop is not keeping up: 503
LIVE_MAX_AGE_S = 10.0  # a heartbeat older than this: the loop is stuck, restart the process
LIVE, READY = "/health/live", "/health/ready"
MAX_BODY = 64 * 1024  # probes send none; a larger one is not read (the connection is reset)
NO_STORE = (b"cache-control", b"no-store")


def _json(status: int, body: dict[str, Any]) -> ReadyAnswer:
    return json_answer(status, body, NO_STORE)


NOT_A_PROBE = _json(404, error_body("not_found", f"this port answers {LIVE} and {READY} only"))
STARTING = _json(503, {"status": "starting"})


class ProbePort:
    """The probe port's listening socket (bound when built), its thread and the loop's
    publisher. ``start`` on the event loop; ``stop`` before the loop ends."""

    def __init__(self, host: str, port: int, gate: AdmissionControl) -> None:
        self.gate = gate
        self._beat = time.monotonic()
        self._ready: tuple[float, ReadyAnswer] | None = None  # (published at, answer)
        self._tasks: list[asyncio.Task[None]] = []
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))  # OSError: in use
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="probe-port", daemon=True
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._publish())]
        self._thread.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._thread.is_alive():
            await asyncio.to_thread(self.httpd.shutdown)
        self.httpd.server_close()

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(REFRESH_S)

    async def _publish(self) -> None:
        while True:
            if self.gate.ready_answer is not None:
                try:
                    answer = await self.gate.ready_answer()
                except Exception:  # never stop publishing; the answer ages into a 503
                    log.exception("the readiness answer for the probe port failed")
                else:
                    self._ready = (time.monotonic(), answer)  # one reference: thread-safe
            await asyncio.sleep(REFRESH_S)

    def answer(self, method: str, path: str) -> ReadyAnswer:
        """The answer to one probe, from the probe thread: only published values are read."""
        if method not in {"GET", "HEAD"} or path not in {LIVE, READY}:
            return NOT_A_PROBE
        if path == LIVE:
            beat_age = time.monotonic() - self._beat
            if beat_age < LIVE_MAX_AGE_S:
                return _json(200, {"status": "ok"})
            return _json(503, {"status": "stalled", "event_loop_s": round(beat_age, 1)})
        published = self._ready
        if published is None:
            return STARTING
        made_at, ready = published
        age = time.monotonic() - made_at
        if age < READY_MAX_AGE_S:
            return ready
        detail = f"the event loop has not answered for {age:.1f} s"
        return _json(503, {"status": "unavailable", "down": ["event_loop"], "detail": detail})


def _handler_for(port: ProbePort) -> type[BaseHTTPRequestHandler]:
    class ProbeHandler(BaseHTTPRequestHandler):
        timeout = 2  # a connection that sends nothing is dropped: probes are quick

        def _reply(self) -> None:
            started = time.perf_counter()
            # Read a small body before answering: closing a socket with unread data sends a
            # reset, which can destroy the answer before the client reads it.
            length = self.headers.get("Content-Length", "0")
            if length.isdigit() and 0 < int(length) <= MAX_BODY:
                self.rfile.read(int(length))
            path = urlsplit(self.path).path
            status, headers, body = port.answer(self.command, path)
            request_id = new_request_id()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name.decode(), value.decode())
            self.send_header("X-Request-ID", request_id)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            counted = path if path in {LIVE, READY} else "unmatched"
            seconds = time.perf_counter() - started
            port.gate.answered(self.command, counted, status, seconds, request_id)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _reply

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the access line is app.logs' (AdmissionControl.answered)

    return ProbeHandler
