"""uvicorn's httptools protocol, bounded where an answer comes before its request's body, and
a uvicorn server that accepts new connections as fast as the loop turns.

AdmissionControl answers 503 as soon as an upload's headers arrive and keeps the connection.
The rest of that body is dropped (on Linux in the kernel, unread: ``BufferedReads``), so the
client reads its answer and can send its next request on the same connection. Two gaps of
uvicorn's are closed here:

- the rest of the body must keep arriving, as an admitted one must (``APP_BODY_IDLE_S``
  between chunks, ``APP_BODY_DEADLINE_S`` in all), else the connection closes: a client that
  stalls after its 503 cannot hold the connection;
- once the body has all arrived, the keep-alive timer is armed again (uvicorn cancels it on
  every read and arms it only when a response completes, so an early answer's connection would
  otherwise stay open, idle, for ever).

It also writes AdmissionControl's 503 itself, as soon as the headers of an upload beyond the
bound are parsed (counting the uploads admitted earlier in the same loop turn): no ASGI scope,
task, receive channel or Litestar, only the status, the headers and the body (with the same
X-Request-ID, access line and /metrics count). The body that follows is dropped at the lowest
priority (``_DrainQueue``). While admission is busy (full, or it
refused an upload in the last 2 s) it answers ``GET /health/ready`` the same way when the
answer needs no wait (app.routes.health ``ready_at_once``: the model ready and a good database
check under 2 s old). Figures:
benchmarks/RESULTS.md, "Overload (issue 16)".
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import sys
import threading
import time
import weakref
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.admission import AdmissionControl, front_door
from app.config import Settings
from app.logs import new_request_id
from app.probe_port import ProbePort


@functools.cache
def _body_limits() -> tuple[float, float]:
    """(idle_s, deadline_s), read once per process: with APP_WORKERS > 1 each worker process
    imports this module afresh, so the settings come from the environment, as create_app's."""
    settings = Settings.from_env()
    return settings.body_idle_s, settings.body_deadline_s


# CPU time of the loop thread a turn may spend reading refused bodies: how long a new request or
# a probe waits, at most, for the loop to get to it (a turn or two), once it has the CPU.
DRAIN_TURN_CPU_S = 0.01
DRAIN_MIN, DRAIN_MAX = 8, 1024


class _DrainQueue:
    """Connections answered before their body arrived, dropped (or read) at the lowest priority.

    A refused upload's client sends the rest of its body (and then its next request) anyway.
    Read as it comes, 1,000 such clients made every loop iteration read about one body from each
    (0.1-0.25 s a turn on 2 cores), and every other request, a health probe included, waited two
    or three turns. Here such a connection stops being read once it is answered, and each loop
    iteration resumes only as many as its CPU budget allows (``DRAIN_TURN_CPU_S``), in the
    order they were answered: new requests and probes are read in the next turn.

    The budget is CPU time, measured on the loop's own thread: a fixed count of connections per
    turn was either too many for short turns or too few to keep up, and wall time would count
    the time other threads and processes held the cores.

    Dropping a body in the kernel made a refusal cheap enough to do at once, without the queue:
    the 503s' p50 fell to 110-135 ms at 1,000 clients, but the loop turns grew so long that the
    admitted uploads, which need a turn at each hand-off, were answered a third as often (about
    350 against 1,100 in 20 s, whatever the workers' niceness). The queue paces the refused
    connections' next requests as it paced their bodies.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: collections.deque[EarlyAnswerProtocol] = collections.deque()
        self.scheduled = False
        self.per_turn = 32.0  # connections resumed per turn, adapted to the budget
        self._resumed = 0  # by the last turn
        self._cpu = 0.0  # the loop thread's CPU time at the last turn

    def add(self, protocol: EarlyAnswerProtocol) -> None:
        self.waiting.append(protocol)
        if not self.scheduled:
            self.scheduled = True
            self._cpu = time.thread_time()
            self._resumed = 0
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        # call_soon from a callback runs in the next iteration, after the next poll.
        self.scheduled = False
        cpu = time.thread_time()
        if self._resumed:  # what the last turn's connections cost: aim the next at the budget
            each = max(cpu - self._cpu, 1e-6) / self._resumed
            target = DRAIN_TURN_CPU_S / each
            self.per_turn = min(max((self.per_turn + target) / 2, DRAIN_MIN), DRAIN_MAX)
        self._cpu = cpu
        self._resumed = min(int(self.per_turn), len(self.waiting))
        for _ in range(self._resumed):
            self.waiting.popleft().resume_drain()
        if self.waiting:
            self.scheduled = True
            self.loop.call_soon(self._turn)


_drain_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _DrainQueue] = (
    weakref.WeakKeyDictionary()
)


def _drain_queue(loop: asyncio.AbstractEventLoop) -> _DrainQueue:
    queue = _drain_queues.get(loop)
    if queue is None:
        queue = _drain_queues[loop] = _DrainQueue(loop)
    return queue


class _NoEvent:
    def set(self) -> None:
        pass


class _Answered:
    """The request cycle of a request this protocol answered itself: complete at once.

    uvicorn's protocol only asks its cycle whether the response is complete (then it drops the
    body) and sets its message event (nobody waits on it here).
    """

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = _NoEvent()


ANSWERED = _Answered()
READY_PATH = "/health/ready"


# Linux's TCP drops received bytes without copying them when recv is given MSG_TRUNC (tcp(7)):
# a refused body then costs neither the copy into uvloop's buffer nor the bytes object.
_DROP_IN_KERNEL = sys.platform == "linux" and hasattr(socket, "MSG_TRUNC")
_DROP_FLAGS = getattr(socket, "MSG_TRUNC", 0) | getattr(socket, "MSG_DONTWAIT", 0)
_DROP_CHUNK = 256 * 1024
_drop_buffer = bytearray(_DROP_CHUNK)  # recv_into's length bound; never written to


def _drop_received(fd: int, family: int, count: int) -> int:
    """Drop up to ``count`` bytes waiting on the socket ``fd``; how many were dropped."""
    sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
    dropped = 0
    try:
        while dropped < count:
            n = sock.recv_into(_drop_buffer, min(count - dropped, _DROP_CHUNK), _DROP_FLAGS)
            if n <= 0:
                break
            dropped += n
    except OSError:  # nothing more yet (EAGAIN), or the connection failed: uvloop will see it
        pass
    finally:
        sock.detach()  # the descriptor stays the transport's
    return dropped


class EarlyAnswerProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that, under overload, refuses excess uploads and answers the readiness
    probe itself, and bounds the body it reads after the response is complete."""

    _request_complete = False
    _queued = False  # in the drain queue, reading paused
    _drain_timer: asyncio.TimerHandle | None = None
    _drain_deadline = 0.0
    _messages = 0  # requests begun on this connection
    _queued_message = 0  # the request whose body the drain queue is to drop
    _answered_before_body = False  # the request was answered before its body had all arrived
    _body_seen = 0  # body bytes of this request the parser has passed on
    _skip = 0  # body bytes of an answered request still to drop before the parser reads again
    reading_head = True  # no request's headers parsed yet: reads stay small (BufferedReads)

    @property
    def skipping(self) -> bool:
        """A body is being dropped in the kernel: reads only need to say that more came."""
        return self._skip > 0

    def on_message_begin(self) -> None:
        self._messages += 1
        self._request_complete = False
        self._body_seen = 0
        super().on_message_begin()

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        gate = front_door()
        if (
            gate is not None
            # Answers go out in order: not while an earlier request is still being answered.
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and self._answered_early(gate)
        ):
            return
        super().on_headers_complete()

    def _answered_early(self, gate: AdmissionControl) -> bool:
        """Refuse an upload beyond the bound, or answer a ready probe while busy; False: the
        request goes on to the app."""
        method = self.parser.get_method()
        if method == b"POST":
            path = self._path()
            if path not in gate.paths:
                return False
            # Counted at their headers from the first upload, calm or not: a calm server's
            # first burst would otherwise queue an ASGI task for every excess upload of the
            # turn, before any of them made the gate full.
            if gate.full:
                body = gate.refusal_body()
                self._answer(gate, "POST", path, 503, gate.refusal_headers(body), body)
                return True
            gate.admit_soon(self.loop)  # before super() queues its task
            return False
        if method != b"GET" or not gate.busy or gate.ready_at_once is None:
            return False
        path = self._path()
        ready = gate.ready_at_once() if path == READY_PATH else None  # None: a check of its own
        if ready is None:
            return False
        self._answer(gate, "GET", path, *ready)
        return True

    def _path(self) -> str:
        return self.root_path + httptools.parse_url(self.url).path.decode("ascii", "replace")

    def _answer(
        self,
        gate: AdmissionControl,
        method: str,
        path: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """An answer written here, with no ASGI cycle: the body that follows, if any, is read
        and dropped (``_DrainQueue``)."""
        started = time.perf_counter()
        request_id = new_request_id()
        keep_alive = self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
        headers = [
            *self.server_state.default_headers,  # date, server: as every answer's
            *headers,
            (b"x-request-id", request_id.encode()),
        ]
        if not keep_alive:
            headers.append((b"connection", b"close"))
        head = b"".join(b"%s: %s\r\n" % header for header in headers)
        self.transport.write(b"".join((STATUS_LINE[status], head, b"\r\n", body)))
        self.cycle = ANSWERED  # type: ignore[assignment]
        gate.answered(method, path, status, time.perf_counter() - started, request_id)
        if keep_alive:
            self.on_response_complete()
        else:
            self.server_state.total_requests += 1
            self.transport.close()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_complete()

    def _body_complete(self) -> None:
        """The request has all arrived (parsed, or its body dropped): the next read is a new
        request's headers, and a connection answered early is an ordinary keep-alive again."""
        self._request_complete = True
        self.reading_head = True
        if not self._answered_before_body:
            return
        self._answered_before_body = False
        if self._drain_timer is not None:
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
        # An answer written at the headers comes before httptools has seen even a bodiless
        # request end: the headers say whether a body is to come.
        if self._request_complete or self.transport.is_closing() or self._body_length() == 0:
            return
        # The body is still to come, unasked for: it is dropped when the drain queue gets to this
        # connection, and the keep-alive timer waits for its end.
        self._unset_keepalive_if_required()
        self._answered_before_body = True
        self.flow.pause_reading()
        self._queued_message = self._messages
        if not self._queued:
            self._queued = True
            _drain_queue(self.loop).add(self)

    def _body_length(self) -> int | None:
        """The request's body length from its headers: 0 without a body, None when only the
        parser can find its end (chunked, or a length that is not a number)."""
        length = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
        return length

    def _start_drop(self, length: int) -> None:
        """Drop the rest of an answered request's body of ``length`` bytes without reading it:
        what has arrived at once, in the kernel, and what comes later as it wakes a read. The
        parser starts afresh at the next request."""
        self._skip = length - self._body_seen
        self.parser = httptools.HttpRequestParser(self)
        self._drop_waiting()
        if self._skip:
            self._arm_body_deadlines()

    def _arm_body_deadlines(self) -> None:
        """The rest of an answered body must keep arriving, as an admitted body's must."""
        idle_s, deadline_s = _body_limits()
        self._drain_deadline = self.loop.time() + deadline_s
        self._drain_timer = self.loop.call_later(idle_s, self._drain_expired)

    def _drop_waiting(self) -> None:
        """Drop in the kernel what has arrived of the body being skipped."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # else the reads that wake drop it
            self._skip -= _drop_received(sock.fileno(), sock.family, self._skip)
        if not self._skip:
            self._body_complete()

    def resume_drain(self) -> None:
        """The drain queue's turn: drop the rest of the body, within the body deadlines."""
        self._queued = False
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self._request_complete or self._messages != self._queued_message:
            return  # it had all arrived already: an ordinary keep-alive (_body_complete)
        length = self._body_length() if _DROP_IN_KERNEL else None
        if length is not None:
            self._start_drop(length)
        else:  # a chunked body (or no MSG_TRUNC): the parser reads it and finds its end
            self._arm_body_deadlines()

    def data_received(self, data: bytes) -> None:
        if self._skip:  # a read woke up by the rest of a body being dropped (BufferedReads)
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
            if self._skip:
                self._drop_waiting()
            else:
                self._body_complete()
        if data:
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


ACCEPTORS = 32  # listening handles on the one socket: connections accepted per loop iteration


HEAD_READ = 16 * 1024  # a request's headers, and the start of its body
BODY_READ = 256 * 1024  # as uvloop's own reads
WAKE_READ = 64  # while a refused body is dropped in the kernel


class _ReadBuffers(threading.local):
    """One read buffer per event loop thread, shared by its connections: the parser copies what
    it keeps before the next read."""

    def __init__(self) -> None:
        self.body = memoryview(bytearray(BODY_READ))
        self.head = self.body[:HEAD_READ]
        self.wake = self.body[:WAKE_READ]


_read_buffers = _ReadBuffers()


class BufferedReads(asyncio.BufferedProtocol):
    """An EarlyAnswerProtocol read through buffers of its choosing.

    uvloop reads a plain Protocol's data 256 KiB at a time, so a refused upload's whole body
    (about 200 KB in the overload suite) had been read, copied into bytes and parsed (httptools
    copies it again for on_body) before its headers were judged. Until a request's headers are
    parsed this reads 16 KiB; the rest of a refused body is then dropped in the kernel
    (EarlyAnswerProtocol._start_drop), and what arrives later only wakes a 64-byte read. uvloop
    reads through get_buffer only for a protocol that is not an asyncio.Protocol, hence a
    wrapper rather than a subclass. Figures: benchmarks/RESULTS.md, "Overload (issue 16)".
    """

    __slots__ = ("_view", "http")

    def __init__(self, http: EarlyAnswerProtocol) -> None:
        self.http = http
        self._view = _read_buffers.body

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.http.skipping:  # a few bytes to learn that more has come, dropped unread
            self._view = _read_buffers.wake
        elif self.http.reading_head:
            self._view = _read_buffers.head
        else:
            self._view = _read_buffers.body
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.http.data_received(self._view[:nbytes])  # type: ignore[arg-type]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.connection_made(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.http.eof_received()  # type: ignore[func-returns-value]

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()


def buffered_early_answer_protocol(**kwargs: Any) -> BufferedReads:
    """uvicorn's ``http`` protocol factory: an EarlyAnswerProtocol with BufferedReads."""
    return BufferedReads(EarlyAnswerProtocol(**kwargs))


class FairAcceptServer(uvicorn.Server):
    """uvicorn's server, accepting up to ``ACCEPTORS`` new connections per loop iteration.

    libuv (uvloop) accepts one connection per listening handle per loop iteration. Under 1,000
    clients an iteration reads every busy connection once (0.1-0.2 s here), so new connections
    were accepted at 5-10 a second: measured with ``ss``, 400-700 sat in the accept queue for
    seconds, 720-774 of 1,000 clients timed out at 10 s without a single answer, and a probe on a
    fresh connection (a kubelet's) timed out every time. Each extra handle on a duplicate of the
    listening socket's descriptor is polled and accepted from on its own, so one iteration
    accepts up to ``ACCEPTORS``; when fewer are waiting, the others' accept() just says EAGAIN.
    """

    def __init__(self, config: uvicorn.Config, health_port: int | None = None) -> None:
        super().__init__(config)
        self.health_port = health_port
        self.probe_port: ProbePort | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        gate = front_door()
        if self.health_port is not None and gate is not None:
            try:
                self.probe_port = ProbePort(self.config.host, self.health_port, gate)
            except OSError as exc:  # as uvicorn does when its own port is taken
                logging.getLogger("uvicorn.error").error("APP_HEALTH_PORT: %s", exc)
                await self.lifespan.shutdown()
                sys.exit(3)
            await self.probe_port.start()
        if self.config.ssl is not None:
            return
        config, loop = self.config, asyncio.get_running_loop()

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.BaseProtocol:
            # What uvicorn's own startup passes (its factory is local to that method).
            protocol: asyncio.BaseProtocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            return protocol

        listening = [s for server in self.servers for s in server.sockets]
        for sock in listening:
            for _ in range(ACCEPTORS - 1):
                copy = socket.socket(fileno=socket.dup(sock.fileno()))
                # listen() again on the shared socket: the same backlog, or it would shrink
                server = await loop.create_server(
                    create_protocol, sock=copy, backlog=config.backlog
                )
                self.servers.append(server)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.probe_port is not None:
            await self.probe_port.stop()
        await super().shutdown(sockets)
