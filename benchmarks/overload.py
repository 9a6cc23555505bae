"""Overload: many clients at once against the real server, loopback only, bounded in time.

``python -m benchmarks.overload [--clients 1000] [--seconds 20] [--idle 30] [--procs N]
[--json PATH] [--label TEXT] [--floor]``

Every client posts a 600x450 HAM10000 JPEG to ``/api/v1/predict`` in a loop with a 10 s client
timeout, while a prober asks ``/health/ready`` every 200 ms. Reported: how fast the 200s and
the 503s come back (a refusal should be cheap), client timeouts, the ready probe's latency,
and the server's RSS before, at the peak, and after ``--idle`` seconds of quiet (memory should
come back after a burst), with the answers a second and the CPU seconds that the server and the
load generator used. The load generator runs on the same machine: on 2 cores its own CPU
competes with the server's, so read the figures as a bound, not a capacity.

The clients are benchmarks.loadgen's: raw asyncio Protocols on uvloop over ``--procs``
processes (one per usable core by default), each sending one pre-built request, whole body and
all, on a kept connection. aiohttp in one process, used until the issue 16 rework, topped out
near 1,200 answers a second even against nginx: in a closed loop of 1,000 clients p50 is about
1,000 / answers a second, so it, not the server, set the 503 latency.

The in-loop prober runs in the first load process, on one kept connection. A second prober
runs in a process of its own and opens a fresh connection per probe, as a kubelet or nginx
health check does (``ready_probe_own_process``).

``--floor`` runs the same load against nginx answering every upload 503 (the same JSON body and
``Retry-After``) before reading the body, which it then reads and drops to keep the connection:
no Python server answers faster, so it is what this load generator can measure here at all.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from app.config import usable_cpus

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


def _probe_loop(url: str, seconds: float, nice: int, out: Connection) -> None:
    """In a process of its own: GET /health/ready every 200 ms, each on a fresh connection.

    ``nice`` below 0 (root only) gives the prober the CPU it asks for before the load, as a
    kubelet has its node's reserved CPU: the latency is then the server's, not the time the
    prober waited for a core behind 1,000 clients.
    """
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    times: list[float] = []
    failures: dict[str, int] = {}  # why: the status, or the exception's name
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/health/ready", headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                times.append(time.perf_counter() - started)
            else:
                why = f"{response.status} {json.loads(body or b'{}').get('down', '')}"
                failures[why] = failures.get(why, 0) + 1
        except (OSError, ValueError) as exc:  # refused, reset or timed out: a failed probe
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        finally:
            conn.close()
        time.sleep(0.2)
    out.send((times, failures))
    out.close()


def _burst(
    target: _Target, clients: int, seconds: float, procs: int, prober_nice: int = 0
) -> dict[str, Any]:
    """``clients`` upload loops over ``procs`` load processes (benchmarks.loadgen), the
    probers, and the server's RSS and CPU sampled from here."""
    from benchmarks.loadgen import run_worker, upload_request

    url, pid = target.url, target.pid
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = upload_request(parts.netloc, "/api/v1/predict", IMAGE.read_bytes())
    spawn = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # every process imported and waiting, then all at once
    workers: list[tuple[Any, Connection]] = []
    for i in range(procs):
        receiver, sender = spawn.Pipe(duplex=False)
        share = clients // procs + (1 if i < clients % procs else 0)
        args = (host, port, request, share, start_at, seconds, 10.0, i == 0, sender)
        process = spawn.Process(target=run_worker, args=args, daemon=True)
        process.start()
        workers.append((process, receiver))
    own_receiver, own_sender = spawn.Pipe(duplex=False)
    own_prober = spawn.Process(
        target=_probe_loop,
        args=(target.probe_url or url, seconds, prober_nice, own_sender),
        daemon=True,
    )
    server = psutil.Process(pid)
    time.sleep(max(0.0, start_at - time.time()))
    own_prober.start()
    loaders = [psutil.Process(p.pid) for p, _ in workers if p.pid is not None]
    server_cpu = _cpu_s(server)
    loader_cpu = sum(_cpu_s(p) for p in loaders)
    peak = _rss_mb(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.2)
        peak = max(peak, _rss_mb(pid))
    server_cpu = _cpu_s(server) - server_cpu
    loader_cpu = sum(_cpu_s(p) for p in loaders) - loader_cpu
    latency: dict[str, list[float]] = {"200": [], "503": [], "other": []}
    timeouts, connects = 0, 0
    errors: dict[str, int] = {}
    timeout_kinds: dict[str, int] = {}
    probes: list[float] = []
    for process, receiver in workers:
        if not receiver.poll(seconds + 30):
            raise RuntimeError("a load process sent nothing back")
        part = receiver.recv()
        process.join(5)
        for key, values in part["latency"].items():
            latency[key] += values
        timeouts += part["timeouts"]
        for where, n in part["timeout_kinds"].items():
            timeout_kinds[where] = timeout_kinds.get(where, 0) + n
        connects += part["connects"]
        for why, n in part["errors"].items():
            errors[why] = errors.get(why, 0) + n
        probes += part["probes"]
    own_times: list[float] = []
    own_failures: dict[str, int] = {"no answer from the prober process": 1}
    if own_receiver.poll(30):
        own_times, own_failures = own_receiver.recv()
    own_prober.join(5)
    answered = sum(len(v) for v in latency.values())
    return {
        "clients": clients,
        "seconds": seconds,
        "load_processes": procs,
        "answers_per_s": round(answered / seconds),
        "connects": connects,
        "ok_200": {"n": len(latency["200"]), "p50_ms": _pct(latency["200"], 0.5)},
        "refused_503": {
            "n": len(latency["503"]),
            "p50_ms": _pct(latency["503"], 0.5),
            "p99_ms": _pct(latency["503"], 0.99),
        },
        "other_errors": len(latency["other"]) + sum(errors.values()),
        "error_kinds": errors
        | ({"other status": len(latency["other"])} if latency["other"] else {}),
        "client_timeouts_10s": timeouts,
        "timeouts_stuck": timeout_kinds,
        "ready_probe": {
            "n": len(probes),
            "p50_ms": _pct(probes, 0.5),
            "p95_ms": _pct(probes, 0.95),
            "p99_ms": _pct(probes, 0.99),
        },
        "ready_probe_own_process": {
            "n": len(own_times),
            "failed": own_failures,
            "p50_ms": _pct(own_times, 0.5),
            "p95_ms": _pct(own_times, 0.95),
            "p99_ms": _pct(own_times, 0.99),
        },
        # CPU seconds over the burst (of 2 cores x seconds): who spent the machine
        "cpu_s": {"server": round(server_cpu, 1), "load_generator": round(loader_cpu, 1)},
        "rss_peak_mb": peak,
    }


def _cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` and its children so far."""
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


NGINX_FLOOR = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location = /health/ready {{
            default_type application/json;
            return 200 '{{"status":"ready"}}';
        }}
        location / {{
            add_header Retry-After 1 always;
            default_type application/json;
            return 503 '{{"error":"overloaded","detail":"uploads are in progress"}}';
        }}
    }}
}}
"""


@dataclass
class _Target:
    url: str
    pid: int
    probe_url: str | None = None  # where the own-process prober asks, when not ``url``


@contextmanager
def _nginx_floor() -> Iterator[_Target]:
    """nginx refusing every upload at once: the fastest answer this load can be given."""
    from tests.hardening.server import free_port

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="overload-floor-"))
    port = free_port()
    (work / "nginx.conf").write_text(NGINX_FLOOR.format(dir=work, port=port))
    process = subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.1)
        yield _Target(url, process.pid)
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _service(health_port: bool = False) -> Iterator[_Target]:
    """The service; with ``health_port`` also on APP_HEALTH_PORT, where the prober asks."""
    from tests.hardening.server import free_port, running_server

    env = {"APP_LOG_LEVEL": "WARNING"}
    port = free_port() if health_port else None
    if port is not None:
        env["APP_HEALTH_PORT"] = str(port)
    with running_server(Path(tempfile.mkdtemp()) / "data", env=env) as srv:
        probes = f"http://127.0.0.1:{port}" if port is not None else None
        yield _Target(srv.url, srv.process.pid, probes)


def measure(
    clients: int,
    seconds: float,
    idle: float,
    floor: bool = False,
    procs: int = 2,
    prober_nice: int = 0,
    health_port: bool = False,
) -> dict[str, Any]:
    from benchmarks.machine import cpu_info, git_state, load_average

    started = datetime.now(UTC)
    load_before = load_average()
    with _nginx_floor() if floor else _service(health_port) as target:
        before = _rss_mb(target.pid)
        result = _burst(target, clients, seconds, procs, prober_nice)
        time.sleep(idle)
        result |= {
            "rss_before_mb": before,
            "rss_after_idle_mb": _rss_mb(target.pid),
            "idle_s": idle,
            "prober_nice": prober_nice,
            "own_prober_port": "health" if target.probe_url else "main",
            "server": "nginx 503 floor" if floor else "service",
            "created_utc": started.isoformat(timespec="seconds"),
            "git": git_state(),
            "cpu": cpu_info(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }
    return result


TARGETS = (
    "503 p50 < 200 ms; 0 client timeouts at 10 s; /health/ready p99 < 100 ms; "
    "RSS after 30 s idle within 50 MB of before"
)


def load_runs(directory: Path) -> list[dict[str, Any]]:
    """Every overload run kept in ``directory`` (``benchmarks/results/overload``), oldest first."""
    runs = []
    for path in sorted(directory.glob("*.json")):
        run = json.loads(path.read_text())
        runs.append({**run, "_file": path.name})
    return sorted(runs, key=lambda r: str(r.get("created_utc", "")))


def section(runs: list[dict[str, Any]]) -> list[str]:
    """RESULTS.md's overload section: every kept run, one row each."""
    from benchmarks.markdown import fmt, table

    if not runs:
        return ["_No run kept yet (`python -m benchmarks.overload --json ...`)._", ""]

    def pair(block: dict[str, Any] | None) -> str:
        """p50 / p99, or p50 / p95 / p99 where the run kept p95 (the probes' columns: with ~80
        probes in 20 s, p99 is the slowest one)."""
        if not block or block.get("p50_ms") is None:
            return "—"
        middle = f" / {fmt(block['p95_ms'], 0)}" if block.get("p95_ms") is not None else ""
        return f"{fmt(block['p50_ms'], 0)}{middle} / {fmt(block['p99_ms'], 0)}"

    def own(run: dict[str, Any]) -> str:
        block = run.get("ready_probe_own_process")
        if not block:
            return "—"
        port = " on the health port" if run.get("own_prober_port") == "health" else ""
        failed = block.get("failed") or 0
        if isinstance(failed, dict):  # why: a status and what was down, or an exception
            why = ", ".join(f"{reason} ×{n}" for reason, n in failed.items())
            return f"{pair(block)} ({block['n']} ok{port}; failed: {why or 'none'})"
        return f"{pair(block)} ({block['n']} ok{port}, {failed} failed)"

    def load(run: dict[str, Any]) -> str:
        before, after = run.get("load_average_before"), run.get("load_average_after")
        first = f"{before[0]:.1f} → " if before else ""
        return first + (f"{after[0]:.1f}" if after else "—")

    def generator(run: dict[str, Any]) -> str:
        procs = run.get("load_processes")
        return f"raw ×{procs}" if procs else "aiohttp"

    def cpu(run: dict[str, Any]) -> str:
        used = run.get("cpu_s")
        return f"{used['server']:.0f} / {used['load_generator']:.0f}" if used else "—"

    rows = []
    for run in runs:
        rss = (run.get("rss_before_mb"), run.get("rss_peak_mb"), run.get("rss_after_idle_mb"))
        idle = run.get("idle_s", 30)
        rows.append(
            [
                str(run.get("created_utc", ""))[:16].replace("T", " ") or run["_file"][:10],
                run.get("label", "—"),
                str(run.get("git", {}).get("sha", "—"))
                + ("*" if run.get("git", {}).get("dirty") else ""),
                load(run),
                generator(run),
                fmt(run.get("answers_per_s"), 0),
                cpu(run),
                f"{run['ok_200']['n']} / {fmt(run['ok_200']['p50_ms'], 0)}",
                f"{run['refused_503']['n']}",
                pair(run["refused_503"]),
                f"{run['other_errors']} / {run['client_timeouts_10s']}",
                pair(run["ready_probe"]),
                own(run),
                " → ".join(fmt(v, 0) for v in rss) + ("" if idle == 30 else f" ({idle:g} s idle)"),
            ]
        )
    return [
        f"`python -m benchmarks.overload` (module docstring): {runs[-1].get('clients', 1000)} "
        "clients post a 600x450 JPEG to `/api/v1/predict` in a loop for 20 s, 10 s client "
        "timeout, on loopback, the load generator on the same cores; then 30 s idle. Issue 16's "
        f"targets: {TARGETS}. Times in ms (p50 / p99; the probes p50 / p95 / p99 where a run kept "
        "p95: with ~80 probes in 20 s, p99 is the slowest one); load: the 1-minute load average "
        "before and after the run (the machine is shared with other sessions' test suites and "
        "training: at load 4-9 every process, nginx included, waits for a core); generator: "
        "aiohttp in one process (the first rows) or benchmarks.loadgen's raw uvloop clients over "
        "N processes (in a closed loop p50 ≈ clients / answers a second, and aiohttp could not "
        "pass ~1,200 a second even against nginx); CPU: seconds the server / the load generator "
        "used over the 20 s (of 40 on 2 cores); RSS in MB, before → peak → after idle. ready in "
        "loop: a kept connection in the first load process; own process: a fresh connection per "
        "probe from a process of its own, as a kubelet's. The floor rows are nginx answering "
        "every upload 503 (`--floor`): what this load generator can measure on this machine at "
        "that load.",
        "",
        *table(
            [
                "run (UTC)",
                "what",
                "commit",
                "load",
                "generator",
                "answers/s",
                "CPU s server / gen",
                "200s n / p50",
                "503s n",
                "503 p50 / p99",
                "errors / timeouts",
                "ready in loop",
                "ready own process",
                "RSS",
            ],
            rows,
        ),
        "\\* the commit plus uncommitted changes (the row's label says which).",
        "",
        *arena_section(),
        *machines_and_commands(runs),
    ]


def arena_section() -> list[str]:
    """The onnxruntime arena levers (``python -m benchmarks.arena``), newest run."""
    from benchmarks.markdown import fmt, table

    kept = sorted((REPO / "benchmarks" / "results" / "arena").glob("*.json"))
    if not kept:
        return []
    run = json.loads(kept[-1].read_text())
    load = run.get("load_average_before", [None])[0], run.get("load_average_after", [None])[0]
    rows = [
        [
            name,
            fmt(s["ms_per_image_batch1"], 2),
            fmt(s["ms_per_image_batch8"], 2),
            fmt(s["rss_loaded_mb"], 0),
            fmt(s["rss_after_batches_mb"], 0),
            fmt(s["rss_after_trim_mb"], 0),
        ]
        for name, s in run["summary"].items()
    ]
    return [
        "What holds the memory after a burst: onnxruntime's CPU arena, grown for the largest "
        "micro-batches (`python -m benchmarks.arena`, module docstring: the shipped model, one "
        f"intra-op thread, a fresh process per configuration, {run['rounds']} interleaved "
        f"rounds, medians; load {fmt(load[0], 1)} → {fmt(load[1], 1)}, commit "
        f"{run.get('git', {}).get('sha', '—')}). Kept: `shrink-when-idle` (the server's idle "
        "trimmer calls `Classifier.release_memory`, then `malloc_trim`).",
        "",
        *table(
            [
                "configuration",
                "ms / image, batch 1",
                "ms / image, batch 8",
                "RSS loaded",
                "after batches 1-32",
                "after trim",
            ],
            rows,
        ),
    ]


def machines_and_commands(runs: list[dict[str, Any]]) -> list[str]:
    """The CPUs and the command lines of the kept runs, each once."""
    lines = []
    cpus = {
        f"{c.get('model', '?')} ({c.get('arch', '?')}), {c.get('usable_cores', '?')} usable "
        f"cores of {c.get('host_cores', '?')}"
        for c in (r.get("cpu") for r in runs)
        if c
    }
    lines += [f"- CPU: {cpu}" for cpu in sorted(cpus)]
    commands = {str(r["command"]) for r in runs if r.get("command")}
    lines += [f"- command: `{command}`" for command in sorted(commands)]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--label", help="what this run measured (kept in the JSON)")
    parser.add_argument(
        "--floor", action="store_true", help="the same load against nginx refusing every upload"
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=usable_cpus(),
        help="load generator processes (default: one per usable core)",
    )
    parser.add_argument(
        "--prober-nice",
        type=int,
        default=0,
        help="niceness of the own-process ready prober (below 0 needs root): a kubelet's "
        "reserved CPU",
    )
    parser.add_argument(
        "--health-port",
        action="store_true",
        help="serve the probes on APP_HEALTH_PORT too, and ask there from the own process",
    )
    args = parser.parse_args()
    if args.health_port and args.floor:
        parser.error("--health-port is the service's; the nginx floor has none")
    result = measure(
        args.clients,
        args.seconds,
        args.idle,
        args.floor,
        args.procs,
        args.prober_nice,
        args.health_port,
    )
    result["command"] = (
        f"python -m benchmarks.overload --clients {args.clients} --seconds {args.seconds:g} "
        f"--idle {args.idle:g} --procs {args.procs}"
        + (f" --prober-nice {args.prober_nice}" if args.prober_nice else "")
        + (" --health-port" if args.health_port else "")
        + (" --floor" if args.floor else "")
    )
    if args.label:
        result["label"] = args.label
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
