"""Service suite: the real server under HTTP load at several concurrencies, the upstream-style
baseline under the same load, and the in-process ceiling on the same cores."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from app.config import usable_cpus
from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess
from benchmarks.artifacts import ModelSet
from benchmarks.images import Sample, upload_images
from benchmarks.load import LoadResult, multipart_body, run_load
from benchmarks.results import SuiteResult
from benchmarks.server import RunningServer, ServerError, Target, baseline_target, service_target
from benchmarks.stats import Figure, ratio

log = logging.getLogger(__name__)

CONCURRENCY = (1, 4, 8, 16)


def ceiling(
    model: Path, samples: list[Sample], images: int, time_cap_s: float, suite: SuiteResult
) -> float:
    """Images per second of decode + preprocess + infer in-process, best of three layouts.

    - serial: one loop, ORT on all usable cores;
    - parallel: one loop per usable core, sharing a 1-thread session (what the server does);
    - batched: preprocess 8 in parallel, one ``run`` of 8 on all cores (micro-batching's best).
    """
    cv2.setNumThreads(1)
    cores = usable_cpus()
    wide = Classifier(model, "cpu", cores)
    narrow = Classifier(model, "cpu", 1)
    spec = wide.spec
    for clf in (wide, narrow):
        clf.warm_up()
    datas = [s.data for s in samples]

    def one(i: int, clf: Classifier) -> None:
        clf.run(preprocess(datas[i % len(datas)], spec)[None])

    results: dict[str, float] = {}
    # serial
    deadline = time.perf_counter() + time_cap_s
    start, done = time.perf_counter(), 0
    for i in tqdm(range(images), desc="ceiling serial", unit="img", mininterval=1.0):
        one(i, wide)
        done += 1
        if time.perf_counter() > deadline:
            break
    results["serial"] = done / (time.perf_counter() - start)
    # parallel
    counter = iter(range(images))
    lock = threading.Lock()
    done_p = 0

    def loop() -> None:
        nonlocal done_p
        while time.perf_counter() < deadline_p:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            one(i, narrow)
            with lock:
                done_p += 1

    deadline_p = time.perf_counter() + time_cap_s
    start = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["parallel"] = done_p / (time.perf_counter() - start)
    # batched
    batch = 8
    deadline = time.perf_counter() + time_cap_s
    start, done = time.perf_counter(), 0
    with ThreadPoolExecutor(cores) as pool:
        for first in range(0, images, batch):
            idx = range(first, min(first + batch, images))
            xs = list(pool.map(lambda i: preprocess(datas[i % len(datas)], spec), idx))
            wide.run(np.stack(xs))
            done += len(xs)
            if time.perf_counter() > deadline:
                break
    results["batched8"] = done / (time.perf_counter() - start)
    for name, rps in results.items():
        suite.add(f"ceiling/{name}/throughput", Figure.value(rps, "img/s", images))
    best = max(results.values())
    suite.add("ceiling/best/throughput", Figure.value(best, "img/s"))
    suite.params["ceiling"] = {
        "model": model.name, "cores": cores, "images_per_layout": images,
        "best_layout": max(results, key=lambda k: results[k]),
    }
    return best


def load_target(
    target: Target,
    samples: list[Sample],
    concurrency: tuple[int, ...],
    requests: int,
    time_cap_s: float,
    suite: SuiteResult,
) -> dict[int, LoadResult]:
    """Start the target, drive it at each concurrency, record figures under its name."""
    bodies = [multipart_body(target.field, s) for s in samples]
    out: dict[int, LoadResult] = {}
    statuses: dict[str, dict[str, int]] = {}
    with RunningServer(target) as server:
        ready = server.wait_ready()
        log.info("%s ready in %.2f s on %s", target.name, ready, target.base_url)
        for c in tqdm(concurrency, desc=f"load {target.name}", unit="level"):
            result = run_load(target.base_url + target.predict_path, bodies, c, requests,
                              time_cap_s)
            out[c] = result
            statuses[f"c{c}"] = dict(result.statuses)
            key = f"{target.name}/c{c}"
            if result.latencies_ms:
                suite.add_samples(f"{key}/latency", result.latencies_ms, "ms")
            suite.add(f"{key}/throughput", Figure.value(result.rps, "req/s", result.ok))
            suite.add(f"{key}/errors", Figure.value(result.errors, "requests",
                                                    max(1, sum(result.statuses.values()))))
            if result.errors:
                suite.notes.append(f"{key}: non-2xx answers {dict(result.statuses)}")
                log.warning("%s: %s", key, dict(result.statuses))
            if result.capped:
                suite.notes.append(f"{key}: time cap {time_cap_s:.0f} s reached after "
                                   f"{sum(result.statuses.values())} requests")
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
        "images": f"{len(samples)} JPEGs 600x450 from {source}", "concurrency": list(concurrency),
        "requests_per_level": requests, "baseline_requests_per_level": baseline_requests,
        "time_cap_s_per_level": cap, "client": "httpx.AsyncClient, keep-alive, in the same machine",
    }
    if models.serving is None:
        suite.skip("all", "no model to serve")
        return suite
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        target = service_target(models, Path(tmp) / "data")
        suite.params["service"] = target.description
        service = load_target(target, samples, concurrency, requests, cap, suite)
        best = ceiling(models.serving, samples, 100 if quick else 1000, cap, suite)
        baseline = baseline_target(models, Path(tmp) / "uploads")
        base: dict[int, LoadResult] = {}
        if baseline is None:
            suite.skip("baseline", "no Keras model in the manifest (--keras) to serve upstream-style")
        else:
            suite.params["baseline"] = baseline.description
            try:
                base = load_target(baseline, samples, concurrency, baseline_requests, cap, suite)
            except ServerError as exc:
                suite.skip("baseline", str(exc).splitlines()[0])
    for c, result in service.items():
        suite.add(f"ratio/c{c}/service_vs_ceiling", Figure.value(ratio(result.rps, best), "x"))
        if c in base:
            suite.add(f"ratio/c{c}/service_vs_baseline_throughput",
                      Figure.value(ratio(result.rps, base[c].rps), "x"))
            if result.ok_latencies_ms and base[c].ok_latencies_ms:
                suite.add(
                    f"ratio/c{c}/baseline_vs_service_p50_latency",
                    Figure.value(ratio(float(np.median(base[c].ok_latencies_ms)),
                                       float(np.median(result.ok_latencies_ms))), "x"),
                )
    return suite
