"""One live camera connection (API socket or the web page's): a receiver keeps only the newest
frame, a worker classifies it and replies; refused frames say why."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect
from litestar.status_codes import WS_1008_POLICY_VIOLATION

from app.api_models import model_info, to_response
from app.errors import AppError
from app.inference.gate import ImageRejectedError
from app.inference.preprocess import ImageError
from app.inference.service import InferenceService
from app.metrics import Metrics

log = logging.getLogger(__name__)

RECHECK_S = 10.0


class LiveSession:
    """One kiosk connection: a receiver keeps the newest frame, a worker classifies it."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        service: InferenceService,
        metrics: Metrics | None,
        still_allowed: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.socket = socket
        # Asked before a reply at most every RECHECK_S: a logout or password change elsewhere
        # ends the socket too, not only the next HTTP request.
        self.still_allowed = still_allowed
        self.checked_at = time.monotonic()
        self.service = service
        self.metrics = metrics
        self.model = model_info(service.classifier)
        self.received = 0
        self.dropped_pending = 0  # dropped since the last reply
        self.dropped_total = 0
        self.latest: tuple[int, bytes | None] | None = None
        self.closed = False
        self.arrived = asyncio.Event()

    async def _receive(self) -> None:
        try:
            while True:
                message = await self.socket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self.received += 1
                if self.latest is not None:  # not yet picked up: replace it
                    self.dropped_pending += 1
                    self.dropped_total += 1
                    if self.metrics is not None:
                        self.metrics.ws_frames_dropped.inc()
                data = message.get("bytes")
                self.latest = (self.received, data if isinstance(data, bytes) else None)
                self.arrived.set()
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            self.arrived.set()

    async def _reply(self, seq: int, data: bytes | None) -> dict[str, Any]:
        head: dict[str, Any] = {
            "frame": seq,
            "dropped": self.dropped_pending,
            "dropped_total": self.dropped_total,
        }
        self.dropped_pending = 0
        if data is None:
            return head | {"error": "bad_frame", "detail": "send each frame as a binary message"}
        try:
            analysis = await self.service.analyse(data)
        except ImageRejectedError as exc:
            # Guidance on screen for the person holding the dermatoscope, frame after frame.
            return head | {
                "error": exc.code,
                "rejected": True,
                "detail": str(exc),
                "reasons": exc.reasons,
            }
        except (ImageError, AppError) as exc:
            return head | {"error": exc.code, "detail": str(exc)}
        except Exception:  # the camera keeps streaming: one frame's fault ends nothing
            log.exception("live frame %d failed", seq)
            return head | {"error": "internal_error", "detail": "internal error"}
        return head | asdict(to_response(analysis, self.model))

    async def run(self) -> None:
        receiver = asyncio.get_running_loop().create_task(self._receive())
        try:
            while True:
                await self.arrived.wait()
                self.arrived.clear()
                if self.latest is None:
                    if self.closed:
                        break
                    continue
                seq, data = self.latest
                self.latest = None
                if self.still_allowed and time.monotonic() - self.checked_at >= RECHECK_S:
                    self.checked_at = time.monotonic()
                    if not await self.still_allowed():
                        reason = "the session has ended: log in again"
                        await self.socket.close(code=WS_1008_POLICY_VIOLATION, reason=reason)
                        break
                reply = await self._reply(seq, data)
                if self.closed:
                    break
                await self.socket.send_json(reply)
        except WebSocketDisconnect:
            pass
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
