"""A closed-loop HTTP/1.1 upload generator cheap enough not to be the limit on 2 cores.

The overload benchmark first drove 1,000 clients with aiohttp from one Python process: it built
a multipart form per request and parsed each answer in Python, and topped out near 1,200
answers a second even against nginx answering 503 with no work (0.82 s p50). In a closed loop
of 1,000 clients p50 is about 1,000 / throughput, so a 200 ms p50 needs over 5,000 a second.

Here each client is a raw asyncio Protocol on uvloop that writes one request built once (the
same headers and multipart body, a real JPEG, every time), keeps its connection alive, and
parses only the status line and Content-Length of the answer. The clients are spread over one
process per core. Still honest: every request carries its whole body, each client waits for its
answer before sending the next, a request with no answer in ``timeout`` seconds is counted as a
client timeout and its connection dropped, and the run is bounded in time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

BOUNDARY = "overloadboundary7MA4YWxkTrZu0gW"
SWEEP_S = 0.05  # how often timeouts are looked for: a timeout is counted within 50 ms of 10 s


def upload_request(host: str, path: str, image: bytes, filename: str = "a.jpg") -> bytes:
    """A complete multipart POST of ``image`` as field ``image``, headers and body, as bytes."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


@dataclass
class Tally:
    """Latencies (seconds) by outcome, kept by every client of one process."""

    latency: dict[str, list[float]] = field(
        default_factory=lambda: {"200": [], "503": [], "other": []}
    )
    timeouts: int = 0
    timeout_kinds: dict[str, int] = field(default_factory=dict)  # where each one was stuck
    errors: dict[str, int] = field(default_factory=dict)  # resets, refused connects, bad answers
    connects: int = 0

    def timed_out(self, where: str) -> None:
        self.timeouts += 1
        self.timeout_kinds[where] = self.timeout_kinds.get(where, 0) + 1

    def error(self, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1


class _Client(asyncio.Protocol):
    """One connection sending ``request`` again as soon as each answer is complete."""

    def __init__(self, owner: _Clients) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0  # when the request in flight began; 0 when none is
        self.need = -1  # bytes of head + body the answer has, once its head is read
        self.status = b""
        self.close_after = False
        self.answers = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.owner.tally.connects += 1
        self.transport.write(self.owner.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while self.started:
            if self.need < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                self.status = head[9:12]
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
                self.close_after = b"\r\nconnection: close" in head
                self.need = end + 4 + length
            if len(buffer) < self.need:
                return
            del buffer[: self.need]
            self.need = -1
            self.answers += 1
            self.owner.answered(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.lost(self, exc)


class _Clients:
    """``count`` clients of one process against one server until ``end`` (a monotonic time)."""

    def __init__(
        self, host: str, port: int, request: bytes, count: int, end: float, timeout: float
    ) -> None:
        self.host, self.port = host, port
        self.request = request
        self.count = count
        self.end = end
        self.timeout = timeout
        self.tally = Tally()
        self.clients: set[_Client] = set()
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()

    def start(self) -> None:
        for _ in range(self.count):
            self.loop.create_task(self._connect())
        self.loop.call_later(SWEEP_S, self._sweep)

    async def _connect(self) -> None:
        client = _Client(self)
        client.started = time.perf_counter()  # the first answer's latency includes the connect
        self.clients.add(client)
        try:
            await self.loop.create_connection(lambda: client, self.host, self.port)
        except OSError as exc:
            self.clients.discard(client)
            self.tally.error(f"connect: {type(exc).__name__}")
            if time.monotonic() < self.end:
                await asyncio.sleep(0.05)
                self.loop.create_task(self._connect())
            self._maybe_done()

    def answered(self, client: _Client, status: bytes) -> None:
        now = time.perf_counter()
        key = status.decode() if status in (b"200", b"503") else "other"
        self.tally.latency[key].append(now - client.started)
        if time.monotonic() >= self.end or client.transport is None:
            client.started = 0.0
            self._close(client)
            return
        if client.close_after:
            client.started = 0.0
            self._close(client)
            self.loop.create_task(self._connect())
            return
        client.started = now
        client.transport.write(self.request)

    def lost(self, client: _Client, exc: Exception | None) -> None:
        self.clients.discard(client)
        if client.started:  # a request in flight got no answer: a reset or a close
            client.started = 0.0
            self.tally.error(f"lost: {type(exc).__name__ if exc else 'closed'}")
            if time.monotonic() < self.end:
                self.loop.create_task(self._connect())
        self._maybe_done()

    def _close(self, client: _Client) -> None:
        self.clients.discard(client)
        if client.transport is not None:
            client.transport.close()
        self._maybe_done()

    def _sweep(self) -> None:
        now = time.perf_counter()
        for client in list(self.clients):
            if client.started and now - client.started > self.timeout:
                if client.transport is None:
                    self.tally.timed_out("not connected")
                elif client.buffer:
                    self.tally.timed_out("part of an answer")
                elif client.answers == 0:
                    self.tally.timed_out("connected, no answer yet")
                else:
                    self.tally.timed_out(f"no answer after {client.answers}")
                client.started = 0.0
                self.clients.discard(client)
                if client.transport is not None:
                    client.transport.abort()
                if time.monotonic() < self.end:
                    self.loop.create_task(self._connect())
        self._maybe_done()
        if not self.done.is_set():
            self.loop.call_later(SWEEP_S, self._sweep)

    def _maybe_done(self) -> None:
        if time.monotonic() >= self.end and not any(c.started for c in self.clients):
            self.done.set()


async def _probe(host: str, port: int, end: float, every_s: float) -> list[float]:
    """GET /health/ready every ``every_s`` on one kept connection; 10.0 for no answer."""
    times: list[float] = []
    request = get_request(f"{host}:{port}", "/health/ready")
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            await asyncio.wait_for(reader.readexactly(length), 10)
            times.append(time.perf_counter() - started)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            times.append(10.0)
            if writer is not None:
                writer.close()
            reader = writer = None
        await asyncio.sleep(every_s)
    if writer is not None:
        writer.close()
    return times


def run_worker(
    host: str,
    port: int,
    request: bytes,
    clients: int,
    start_at: float,
    seconds: float,
    timeout: float,
    probe: bool,
    out: Connection,
) -> None:
    """In a process of its own: ``clients`` connections from ``start_at`` (time.time()) for
    ``seconds``; sends back ``{"latency", "timeouts", "errors", "connects", "probes"}``."""
    import uvloop

    async def main() -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + seconds
        group = _Clients(host, port, request, clients, end, timeout)
        prober = asyncio.create_task(_probe(host, port, end, 0.2)) if probe else None
        group.start()
        await group.done.wait()
        probes = await prober if prober is not None else []
        t = group.tally
        return {
            "latency": t.latency,
            "timeouts": t.timeouts,
            "timeout_kinds": t.timeout_kinds,
            "errors": t.errors,
            "connects": t.connects,
            "probes": probes,
        }

    out.send(uvloop.run(main()))
    out.close()
