"""Service suite: the real server under HTTP load at several concurrencies, the upstream-style
baseline under the same load, and the in-process ceiling on the same cores."""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike
from tqdm import tqdm

from app.config import usable_cpus
from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess
from benchmarks.artifacts import ModelSet
from benchmarks.images import Sample, upload_images
from benchmarks.load import LoadResult, multipart_body, run_load
from benchmarks.markdown import figures, fmt, table
from benchmarks.results import LevelKey, SuiteResult
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

CONCURRENCY = (1, 4, 8, 16)
PAIRED_ROUNDS = 6  # service/baseline/ceiling rounds for the ratios (full runs)


class Ceiling:
    """Images per second of decode + preprocess + infer in-process, in three layouts.

    - serial: one loop, ORT on all usable cores;
    - parallel: one loop per usable core, sharing a 1-thread session;
    - batched8: preprocess 8 on all cores, one ``run`` of 8 on all cores (micro-batching's best).

    Measured in rounds between the HTTP load levels, each round running every layout on the
    same images, so background load on this shared machine falls on all of them alike.
    """

    LAYOUTS = ("serial", "parallel", "batched8")

    def __init__(self, model: Path, samples: list[Sample]) -> None:
        cv2.setNumThreads(1)
        self.cores = usable_cpus()
        self.wide = Classifier(model, "cpu", self.cores)
        self.narrow = Classifier(model, "cpu", 1)
        self.spec = self.wide.spec
        for clf in (self.wide, self.narrow):
            clf.warm_up()
        self.datas = [s.data for s in samples]
        self.model = model
        self.seconds = dict.fromkeys(self.LAYOUTS, 0.0)
        self.images = dict.fromkeys(self.LAYOUTS, 0)
        self._pool = ThreadPoolExecutor(self.cores)
        self._offset = 0

    def _x(self, i: int) -> np.ndarray:
        return preprocess(self.datas[i % len(self.datas)], self.spec)

    def _serial(self, idx: range) -> None:
        for i in idx:
            self.wide.run(self._x(i)[None])

    def _parallel(self, idx: range) -> None:
        def loop(part: range) -> None:
            for i in part:
                self.narrow.run(self._x(i)[None])

        parts = [idx[k :: self.cores] for k in range(self.cores)]
        threads = [threading.Thread(target=loop, args=(p,)) for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _batched(self, idx: range) -> None:
        for first in range(idx.start, idx.stop, 8):
            xs = list(self._pool.map(self._x, range(first, min(first + 8, idx.stop))))
            self.wide.run(np.stack(xs))

    def round(self, images: int) -> dict[str, float]:
        """Run every layout once on the next ``images`` images (a multiple of 8 is fairest).

        Returns each layout's images per second in this round.
        """
        idx = range(self._offset, self._offset + images)
        self._offset += images
        rates: dict[str, float] = {}
        for name, fn in (
            ("serial", self._serial),
            ("parallel", self._parallel),
            ("batched8", self._batched),
        ):
            start = time.perf_counter()
            fn(idx)
            seconds = time.perf_counter() - start
            self.seconds[name] += seconds
            self.images[name] += images
            rates[name] = images / seconds
        return rates

    def rates(self) -> dict[str, float]:
        """Images per second of each layout over every round so far."""
        return {k: self.images[k] / self.seconds[k] for k in self.LAYOUTS if self.seconds[k]}

    def best_layout(self) -> str:
        """The layout with the most images per second over every round so far: picked once,
        since the best of several noisy layouts per round would run high."""
        rates = self.rates()
        return max(rates, key=lambda k: rates[k])

    def record(self, suite: SuiteResult) -> float:
        """Add the figures; return the best layout's images per second."""
        rates = self.rates()
        for name, rate in rates.items():
            suite.add(f"ceiling/{name}/throughput", Figure.value(rate, "img/s", self.images[name]))
        best = rates[self.best_layout()]
        suite.add("ceiling/best/throughput", Figure.value(best, "img/s"))
        suite.params["ceiling"] = {
            "model": self.model.name,
            "cores": self.cores,
            "images_per_layout": self.images,
            "best_layout": self.best_layout(),
        }
        self._pool.shutdown()
        return best


def bound_with_client(
    cores: int, ceiling_ips: ArrayLike, client_ms: ArrayLike, baseline_rps: ArrayLike
) -> np.ndarray:
    """The ceiling once the load generator's CPU per request is paid out of the same cores,
    over the baseline: the most a server whose HTTP cost nothing could show in this benchmark.
    Element-wise, so one figure or one per round."""
    per_request_s = cores / np.asarray(ceiling_ips) + np.asarray(client_ms) / 1000
    bound: np.ndarray = cores / per_request_s / np.asarray(baseline_rps)
    return bound


@dataclass
class PairedRounds:
    """Service, baseline and ceiling measured back to back, round after round.

    This VM's speed drifts by tens of per cent within minutes, so a ratio of two figures taken
    minutes apart can be off by more than the gap to a target. Each round measures all three
    within seconds, in A-B-C then C-B-A order, and the ratios are taken within the round.
    """

    cores: int
    layout: str = ""  # the ceiling layout the rounds use: the best one over all rounds
    service_rps: list[float] = field(default_factory=list)
    baseline_rps: list[float] = field(default_factory=list)
    ceiling_rates: list[dict[str, float]] = field(default_factory=list)  # per layout
    client_ms: list[float] = field(default_factory=list)  # load generator CPU per request

    @property
    def ceiling_ips(self) -> list[float]:
        return [rates[self.layout] for rates in self.ceiling_rates]

    def bound_with_client(self) -> np.ndarray:
        """Per round: :func:`bound_with_client`."""
        return bound_with_client(self.cores, self.ceiling_ips, self.client_ms, self.baseline_rps)

    def record(self, suite: SuiteResult, service_c: int, baseline_c: int, layout: str) -> None:
        if not self.service_rps:
            return
        self.layout = layout
        for name, values, unit in (
            ("service_throughput", self.service_rps, "req/s"),
            ("baseline_throughput", self.baseline_rps, "req/s"),
            ("ceiling_throughput", self.ceiling_ips, "img/s"),
        ):
            suite.add_samples(f"paired/{name}", values, unit)
        s, b, c = (np.array(v) for v in (self.service_rps, self.baseline_rps, self.ceiling_ips))
        suite.add_samples("paired/service_vs_baseline", s / b, "x")
        suite.add_samples("paired/ceiling_vs_baseline", c / b, "x")
        suite.add_samples("paired/service_vs_ceiling", s / c, "x")
        bounds = self.bound_with_client()
        suite.add_samples("paired/ceiling_with_client_vs_baseline", bounds, "x")
        suite.params["paired"] = {
            "rounds": len(self.service_rps),
            "ceiling_layout": layout,
            "service_concurrency": service_c,
            "baseline_concurrency": baseline_c,
            "service_rps": self.service_rps,
            "baseline_rps": self.baseline_rps,
            "ceiling_ips": self.ceiling_ips,
            "client_ms_per_request": self.client_ms,
            "ceiling_with_client_vs_baseline": bounds.tolist(),
        }


def paired_rounds(
    service: RunningServer,
    baseline: RunningServer,
    ceiling: Ceiling,
    samples: list[Sample],
    levels: tuple[int, int],
    sizes: tuple[int, int, int],
    rounds: int,
    time_cap_s: float,
) -> PairedRounds:
    """``rounds`` rounds of (service, baseline, ceiling), alternating the order.

    Args:
        levels: concurrency for the service and for the baseline (each one's peak level).
        sizes: requests for the service, requests for the baseline, images for the ceiling.
    """
    out = PairedRounds(ceiling.cores)
    bodies = {
        t: [multipart_body(t.target.form_field, s) for s in samples] for t in (service, baseline)
    }

    def load(server: RunningServer, concurrency: int, requests: int) -> LoadResult:
        url = server.target.base_url + server.target.predict_path
        result = run_load(url, bodies[server], concurrency, requests, time_cap_s)
        if result.errors:
            raise ServerError(f"{server.target.name}: non-2xx answers {dict(result.statuses)}")
        return result

    def service_step() -> None:
        result = load(service, levels[0], sizes[0])
        client_ms = result.cpu_ms_per_request("client")
        if client_ms is None:
            raise ServerError(f"{service.target.name}: no request answered")
        out.service_rps.append(result.rps)
        out.client_ms.append(client_ms)

    steps: list[Callable[[], None]] = [
        service_step,
        lambda: out.baseline_rps.append(load(baseline, levels[1], sizes[1]).rps),
        lambda: out.ceiling_rates.append(ceiling.round(sizes[2])),
    ]
    for r in tqdm(range(rounds), desc="paired rounds", unit="round"):
        for step in steps if r % 2 == 0 else steps[::-1]:
            step()
    return out


def _peak_level(results: dict[int, LoadResult]) -> int:
    return max(results, key=lambda c: results[c].rps)


def load_target(
    target: Target,
    samples: list[Sample],
    concurrency: tuple[int, ...],
    requests: int,
    time_cap_s: float,
    suite: SuiteResult,
    between: Callable[[], object] | None = None,
) -> dict[int, LoadResult]:
    """Start the target, drive it at each concurrency, record figures under its name.

    ``between`` runs before the first level and after each one (the ceiling's rounds).
    """
    bodies = [multipart_body(target.form_field, s) for s in samples]
    out: dict[int, LoadResult] = {}
    statuses: dict[str, dict[str, int]] = {}
    with RunningServer(target) as server:
        ready = server.wait_ready()
        log.info("%s ready in %.2f s on %s", target.name, ready, target.base_url)
        if between:
            between()
        for c in tqdm(concurrency, desc=f"load {target.name}", unit="level"):
            result = run_load(
                target.base_url + target.predict_path,
                bodies,
                c,
                requests,
                time_cap_s,
                server_pid=server.proc.pid,
            )
            out[c] = result
            statuses[f"c{c}"] = dict(result.statuses)
            level = LevelKey(target.name, c, "latency")
            key = f"{target.name}/c{c}"
            if result.latencies_ms:
                suite.add_samples(level, result.latencies_ms, "ms")
            suite.add(
                replace(level, quantity="throughput"), Figure.value(result.rps, "req/s", result.ok)
            )
            for side in ("server", "client"):
                ms = result.cpu_ms_per_request(side)
                if ms is not None:
                    figure = Figure.value(ms, "ms CPU", result.ok)
                    suite.add(replace(level, quantity=f"{side}_cpu_per_request"), figure)
            suite.add(
                replace(level, quantity="errors"),
                Figure.value(result.errors, "requests", max(1, sum(result.statuses.values()))),
            )
            if result.errors:
                suite.notes.append(f"{key}: non-2xx answers {dict(result.statuses)}")
                log.warning("%s: %s", key, dict(result.statuses))
            if result.capped:
                suite.notes.append(
                    f"{key}: time cap {time_cap_s:.0f} s reached after "
                    f"{sum(result.statuses.values())} requests"
                )
            if between:
                between()
    suite.params.setdefault("status_counts", {})[target.name] = statuses
    return out


def service_suite(
    models: ModelSet,
    quick: bool = False,
    concurrency: tuple[int, ...] = CONCURRENCY,
    requests: int | None = None,
    baseline_requests: int | None = None,
    time_cap_s: float | None = None,
) -> SuiteResult:
    """HTTP latency and throughput of the service and the baseline, and the in-process ceiling."""
    suite = SuiteResult("service", quick)
    requests = requests or (60 if quick else 1000)
    baseline_requests = baseline_requests or (16 if quick else 300)
    cap = time_cap_s or (10.0 if quick else 60.0)
    samples, source = upload_images()
    suite.params = {
        "images": f"{len(samples)} JPEGs 600x450 from {source}",
        "concurrency": list(concurrency),
        "requests_per_level": requests,
        "baseline_requests_per_level": baseline_requests,
        "time_cap_s_per_level": cap,
        "client": "aiohttp.ClientSession, keep-alive, in the same machine",
    }
    if models.serving is None:
        suite.skip("all", "no model to serve")
        return suite
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        samples, refused = accepted_samples(models, samples, Path(tmp))
        if refused:
            suite.params["refused_by_service"] = refused
            suite.notes.append(
                f"the service's input gate refused {len(refused)} image(s) ({', '.join(refused)}); "
                f"every server and the ceiling used the other {len(samples)}"
            )
        target = service_target(models, Path(tmp) / "data")
        suite.params["service"] = target.description
        ceiling = Ceiling(models.serving, samples)
        chunk = 24 if quick else 200

        service = load_target(
            target, samples, concurrency, requests, cap, suite, between=lambda: ceiling.round(chunk)
        )
        baseline = baseline_target(models, Path(tmp) / "uploads")
        base: dict[int, LoadResult] = {}
        if baseline is None:
            suite.skip(
                "baseline", "no Keras model in the manifest (--keras) to serve upstream-style"
            )
        else:
            suite.params["baseline"] = baseline.description
            try:
                base = load_target(baseline, samples, concurrency, baseline_requests, cap, suite)
            except ServerError as exc:
                suite.skip("baseline", str(exc).splitlines()[0])
        if base and baseline is not None:
            peaks = (_peak_level(service), _peak_level(base))
            try:
                with RunningServer(target) as s, RunningServer(baseline) as b:
                    s.wait_ready()
                    b.wait_ready()
                    sizes = (requests, baseline_requests // 2, chunk)
                    rounds = 2 if quick else PAIRED_ROUNDS
                    paired = paired_rounds(s, b, ceiling, samples, peaks, sizes, rounds, cap)
                paired.record(suite, *peaks, ceiling.best_layout())
            except ServerError as exc:
                suite.skip("paired", str(exc).splitlines()[0])
        best = ceiling.record(suite)
    if base:
        base_peak = max(r.rps for r in base.values())
        # What a server with no HTTP cost at all (and no client on its cores) would reach.
        suite.add("ratio/ceiling_vs_baseline_peak", Figure.value(ratio(best, base_peak), "x"))
        # The same, with the load generator's measured CPU per request added, since it shares
        # the cores: the most a zero-cost HTTP server could show in this benchmark.
        client_ms = [ms for r in service.values() if (ms := r.cpu_ms_per_request("client"))]
        if client_ms and best > 0:
            bound = bound_with_client(ceiling.cores, best, np.median(client_ms), base_peak)
            suite.add("ratio/ceiling_with_client_vs_baseline_peak", Figure.value(float(bound), "x"))
    for c, result in service.items():
        suite.add(
            LevelKey("ratio", c, "service_vs_ceiling"), Figure.value(ratio(result.rps, best), "x")
        )
        if c in base:
            suite.add(
                LevelKey("ratio", c, "service_vs_baseline_throughput"),
                Figure.value(ratio(result.rps, base[c].rps), "x"),
            )
            if result.ok_latencies_ms and base[c].ok_latencies_ms:
                suite.add(
                    LevelKey("ratio", c, "baseline_vs_service_p50_latency"),
                    Figure.value(
                        ratio(
                            float(np.median(base[c].ok_latencies_ms)),
                            float(np.median(result.ok_latencies_ms)),
                        ),
                        "x",
                    ),
                )
    return suite


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _service_section(run: dict[str, Any]) -> list[str]:
    figs = figures(run, "service")
    if not figs:
        return ["_Service suite not run._", ""]
    suite = run["suites"]["service"]
    params = suite.get("params", {})
    statuses = params.get("status_counts", {})
    keys = [key for k in figs if (key := LevelKey.parse(k))]
    rows = []
    for target in ("service", "baseline"):
        levels = sorted({key.concurrency for key in keys if key.server == target})
        for c in levels:
            lat = figs.get(f"{target}/c{c}/latency", {})
            rps = figs.get(f"{target}/c{c}/throughput", {})
            counts = statuses.get(target, {}).get(f"c{c}", {})
            errors = {s: n for s, n in counts.items() if not s.startswith("2")}
            rows.append(
                [
                    target,
                    str(c),
                    fmt(lat.get("median")),
                    fmt(lat.get("p95")),
                    fmt(lat.get("p99")),
                    fmt(rps.get("median"), 1),
                    fmt(figs.get(f"{target}/c{c}/server_cpu_per_request", {}).get("median")),
                    fmt(figs.get(f"{target}/c{c}/client_cpu_per_request", {}).get("median")),
                    str(lat.get("n", 0)),
                    ", ".join(f"{s}: {n}" for s, n in errors.items()) or "0",
                ]
            )
    ceiling = [
        [k.split("/")[1], fmt(v["median"], 1)]
        for k, v in sorted(figs.items())
        if k.startswith("ceiling/")
    ]
    ratios = []
    levels = sorted({key.concurrency for key in keys if key.server == "ratio"})
    for c in levels:
        ratios.append(
            [
                str(c),
                fmt(figs.get(f"ratio/c{c}/service_vs_ceiling", {}).get("median")),
                fmt(figs.get(f"ratio/c{c}/service_vs_baseline_throughput", {}).get("median")),
                fmt(figs.get(f"ratio/c{c}/baseline_vs_service_p50_latency", {}).get("median")),
            ]
        )
    return [
        f"Service: {params.get('service')}. Baseline: {params.get('baseline', 'not run')}. "
        f"Load: {params.get('client')}; {params.get('requests_per_level')} requests per level "
        f"for the service, {params.get('baseline_requests_per_level')} for the baseline, "
        f"{params.get('time_cap_s_per_level')} s cap per level; images: {params.get('images')}. "
        "The client runs on the same 2 cores as the server, so it takes CPU from it.",
        "",
        *table(
            [
                "server",
                "concurrency",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "req/s",
                "server CPU ms/req",
                "client CPU ms/req",
                "n",
                "errors by status",
            ],
            rows,
        ),
        "CPU ms/req: user + system CPU time of the server (all its threads and worker "
        "processes) and of the load generator over the recorded requests, per request. Two "
        "cores give at most 2000 ms of CPU per second, so 2000 / (server + client) bounds the "
        "req/s of a level.",
        "",
        "In-process ceiling (decode + preprocess + infer, no HTTP), images/s:",
        "",
        *table(["layout", "img/s"], ceiling),
        *_ceiling_bound(figs),
        *_paired_table(params.get("paired")),
        *table(
            [
                "concurrency",
                "service / ceiling",
                "service / baseline (req/s)",
                "baseline / service (p50)",
            ],
            ratios,
        ),
    ]


def _paired_table(paired: dict[str, Any] | None) -> list[str]:
    """Round by round: the three measured within seconds of each other, and their ratios."""
    if not paired:
        return []
    bounds = paired.get("ceiling_with_client_vs_baseline", [None] * paired["rounds"])
    rounds = zip(
        paired["service_rps"], paired["baseline_rps"], paired["ceiling_ips"], bounds, strict=True
    )
    rows = [
        [str(i + 1), *(fmt(v, 1) for v in (s, b, c, s / b, c / b, bound)), fmt(s / c)]
        for i, (s, b, c, bound) in enumerate(rounds)
    ]
    return [
        f"Paired rounds: the service at concurrency {paired['service_concurrency']}, the "
        f"baseline at concurrency {paired['baseline_concurrency']} (each one's peak level above) "
        "and the in-process ceiling, measured back to back in each round (order reversed every "
        "other round), so the VM's drift falls on all three alike. The 20× target is read from "
        "the median of the per-round ratios.",
        "",
        *table(
            [
                "round",
                "service req/s",
                "baseline req/s",
                "ceiling img/s",
                "service / baseline",
                "ceiling / baseline",
                "same, client CPU paid",
                "service / ceiling",
            ],
            rows,
        ),
    ]


def _ceiling_bound(figs: dict[str, Any]) -> list[str]:
    bound = figs.get("ratio/ceiling_vs_baseline_peak", {}).get("median")
    if bound is None:
        return []
    lines = [
        f"The best in-process layout is **{bound:.1f}×** the baseline's peak req/s: the most "
        "any HTTP server could reach in this run if HTTP and the load generator cost no CPU."
    ]
    with_client = figs.get("ratio/ceiling_with_client_vs_baseline_peak", {}).get("median")
    if with_client is not None:
        lines[0] += (
            f" Adding the load generator's measured CPU per request, which shares the cores, "
            f"gives **{with_client:.1f}×**: the most a server with free HTTP could show here."
        )
    return [*lines, ""]


def _peak_rps(run: dict[str, Any], target: str) -> float | None:
    figs = run.get("suites", {}).get("service", {}).get("figures", {})
    values = [
        f["median"]
        for k, f in figs.items()
        if (key := LevelKey.parse(k)) and key.server == target and key.quantity == "throughput"
    ]
    return max(values) if values else None


def _paired_note(run: dict[str, Any]) -> str:
    def span(key: str) -> str:
        low, high = fig(run, "service", key, "min"), fig(run, "service", key, "max")
        return f"{low:.1f}–{high:.1f}×"

    rounds = run["suites"]["service"].get("params", {}).get("paired", {}).get("rounds", "?")
    ceiling = fig(run, "service", "paired/ceiling_vs_baseline")
    note = (
        f", median of {rounds} paired rounds ({span('paired/service_vs_baseline')}); "
        f"in-process bound {ceiling:.1f}× ({span('paired/ceiling_vs_baseline')})"
    )
    with_client = fig(run, "service", "paired/ceiling_with_client_vs_baseline")
    if with_client is not None:
        key = "paired/ceiling_with_client_vs_baseline"
        note += f", {with_client:.1f}× ({span(key)}) with the client's CPU"
    return note


def _bound_note(run: dict[str, Any]) -> str:
    bound = fig(run, "service", "ratio/ceiling_vs_baseline_peak")
    with_client = fig(run, "service", "ratio/ceiling_with_client_vs_baseline_peak")
    if bound is None:
        return ""
    if with_client is None:
        return f" (in-process bound {bound:.1f}×)"
    return f" (in-process bound {bound:.1f}×, {with_client:.1f}× with the client's CPU)"


def _targets(run: dict[str, Any]) -> list[Verdict]:
    p50 = fig(run, "service", LevelKey("service", 1, "latency"))
    share = fig(run, "service", LevelKey("ratio", 8, "service_vs_ceiling"))
    paired = fig(run, "service", "paired/service_vs_baseline")
    times: float | None
    if paired is not None:
        # Measured round by round, each round within seconds: the median of those ratios.
        times, note = paired, _paired_note(run)
    else:
        s_peak, b_peak = _peak_rps(run, "service"), _peak_rps(run, "baseline")
        times = s_peak / b_peak if s_peak and b_peak else None
        note = _bound_note(run)
    return [
        check(
            "HTTP p50 latency at concurrency 1",
            "service #5",
            "≤ 8 ms",
            p50,
            p50 is not None and p50 <= 8.0,
            "{:.1f} ms",
        ),
        check(
            "Throughput at concurrency 8 vs in-process ceiling",
            "service #5",
            "≥ 80 %",
            None if share is None else share * 100,
            share is not None and share >= 0.8,
            "{:.1f} %",  # one decimal: runs here land within a point of the line
        ),
        check(
            "Peak throughput vs upstream Flask + Keras baseline",
            "service #5",
            "≥ 20×",
            times,
            times is not None and times >= 20,
            "{:.1f}×" + note,
        ),
    ]


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return service_suite(models, args.quick, tuple(args.concurrency), args.requests)


SUITE = Suite(
    name="service",
    help="HTTP load at concurrency 1-16, the baseline, the in-process ceiling",
    run=_run,
    title="Service under HTTP load",
    section=_service_section,
    targets=_targets,
)
