"""Startup and memory suite: process start to the first 200 from /health/ready (median of
several cold starts), RSS after warm-up and after N requests, and peak RSS; same for baseline."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.artifacts import ModelSet
from benchmarks.images import Sample, upload_images
from benchmarks.load import multipart_body, run_load
from benchmarks.markdown import figures, fmt, table
from benchmarks.results import SuiteResult
from benchmarks.server import (
    RunningServer,
    ServerError,
    Target,
    accepted_samples,
    baseline_target,
    service_target,
)
from benchmarks.stats import Figure, ratio
from benchmarks.suite import Suite
from benchmarks.targets import Verdict, check, fig

log = logging.getLogger(__name__)

MB = 1e6


def _measure(
    target: Target,
    samples: list[Sample],
    starts: int,
    warmup: int,
    requests: int,
    concurrency: int,
    time_cap_s: float,
    suite: SuiteResult,
) -> dict[str, float]:
    bodies = [multipart_body(target.form_field, s) for s in samples]
    url = target.base_url + target.predict_path
    times: list[float] = []
    for _ in tqdm(range(starts - 1), desc=f"cold starts {target.name}", unit="start"):
        with RunningServer(target) as server:
            times.append(server.wait_ready())
    # The last cold start goes on to the memory run (a TensorFlow start is expensive).
    with RunningServer(target) as server:
        times.append(server.wait_ready())
        idle, _ = server.rss_bytes()
        run_load(url, bodies, concurrency, warmup, time_cap_s, warmup=0)
        warm, _ = server.rss_bytes()
        result = run_load(url, bodies, concurrency, requests, time_cap_s, warmup=0)
        after, peak = server.rss_bytes()
    suite.add_samples(f"{target.name}/ready_s", times, "s")
    sent = sum(result.statuses.values())
    suite.add(f"{target.name}/rss_ready_idle", Figure.value(idle / MB, "MB"))
    suite.add(f"{target.name}/rss_after_warmup", Figure.value(warm / MB, "MB", warmup))
    suite.add(f"{target.name}/rss_after_requests", Figure.value(after / MB, "MB", max(1, sent)))
    suite.add(f"{target.name}/rss_peak", Figure.value(peak / MB, "MB", max(1, sent)))
    suite.params.setdefault("requests_sent", {})[target.name] = sent
    if result.errors:
        suite.notes.append(f"{target.name}: non-2xx during the memory run {dict(result.statuses)}")
    if result.capped:
        suite.notes.append(f"{target.name}: time cap reached after {sent} of {requests} requests")
    return {"ready_s": float(np.median(times)), "rss_after": after / MB, "peak": peak / MB}


def startup_suite(
    models: ModelSet,
    quick: bool = False,
    starts: int | None = None,
    requests: int | None = None,
    concurrency: int = 4,
    time_cap_s: float | None = None,
) -> SuiteResult:
    """Cold start and memory of the service and of the upstream-style baseline."""
    suite = SuiteResult("startup", quick)
    starts = starts or (2 if quick else 5)
    requests = requests or (100 if quick else 1000)
    warmup = 10 if quick else 20
    cap = time_cap_s or (20.0 if quick else 300.0)
    suite.params = {
        "starts": starts,
        "requests": requests,
        "warmup_requests": warmup,
        "concurrency": concurrency,
        "time_cap_s": cap,
        "ready": "seconds from Popen to the first 200 from GET /health/ready, polled every 5 ms",
        "rss": "sum over the server process and its children; peak is the kernel's VmHWM",
    }
    if models.serving is None:
        suite.skip("all", "no model to serve")
        return suite
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        samples, refused = accepted_samples(models, upload_images()[0], Path(tmp))
        if refused:
            suite.params["refused_by_service"] = refused
        service = service_target(models, Path(tmp) / "data")
        figures["service"] = _measure(
            service, samples, starts, warmup, requests, concurrency, cap, suite
        )
        baseline = baseline_target(models, Path(tmp) / "uploads")
        if baseline is None:
            suite.skip("baseline", "no Keras model to serve upstream-style")
        else:
            base_requests = requests if not quick else min(requests, 40)
            try:
                base_starts = 1 if quick else starts
                figures["baseline"] = _measure(
                    baseline, samples, base_starts, warmup, base_requests, concurrency, cap, suite
                )
            except ServerError as exc:
                suite.skip("baseline", str(exc).splitlines()[0])
    if "baseline" in figures:
        s, b = figures["service"], figures["baseline"]
        suite.add(
            "ratio/baseline_vs_service_ready", Figure.value(ratio(b["ready_s"], s["ready_s"]), "x")
        )
        suite.add(
            "ratio/baseline_vs_service_rss",
            Figure.value(ratio(b["rss_after"], s["rss_after"]), "x"),
        )
    return suite


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _startup_section(run: dict[str, Any]) -> list[str]:
    figs = figures(run, "startup")
    if not figs:
        return ["_Startup suite not run._", ""]
    params = run["suites"]["startup"].get("params", {})
    sent = params.get("requests_sent", {})
    rows = []
    for target in ("service", "baseline"):
        ready = figs.get(f"{target}/ready_s")
        if not ready:
            continue
        rows.append(
            [
                target,
                fmt(ready["median"]),
                fmt(ready["min"]),
                fmt(ready["max"]),
                str(ready["n"]),
                fmt(figs.get(f"{target}/rss_ready_idle", {}).get("median"), 0),
                fmt(figs.get(f"{target}/rss_after_warmup", {}).get("median"), 0),
                fmt(figs.get(f"{target}/rss_after_requests", {}).get("median"), 0),
                fmt(figs.get(f"{target}/rss_peak", {}).get("median"), 0),
                str(sent.get(target, "—")),
            ]
        )
    return [
        f"Ready: {params.get('ready')}. RSS: {params.get('rss')}. Load for the memory run: "
        f"concurrency {params.get('concurrency')}.",
        "",
        *table(
            [
                "server",
                "ready p50 s",
                "min",
                "max",
                "starts",
                "RSS idle MB",
                "after warm-up MB",
                "after load MB",
                "peak MB",
                "requests",
            ],
            rows,
        ),
    ]


def _targets(run: dict[str, Any]) -> list[Verdict]:
    ready = fig(run, "startup", "service/ready_s")
    rss = fig(run, "startup", "service/rss_after_requests")
    n = run.get("suites", {}).get("startup", {}).get("params", {}).get("requests_sent", {})
    return [
        check(
            "Cold start to ready (median)",
            "service #5",
            "≤ 1.5 s",
            ready,
            ready is not None and ready <= 1.5,
            "{:.2f} s",
        ),
        check(
            f"Serving RSS after {n.get('service', 1000)} requests",
            "service #5",
            "≤ 200 MB",
            rss,
            rss is not None and rss <= 200,
            "{:.0f} MB",
        ),
    ]


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return startup_suite(models, args.quick, args.starts, args.requests)


SUITE = Suite(
    name="startup",
    help="cold start to ready and RSS, service and baseline",
    run=_run,
    title="Start-up and memory",
    section=_startup_section,
    targets=_targets,
)
