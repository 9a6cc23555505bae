"""Overload: many clients at once against the real server, loopback only, bounded in time.

``python -m benchmarks.overload [--clients 1000] [--seconds 20] [--idle 30] [--json PATH]``

Every client posts a 600x450 HAM10000 JPEG to ``/api/v1/predict`` in a loop with a 10 s client
timeout, while a prober asks ``/health/ready`` every 200 ms. Reported: how fast the 200s and
the 503s come back (a refusal should be cheap), client timeouts, the ready probe's latency,
and the server's RSS before, at the peak, and after ``--idle`` seconds of quiet (memory should
come back after a burst). The load generator runs on the same machine: on 2 cores its own CPU
competes with the server's, so read the figures as a bound, not a capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "tests" / "fixtures" / "images" / "ISIC_0024329.jpg"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def _rss_mb(pid: int) -> float:
    """The server's resident memory, its worker children included."""
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return round(float(sum(p.memory_info().rss for p in procs)) / 2**20, 1)


async def _burst(url: str, pid: int, clients: int, seconds: float) -> dict[str, Any]:
    image = IMAGE.read_bytes()
    latency: dict[str, list[float]] = {"200": [], "503": [], "other": []}
    probes: list[float] = []
    timeouts = 0
    peak = _rss_mb(pid)
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal timeouts
            while time.monotonic() < end:
                form = aiohttp.FormData()
                form.add_field("image", image, filename="a.jpg", content_type="image/jpeg")
                started = time.perf_counter()
                try:
                    async with session.post(url + "/api/v1/predict", data=form) as r:
                        await r.read()
                        key = str(r.status) if str(r.status) in latency else "other"
                        latency[key].append(time.perf_counter() - started)
                except TimeoutError:
                    timeouts += 1
                except aiohttp.ClientError:
                    latency["other"].append(time.perf_counter() - started)

        async def prober() -> None:
            nonlocal peak
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    async with session.get(url + "/health/ready") as r:
                        await r.read()
                        probes.append(time.perf_counter() - started)
                except (TimeoutError, aiohttp.ClientError):
                    probes.append(10.0)
                peak = max(peak, _rss_mb(pid))
                await asyncio.sleep(0.2)

        await asyncio.gather(*(client() for _ in range(clients)), prober())
    return {
        "clients": clients,
        "seconds": seconds,
        "ok_200": {"n": len(latency["200"]), "p50_ms": _pct(latency["200"], 0.5)},
        "refused_503": {
            "n": len(latency["503"]),
            "p50_ms": _pct(latency["503"], 0.5),
            "p99_ms": _pct(latency["503"], 0.99),
        },
        "other_errors": len(latency["other"]),
        "client_timeouts_10s": timeouts,
        "ready_probe": {
            "n": len(probes),
            "p50_ms": _pct(probes, 0.5),
            "p99_ms": _pct(probes, 0.99),
        },
        "rss_peak_mb": peak,
    }


def measure(clients: int, seconds: float, idle: float) -> dict[str, Any]:
    from benchmarks.machine import cpu_info, load_average
    from tests.hardening.server import running_server

    with running_server(Path(tempfile.mkdtemp()) / "data", env={"APP_LOG_LEVEL": "WARNING"}) as srv:
        pid = srv.process.pid
        before = _rss_mb(pid)
        result = asyncio.run(_burst(srv.url, pid, clients, seconds))
        time.sleep(idle)
        result |= {
            "rss_before_mb": before,
            "rss_after_idle_mb": _rss_mb(pid),
            "idle_s": idle,
            "cpu": cpu_info(),
            "load_average_after": load_average(),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.clients, args.seconds, args.idle)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
