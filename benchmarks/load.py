"""A bounded async load generator: fixed request count, time cap, fixed concurrency.

The client is aiohttp (C HTTP parser). It runs on the same two cores as the server, so its own
CPU per request counts twice: in each latency and as CPU taken from the server. httpx, used
until 2026-11-26, cost about 1 ms more per 300 KB upload here (side by side on one server:
p50 9.0 ms with httpx, 7.9 ms with aiohttp), which was measuring the client, not the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from benchmarks.images import Sample

BOUNDARY = "benchmark-boundary-7d3f"


def multipart_body(field_name: str, sample: Sample) -> bytes:
    """Encode one upload once, so the client spends its CPU on sending, not encoding."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field_name}"; filename="{sample.name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + sample.data + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class LoadResult:
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    ok_latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    capped: bool = False
    # CPU seconds (user + system) spent during the recorded requests, by each side.
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    # The server process's own threads over the same requests (Linux; None elsewhere): its main
    # thread (a Python server's event loop) and the rest, and how often the rest blocked.
    server_threads: ThreadUse | None = None

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("2"))

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.ok

    @property
    def rps(self) -> float:
        """Successful responses per second of wall time."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def cpu_ms_per_request(self, side: str) -> float | None:
        """CPU milliseconds per answered request on ``side`` ("server" or "client")."""
        seconds = self.server_cpu_s if side == "server" else self.client_cpu_s
        answered = sum(self.statuses.values())
        return seconds * 1e3 / answered if seconds is not None and answered else None

    def per_request(self, what: str) -> float | None:
        """One of ``ThreadUse``'s fields per answered request (CPU in ms, waits as counts)."""
        answered = sum(self.statuses.values())
        if self.server_threads is None or not answered:
            return None
        value = float(getattr(self.server_threads, what))
        return value * (1e3 if what.endswith("_s") else 1) / answered


@dataclass(frozen=True)
class ThreadUse:
    """A process's own threads, read from /proc: CPU seconds of its main thread and of the
    others, and the others' voluntary context switches (a thread that blocks: on an empty work
    queue, or on a lock such as Python's GIL)."""

    main_cpu_s: float
    other_cpu_s: float
    other_waits: int

    @classmethod
    def read(cls, pid: int) -> ThreadUse | None:
        """Now, or None where /proc has no per-thread figures (not Linux)."""
        tick = os.sysconf("SC_CLK_TCK")
        main = other = 0.0
        waits = 0
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return None
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue  # the thread ended between the listing and the read
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            if tid == str(pid):
                main += cpu
                continue
            other += cpu
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    waits += int(line.split()[1])
        return cls(main, other, waits)

    def __sub__(self, earlier: ThreadUse) -> ThreadUse:
        # Threads that ended in between take their counts with them: a pool that replaces
        # threads would read low. The servers measured here keep theirs.
        return ThreadUse(
            self.main_cpu_s - earlier.main_cpu_s,
            self.other_cpu_s - earlier.other_cpu_s,
            self.other_waits - earlier.other_waits,
        )


def _own_cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of this process's own threads: the load generator has no workers, and
    the server under test may be its child, whose CPU is the server's."""
    t = proc.cpu_times()
    return float(t.user + t.system)


def _cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process, its threads and its children, running or waited for.

    Running children count too: a server started with APP_WORKERS > 1 serves from worker
    processes, whose CPU the parent's ``children_*`` times only show once they have exited.
    """
    t = proc.cpu_times()
    total = _own_cpu_seconds(proc) + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += _own_cpu_seconds(child)
    return float(total)


async def _drive(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    requests: int,
    time_cap_s: float,
    warmup: int,
    timeout_s: float,
    server: psutil.Process | None,
    headers: list[dict[str, str]] | None,
) -> LoadResult:
    multipart = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    result = LoadResult(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        next_index = 0
        record = False
        deadline = 0.0
        budget = warmup

        async def worker() -> None:
            nonlocal next_index
            while next_index < budget and time.perf_counter() < deadline:
                i = next_index
                next_index += 1
                start = time.perf_counter()
                try:
                    k = i % len(bodies)
                    async with client.post(
                        url, data=bodies[k], headers=headers[k] if headers else multipart
                    ) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = f"exception:{type(exc).__name__}"
                elapsed = (time.perf_counter() - start) * 1e3
                if record:
                    result.statuses[status] += 1
                    result.latencies_ms.append(elapsed)
                    if status.startswith("2"):
                        result.ok_latencies_ms.append(elapsed)

        # Warm-up: open the keep-alive connections and let the server settle; not recorded.
        deadline = time.perf_counter() + min(time_cap_s, 30.0)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        next_index, budget, record = 0, requests, True
        this_process = psutil.Process()
        # The server first: its reading walks /proc for children, which costs the client CPU.
        server_cpu = _cpu_seconds(server) if server is not None else None
        threads = ThreadUse.read(server.pid) if server is not None else None
        client_cpu = _own_cpu_seconds(this_process)
        start = time.perf_counter()
        deadline = start + time_cap_s
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.duration_s = time.perf_counter() - start
        result.client_cpu_s = _own_cpu_seconds(this_process) - client_cpu
        if server is not None and server_cpu is not None:
            result.server_cpu_s = _cpu_seconds(server) - server_cpu
            after = ThreadUse.read(server.pid)
            if after is not None and threads is not None:
                result.server_threads = after - threads
        result.capped = next_index < requests
    return result


def run_load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    requests: int,
    time_cap_s: float,
    warmup: int | None = None,
    timeout_s: float = 30.0,
    server_pid: int | None = None,
    headers: list[dict[str, str]] | None = None,
) -> LoadResult:
    """Send ``requests`` POSTs (fewer if ``time_cap_s`` runs out) with ``concurrency`` in flight.

    With ``server_pid``, the server's CPU time is read around the recorded requests too, so a
    level says where the machine's two cores went: server, client, or idle. ``headers``, one
    per body, replace the multipart content type (the peers speak other protocols).
    """
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"load only goes to the loopback interface, not {url}")
    warm = warmup if warmup is not None else 2 * concurrency
    # The outer cap also bounds requests that are already in flight when time runs out.
    outer = time_cap_s + min(time_cap_s, 30.0) + 2 * timeout_s
    server = psutil.Process(server_pid) if server_pid is not None else None
    return asyncio.run(
        asyncio.wait_for(
            _drive(
                url, bodies, concurrency, requests, time_cap_s, warm, timeout_s, server, headers
            ),
            outer,
        )
    )
