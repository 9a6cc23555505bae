"""Throughput through nginx with 1 and 3 replicas (issue 18), all on this machine.

A PostgreSQL of its own, ``n`` replicas (``APP_STORAGE=database``, API auth off) and nginx
with deploy/nginx's configuration over TLS; ``concurrency`` clients POST the 600x450 upload to
``/api/v1/predict`` through nginx for ``seconds``. On a 2-core machine the replicas, nginx and
the load generator share the same two cores, so 3 replicas cannot be faster than 1: this is a
correctness check of the fleet (every request answered, none lost), not a speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import cluster
from benchmarks.artifacts import ModelSet
from benchmarks.images import upload_images
from benchmarks.markdown import figures, fmt, table
from benchmarks.results import SuiteResult
from benchmarks.stats import Figure
from benchmarks.suite import Suite

REPLICAS = (1, 3)


async def _load(
    nginx: cluster.Nginx, body: bytes, concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=nginx.url, verify=str(nginx.cert), timeout=30, limits=limits
    ) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/api/v1/predict", files={"image": ("a.jpg", body, "image/jpeg")}
                    )
                    status = r.status_code
                except httpx.TransportError:
                    status = 0
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    ok = statuses.get(200, 0)
    return {"latencies": latencies, "statuses": statuses, "ok": ok, "elapsed": elapsed}


def scaleout_suite(
    models: ModelSet, quick: bool, concurrency: int = 8, seconds: float | None = None
) -> SuiteResult:
    suite = SuiteResult("scaleout", quick)
    missing = cluster.missing_tools()
    if missing:
        suite.skip("all", f"needs the Debian package(s) {', '.join(missing)}")
        return suite
    seconds = seconds or (5.0 if quick else 20.0)
    body = upload_images(1)[0][0].data
    model = models.serving or models.fp32
    suite.params = {
        "concurrency": concurrency,
        "seconds": seconds,
        "endpoint": "POST /api/v1/predict through nginx (TLS), 600x450 JPEG",
        "model": model.name if model else "-",
    }
    root = Path(tempfile.mkdtemp(prefix="scaleout-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user
    try:
        with cluster.running_postgres(root / "pg") as pg:
            extra = {"APP_API_AUTH": "0"}
            if model:
                extra["APP_MODEL_PATH"] = str(model)
            env = cluster.fleet_env(pg.url, extra)
            cluster.migrate(env, root / "migrate")
            for n in REPLICAS:
                with (
                    cluster.running_replicas(n, env, root / f"r{n}") as replicas,
                    cluster.running_nginx(
                        root / f"nginx{n}", [f"127.0.0.1:{r.port}" for r in replicas]
                    ) as nginx,
                ):
                    asyncio.run(_load(nginx, body, concurrency, 1.0))  # warm-up
                    result = asyncio.run(_load(nginx, body, concurrency, seconds))
                key = f"replicas{n}"
                suite.add(
                    key + "/throughput",
                    Figure.value(result["ok"] / result["elapsed"], "req/s", result["ok"]),
                )
                suite.add_samples(key + "/latency", result["latencies"], "ms")
                errors = sum(v for s, v in result["statuses"].items() if s != 200)
                suite.add(
                    key + "/errors", Figure.value(errors, "requests", len(result["latencies"]))
                )
                suite.params[f"statuses_{key}"] = {str(k): v for k, v in result["statuses"].items()}
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root, ignore_errors=True)
    suite.notes.append(
        "Replicas, nginx and the load generator share this machine's cores: on 2 cores this is "
        "a correctness check of the fleet, not a speed-up."
    )
    return suite


def _section(run: dict[str, Any]) -> list[str]:
    figs = figures(run, "scaleout")
    if not figs:
        return ["_Scale-out suite not run._", ""]
    params = run["suites"]["scaleout"].get("params", {})
    rows = []
    for n in REPLICAS:
        key = f"replicas{n}"
        if f"{key}/throughput" not in figs:
            continue
        latency = figs.get(f"{key}/latency", {})
        rows.append(
            [
                str(n),
                fmt(figs[f"{key}/throughput"]["median"], 1),
                fmt(latency.get("median")),
                fmt(latency.get("p99")),
                fmt(figs.get(f"{key}/errors", {}).get("median"), 0),
            ]
        )
    return [
        f"{params.get('endpoint')}, concurrency {params.get('concurrency')} for "
        f"{params.get('seconds')} s per level. On 2 cores 3 replicas share the same CPUs as 1: "
        "a correctness check of the fleet, not a speed-up.",
        "",
        *table(["replicas", "req/s", "p50 ms", "p99 ms", "errors"], rows),
    ]


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return scaleout_suite(models, args.quick)


SUITE = Suite(
    name="scaleout",
    help="throughput through nginx with 1 and 3 replicas on PostgreSQL (needs nginx, postgresql)",
    run=_run,
    title="Scale-out through nginx",
    section=_section,
)
