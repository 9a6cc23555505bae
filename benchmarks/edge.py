"""Edge suite: the service as a screening station with one weak core and little memory runs it.

The server is pinned to one core with ``taskset``, runs ``APP_ORT_THREADS=1`` and one worker,
and starts under an address-space ceiling set with ``prlimit --as`` (no cgroup is created: the
machines this runs on do not delegate one). ``MALLOC_ARENA_MAX=2`` keeps glibc from reserving
an arena per thread, and ``prlimit --stack`` a stack of 8 MiB per thread: both count against
that ceiling without ever being touched. API token
auth is on, as deployed. The load generator is pinned to the other cores, so the figures are the
one core's, not the client's. Figures: p50/p99 at concurrency 1, req/s at concurrency 4, cold
start to ready (median of several starts under the same limits), and peak RSS (the kernel's
VmHWM) against the memory budget.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from benchmarks.artifacts import ModelSet
from benchmarks.images import upload_images
from benchmarks.load import BOUNDARY, multipart_body, run_load
from benchmarks.markdown import fmt, median, table
from benchmarks.results import LevelKey, SuiteResult
from benchmarks.server import RunningServer, ServerError, Target, service_target, with_api_auth
from benchmarks.stats import Figure
from benchmarks.suite import Suite
from benchmarks.targets import Verdict, check, fig

log = logging.getLogger(__name__)

MB = 1e6
MIB = 1 << 20
# glibc sizes every new thread's stack from RLIMIT_STACK (8 MiB by default), and the address
# space ceiling counts that reservation: Piccolo's SQLite engine starts a thread per query
# (aiosqlite), which failed ("can't start new thread", 500s) under 512 MiB with 8 MiB stacks.
STACK_MIB = 2
# The address-space ceiling. At 512 MiB the service aborted (SIGABRT) right after loading its
# gate in 3 of 6 cold starts on 2026-12-04; 640 MiB started 6 of 6. 768 leaves room for the
# per-query SQLite threads under load. The RSS budget (512 MB) is checked separately.
ADDRESS_SPACE_MIB = 768


def edge_target(
    models: ModelSet, data_dir: Path, core: int, address_space_mib: int
) -> tuple[Target, str]:
    """The service, API auth on, behind ``taskset -c CORE prlimit --as=BYTES --stack=BYTES``."""
    target, token = with_api_auth(service_target(models, data_dir))
    argv = (
        "taskset",
        "-c",
        str(core),
        "prlimit",
        f"--as={address_space_mib * MIB}",
        f"--stack={STACK_MIB * MIB}",
        "--",
        *target.argv,
    )
    env = {
        **target.env,
        "APP_ORT_THREADS": "1",
        "APP_WORKERS": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    described = (
        f"python -m app pinned to core {core} (taskset), APP_ORT_THREADS=1, APP_WORKERS=1, "
        f"MALLOC_ARENA_MAX=2, thread stacks {STACK_MIB} MiB (prlimit --stack), API token auth on"
    )
    return dataclasses.replace(
        target, name="edge", argv=argv, env=env, description=described
    ), token


START_ATTEMPTS = 3


@contextlib.contextmanager
def started(target: Target, ready: list[float], failed: list[str]) -> Iterator[RunningServer]:
    """A cold start under the limits, retried (and recorded in ``failed``) when the process
    dies before ready: the address-space ceiling sits close to what a start reserves."""
    for attempt in range(1, START_ATTEMPTS + 1):
        server = RunningServer(target)
        try:
            ready.append(server.wait_ready())
        except ServerError as exc:
            server.stop()
            failed.append(str(exc).splitlines()[0])
            if attempt == START_ATTEMPTS:
                raise
            continue
        with server:
            yield server
        return


def edge_suite(
    models: ModelSet,
    quick: bool = False,
    requests: int | None = None,
    memory_mb: int = 512,
    address_space_mib: int = ADDRESS_SPACE_MIB,
    starts: int | None = None,
) -> SuiteResult:
    """One core, one ORT thread, an address-space ceiling: latency, throughput, start, memory."""
    suite = SuiteResult("edge", quick)
    n = requests or (30 if quick else 300)
    n4 = 2 * n if not quick else n
    starts = starts or (2 if quick else 5)
    cap = 30.0 if quick else 120.0
    samples, source = upload_images()
    suite.params = {
        "images": f"{len(samples)} JPEGs 600x450 from {source}",
        "requests": n,
        "requests_c4": n4,
        "starts": starts,
        "memory_budget_mb": memory_mb,
        "address_space_mib": address_space_mib,
        "memory_ceiling": f"prlimit --as={address_space_mib} MiB (address space, i.e. virtual "
        f"memory, which counts reserved but untouched pages) with {STACK_MIB} MiB thread stacks; "
        f"the budget ({memory_mb} MB) is checked on peak RSS, the kernel's VmHWM",
    }
    if models.serving is None:
        suite.skip("all", "no model to serve")
        return suite
    missing = [tool for tool in ("taskset", "prlimit") if shutil.which(tool) is None]
    if missing:
        suite.skip("all", f"{', '.join(missing)} not installed (util-linux)")
        return suite
    cores = sorted(os.sched_getaffinity(0))
    core, others = cores[-1], cores[:-1]
    suite.params["client"] = (
        f"aiohttp, pinned to core(s) {others}" if others else "aiohttp, on the same core"
    )
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        target, token = edge_target(models, Path(tmp) / "data", core, address_space_mib)
        suite.params["settings"] = target.description
        headers = {
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            "authorization": f"Bearer {token}",
        }
        bodies = [multipart_body(target.form_field, s) for s in samples]
        per_body = [headers] * len(bodies)
        url = target.base_url + target.predict_path
        ready: list[float] = []
        failed: list[str] = []
        if others:
            os.sched_setaffinity(0, others)
        try:
            for _ in tqdm(range(starts - 1), desc="edge cold starts", unit="start"):
                with started(target, ready, failed) as server:
                    pass
            with started(target, ready, failed) as server:
                # Images the input gate refuses (422) leave the load set, as in the peers suite.
                with httpx.Client(timeout=30.0) as client:
                    answered = [client.post(url, content=b, headers=headers) for b in bodies]
                refused = [s.name for s, r in zip(samples, answered, strict=True) if r.is_error]
                bodies = [b for b, r in zip(bodies, answered, strict=True) if not r.is_error]
                per_body = [headers] * len(bodies)
                suite.params["refused_by_service"] = refused
                run_load(url, bodies, 1, 20, cap, warmup=0, headers=per_body)
                one = run_load(url, bodies, 1, n, cap, headers=per_body)
                four = run_load(
                    url, bodies, 4, n4, cap, server_pid=server.proc.pid, headers=per_body
                )
                rss, peak = server.rss_bytes()
                alive = server.proc.poll() is None
                tail = server.log_tail(5)
        except ServerError as exc:
            suite.skip("all", f"the service did not start under these limits: {exc}")
            return suite
        finally:
            os.sched_setaffinity(0, cores)
    if failed:
        suite.notes.append(
            f"{len(failed)} start(s) under the limits died before ready and were retried: "
            + "; ".join(failed)
        )
    suite.params["failed_starts"] = len(failed)
    for c, result in ((1, one), (4, four)):
        if result.errors:
            suite.notes.append(f"c{c}: non-2xx answers {dict(result.statuses)}")
        if result.ok_latencies_ms:
            suite.add_samples(LevelKey("", c, "latency"), result.ok_latencies_ms, "ms")
        suite.add(LevelKey("", c, "throughput"), Figure.value(result.rps, "req/s", result.ok))
    ms = four.cpu_ms_per_request("server")
    if ms is not None:
        suite.add(LevelKey("", 4, "server_cpu_per_request"), Figure.value(ms, "ms CPU", four.ok))
    suite.add_samples("ready_s", ready, "s")
    suite.add("rss_after_load", Figure.value(rss / MB, "MB", max(1, four.ok)))
    suite.add("rss_peak", Figure.value(peak / MB, "MB", max(1, four.ok)))
    suite.add("rss_peak_share_of_budget", Figure.value(peak / (memory_mb * MIB), "x"))
    if not alive:
        suite.notes.append(f"the server exited during the load: {tail}")
    log.info(
        "edge: p50 %.2f ms, %.1f req/s at c=4, ready %.2f s, peak RSS %.0f MB",
        float(np.median(one.ok_latencies_ms or [np.nan])),
        four.rps,
        float(np.median(ready)),
        peak / MB,
    )
    return suite


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _edge_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("edge", {})
    figs = suite.get("figures", {})
    if not figs:
        reasons = "; ".join(f"{k}: {v}" for k, v in suite.get("skipped", {}).items())
        return [f"_Edge suite not run{': ' + reasons if reasons else ''}._", ""]
    params = suite.get("params", {})
    budget = params.get("memory_budget_mb")
    rows = [
        ["p50 at c=1", f"{fmt(median(figs, 'c1/latency'))} ms"],
        ["p99 at c=1", f"{fmt(figs.get('c1/latency', {}).get('p99'))} ms"],
        ["req/s at c=4", fmt(median(figs, "c4/throughput"), 1)],
        ["p50 at c=4", f"{fmt(median(figs, 'c4/latency'))} ms"],
        ["cold start to ready (median)", f"{fmt(median(figs, 'ready_s'))} s"],
        ["peak RSS (VmHWM)", f"{fmt(median(figs, 'rss_peak'), 0)} MB of {budget} MB"],
        ["RSS after the load", f"{fmt(median(figs, 'rss_after_load'), 0)} MB"],
        ["server CPU per request at c=4", f"{fmt(median(figs, 'c4/server_cpu_per_request'))} ms"],
    ]
    return [
        f"Settings: {params.get('settings')}. Memory ceiling: {params.get('memory_ceiling')}. "
        f"Images: {params.get('images')}; {params.get('requests')} requests per level; "
        f"{params.get('starts')} cold starts. The load generator runs on the other core "
        f"({params.get('client')}).",
        "",
        *table(["figure", "value"], rows),
    ]


def _targets(run: dict[str, Any]) -> list[Verdict]:
    peak = fig(run, "edge", "rss_peak")
    budget = run.get("suites", {}).get("edge", {}).get("params", {}).get("memory_budget_mb", 512)
    return [
        check(
            "Edge profile: peak RSS on one core",
            "edge #13",
            f"≤ {budget} MB",
            peak,
            peak is not None and peak <= budget,
            "{:.0f} MB",
        )
    ]


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return edge_suite(models, args.quick, args.requests, args.memory_mb, args.address_space_mib)


SUITE = Suite(
    name="edge",
    help="one core (taskset), APP_ORT_THREADS=1, a memory ceiling (prlimit --as)",
    run=_run,
    title="Edge profile: one core, little memory",
    section=_edge_section,
    targets=_targets,
)
