"""uvicorn's httptools protocol, bounded where an answer comes before its request's body.

AdmissionControl answers 503 as soon as an upload's headers arrive and keeps the connection.
uvicorn then reads the rest of that body and drops it, so the client reads its answer and can
send its next request on the same connection. Two gaps of uvicorn's are closed here:

- the rest of the body must keep arriving, as an admitted one must (``APP_BODY_IDLE_S``
  between chunks, ``APP_BODY_DEADLINE_S`` in all), else the connection closes: a client that
  stalls after its 503 cannot hold the connection;
- once the body has all arrived, the keep-alive timer is armed again (uvicorn cancels it on
  every read and arms it only when a response completes, so an early answer's connection would
  otherwise stay open, idle, for ever).
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings


@functools.cache
def _body_limits() -> tuple[float, float]:
    """(idle_s, deadline_s), read once per process: with APP_WORKERS > 1 each worker process
    imports this module afresh, so the settings come from the environment, as create_app's."""
    settings = Settings.from_env()
    return settings.body_idle_s, settings.body_deadline_s


class EarlyAnswerProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds the body it reads after the response is complete."""

    _request_complete = False
    _drain_timer: asyncio.TimerHandle | None = None
    _drain_deadline = 0.0

    def on_message_begin(self) -> None:
        self._request_complete = False
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._request_complete = True
        super().on_message_complete()
        if self._drain_timer is None:
            return
        # The body of a request answered early has all arrived: an ordinary keep-alive again.
        self._drain_timer.cancel()
        self._drain_timer = None
        if (
            not self.transport.is_closing()
            and not self.pipeline
            and self.timeout_keep_alive_task is None
        ):
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._request_complete or self.transport.is_closing():
            return
        idle_s, deadline_s = _body_limits()
        self._drain_deadline = self.loop.time() + deadline_s
        self._drain_timer = self.loop.call_later(idle_s, self._drain_expired)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._drain_timer is not None:  # still draining: the next chunk has idle_s again
            self._drain_timer.cancel()
            idle_s, _ = _body_limits()
            when = min(self.loop.time() + idle_s, self._drain_deadline)
            self._drain_timer = self.loop.call_at(when, self._drain_expired)

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        super().connection_lost(exc)
