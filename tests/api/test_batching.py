"""The micro-batcher with the real model: grouping, equality, bounded queue, errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import RequestFactory

from app.config import Settings
from app.error_responses import exception_to_response
from app.errors import OverloadedError
from app.inference.batching import MicroBatcher
from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess
from app.inference.service import load_service


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> Classifier:
    return Classifier(model_path, "cpu", 1)


@pytest.fixture(scope="module")
def tensors(classifier: Classifier, fixture_images: list[tuple[Path, str]]) -> list[np.ndarray]:
    return [preprocess(p.read_bytes(), classifier.spec) for p, _ in fixture_images]


class Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.depths: list[int] = []

    def observe_batch(self, size: int, seconds: float) -> None:
        self.sizes.append(size)

    def set_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def observe_decode(self, seconds: float) -> None:
        pass


async def test_batcher_groups_concurrent_requests_and_matches_single_runs(
    classifier: Classifier, tensors: list[np.ndarray]
) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(
        classifier.run, max_batch=4, max_wait_ms=5, queue_max=64, concurrency=1, observer=recorder
    )
    await batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(t) for t in tensors))
    finally:
        await batcher.stop()
    assert max(recorder.sizes) == 4 and sum(recorder.sizes) == len(tensors)  # capped, complete
    for tensor, result in zip(tensors, results, strict=True):
        single = classifier.run(tensor[None])[0]
        np.testing.assert_allclose(result.probabilities, single, atol=1e-5)
    assert recorder.depths[-1] == 0


async def test_batcher_takes_bigger_batches_only_when_a_backlog_builds(
    classifier: Classifier, tensors: list[np.ndarray]
) -> None:
    """Single runs while few wait; when more than ``backlog_batch`` wait, batches of it, so a
    busy event loop (one turn per batch) cannot starve the inference threads."""
    recorder = Recorder()
    batcher = MicroBatcher(
        classifier.run,
        max_batch=1,
        backlog_batch=4,
        max_wait_ms=0,
        queue_max=64,
        concurrency=1,
        observer=recorder,
    )
    await batcher.start()
    try:
        many = (tensors * 2)[:12]
        results = await batcher.submit_many(many)  # 12 queued at once: a backlog
        assert recorder.sizes == [4, 4, 1, 1, 1, 1]  # 12 > 4, 8 > 4, then 4 is not
        for tensor, result in zip(many, results, strict=True):
            np.testing.assert_allclose(
                result.probabilities, classifier.run(tensor[None])[0], atol=1e-5
            )
        recorder.sizes.clear()
        await asyncio.gather(*(batcher.submit(t) for t in tensors[:3]))  # no backlog: one by one
        assert recorder.sizes == [1, 1, 1]
    finally:
        await batcher.stop()


async def test_batcher_answers_a_lone_request_without_waiting_for_company(
    classifier: Classifier, tensors: list[np.ndarray]
) -> None:
    batcher = MicroBatcher(classifier.run, max_batch=8, max_wait_ms=10_000, concurrency=2)
    await batcher.start()
    try:
        result = await asyncio.wait_for(batcher.submit(tensors[0]), 5)  # not 10 s
    finally:
        await batcher.stop()
    assert result.batch_size == 1


@contextlib.asynccontextmanager
async def one_running(
    tensors: list[np.ndarray],
) -> AsyncIterator[tuple[MicroBatcher, threading.Event, asyncio.Future[Any]]]:
    """A batcher (queue bound 2, one run at a time) whose first item runs until released."""
    release = threading.Event()

    def slow_run(batch: np.ndarray) -> np.ndarray:
        release.wait(10)
        return np.zeros((len(batch), 7), np.float32)

    batcher = MicroBatcher(slow_run, max_batch=1, max_wait_ms=0, queue_max=2, concurrency=1)
    await batcher.start()
    try:
        running = asyncio.ensure_future(batcher.submit(tensors[0]))
        await asyncio.sleep(0.01)
        while batcher.depth:  # wait until the first item is running, not queued
            await asyncio.sleep(0.001)
        yield batcher, release, running
    finally:
        release.set()
        await batcher.stop()


async def test_batcher_refuses_work_beyond_its_queue_bound(tensors: list[np.ndarray]) -> None:
    async with one_running(tensors) as (batcher, release, running):
        queued = [asyncio.ensure_future(batcher.submit(t)) for t in tensors[1:3]]
        await asyncio.sleep(0.01)
        assert batcher.depth == 2
        with pytest.raises(OverloadedError) as info:
            await batcher.submit(tensors[3])
        with pytest.raises(OverloadedError):  # all-or-nothing for a batch upload
            await batcher.submit_many(tensors[3:5])
        release.set()
        await asyncio.gather(running, *queued)
    request = RequestFactory().post("/api/v1/predict")
    response = exception_to_response(request, info.value)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.content == {"error": "overloaded", "detail": str(info.value)}


async def test_batcher_fails_the_batch_not_the_loop_when_inference_raises(
    tensors: list[np.ndarray],
) -> None:
    calls = 0

    def flaky(batch: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("onnxruntime exploded")
        return np.ones((len(batch), 7), np.float32)

    batcher = MicroBatcher(flaky, max_batch=1, max_wait_ms=0, concurrency=1)
    await batcher.start()
    try:
        with pytest.raises(RuntimeError):
            await batcher.submit(tensors[0])
        assert (await batcher.submit(tensors[1])).probabilities.sum() == 7
    finally:
        await batcher.stop()


async def test_service_refuses_uploads_beyond_its_bound_before_decoding_them(
    classifier: Classifier, fixture_images: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """Overload answers 503 at once, instead of queueing every upload for the decode pool."""
    settings = Settings(data_dir=tmp_path, queue_max=2, batch_max=2, ort_threads=1)
    service = load_service(settings, classifier=classifier)
    await service.start()
    try:
        images = [p.read_bytes() for p, _ in fixture_images[:6]]
        outcomes = await asyncio.gather(
            *(service.analyse(data) for data in images), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, OverloadedError)]
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(done) == 2 and len(refused) == 4, outcomes
        assert refused[0].headers == {"Retry-After": "1"}
        with pytest.raises(OverloadedError):  # a batch larger than the bound, all or nothing
            await service.analyse_many(images[:3])
        assert len(await service.analyse_many(images[:2])) == 2  # and it recovers
    finally:
        await service.stop()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")
async def test_worker_threads_run_as_lower_priority_batch_work_and_the_event_loop_does_not(
    classifier: Classifier, fixture_images: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """Decode and inference threads are SCHED_BATCH, so waking them never preempts the loop,
    and APP_WORKER_NICE above the loop's niceness, so the loop runs first when cores are short."""
    seen: list[tuple[int, int]] = []  # (policy, niceness) inside an inference worker

    def priority() -> tuple[int, int]:
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(priority())
        return classifier.run(batch)

    settings = Settings(data_dir=tmp_path, worker_nice=7)
    batcher = MicroBatcher(run, nice=settings.worker_nice)
    await batcher.start()
    service = load_service(settings, classifier=classifier)
    try:
        await batcher.submit(preprocess(fixture_images[0][0].read_bytes(), classifier.spec))
        decode_pool = service._decode_pool  # what the decode threads run under
        decoding = await asyncio.wrap_future(decode_pool.submit(priority))
    finally:
        await batcher.stop()
        await service.stop()
    loop_policy, loop_nice = priority()
    assert seen == [(os.SCHED_BATCH, min(loop_nice + 7, 19))]
    assert decoding == (os.SCHED_BATCH, min(loop_nice + 7, 19))
    assert loop_policy == os.SCHED_OTHER
    assert Settings.from_env({"APP_WORKER_NICE": "0"}).worker_nice == 0
    assert Settings().worker_nice == 10


async def test_batcher_frees_the_places_of_cancelled_requests(tensors: list[np.ndarray]) -> None:
    # Requests cancelled while queued (a closed WebSocket, shutdown) must not keep counting
    # against the queue bound: live requests were refused "queue is full" behind them.
    async with one_running(tensors) as (batcher, release, running):
        queued = asyncio.ensure_future(batcher.submit_many(tensors[1:3]))
        await asyncio.sleep(0.01)
        assert batcher.depth == 2
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert batcher.depth == 0
        live = asyncio.ensure_future(batcher.submit_many(tensors[1:3]))  # was OverloadedError
        await asyncio.sleep(0.01)
        release.set()
        assert len(await live) == 2
        await running


def test_the_largest_batch_is_chosen_by_measuring_this_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from app.config import default_model_path
    from app.inference.service import choose_max_batch

    real = Classifier(default_model_path(), "cpu", 1)
    with ThreadPoolExecutor(2) as pool:
        with caplog.at_level(logging.INFO, logger="app.inference.service"):
            assert choose_max_batch(real, pool, workers=2) in (1, 4)
        assert "CPU ms per image, 2 worker(s) at once" in caplog.text
        # The rule on the same measured path: a margin every batch meets, and one none can.
        assert choose_max_batch(real, pool, rounds=1, margin=100.0) == 4
        assert choose_max_batch(real, pool, workers=2, rounds=1, margin=0.0) == 1


async def test_auto_micro_batching_is_measured_after_start_off_the_start_up_path(
    classifier: Classifier, tmp_path: Path
) -> None:
    auto = load_service(Settings(data_dir=tmp_path, ort_threads=1), classifier=classifier)
    assert auto.batcher.max_batch == 1  # ready at once, single runs until measured
    await auto.start()
    try:
        assert auto._measuring is not None
        assert await auto._measuring in (1, 4)
        assert auto.batcher.max_batch == auto._measuring.result()
    finally:
        await auto.stop()
    fixed = load_service(
        Settings(data_dir=tmp_path, ort_threads=1, microbatch_max=2), classifier=classifier
    )
    await fixed.start()
    try:
        assert fixed._measuring is None and fixed.batcher.max_batch == 2
    finally:
        await fixed.stop()


async def test_a_failed_batch_measurement_leaves_single_runs_and_says_so(
    classifier: Classifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = load_service(Settings(data_dir=tmp_path, ort_threads=1), classifier=classifier)
    service._decode_pool.shutdown()  # the measurement's threads are gone: it cannot run
    await service.start()
    try:
        with caplog.at_level(logging.ERROR, logger="app.inference.service"):
            assert service._measuring is not None and await service._measuring == 1
        assert "the measurement failed; single runs" in caplog.text
        assert service.batcher.max_batch == 1
    finally:
        await service.stop()


async def test_a_batch_alone_runs_on_the_solo_session_and_a_crowd_does_not(
    model_path: Path, tensors: list[np.ndarray]
) -> None:
    """The solo session (every core on one image) only when nothing else needs the cores."""
    wide = Classifier(model_path, "cpu", threads=1, solo_threads=2)
    assert wide.has_solo_session and not Classifier(model_path, "cpu", 1, 1).has_solo_session
    calls: list[str] = []
    decoding = False

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append("shared")
        return wide.run(batch)

    def run_solo(batch: np.ndarray) -> np.ndarray:
        calls.append("solo")
        return wide.run(batch, solo=True)

    batcher = MicroBatcher(
        run, max_batch=1, queue_max=64, concurrency=2, run_solo=run_solo, busy=lambda: decoding
    )
    await batcher.start()
    try:
        alone = await batcher.submit(tensors[0])
        assert calls == ["solo"]
        shared = wide.run(tensors[0][None])[0]
        np.testing.assert_allclose(alone.probabilities, shared, atol=1e-5)

        decoding = True  # another upload is being decoded: leave it its core
        await batcher.submit(tensors[0])
        assert calls[-1] == "shared"

        decoding = False
        calls.clear()
        await asyncio.gather(*(batcher.submit(t) for t in tensors * 2))
        assert "shared" in calls  # the crowd queued behind the first run
    finally:
        await batcher.stop()


def test_the_solo_session_s_threads_stop_spinning_when_a_run_ends(model_path: Path) -> None:
    """Between requests its threads sleep: spinning on would take the cores from the decode
    and the event loop (the first solo session spun, 2x the CPU per request at c=1)."""
    wide = Classifier(model_path, "cpu", threads=1, solo_threads=2)
    x = np.zeros((1, *wide.input_shape), np.float32)
    idle_cpu = []
    for _ in range(5):
        wide.run(x, solo=True)
        before = time.process_time()
        time.sleep(0.05)
        idle_cpu.append(time.process_time() - before)
    # Spinning threads would burn most of the 50 ms; sleeping ones nearly none.
    assert sorted(idle_cpu)[2] < 0.01, idle_cpu


def test_the_solo_run_follows_the_settings(model_path: Path) -> None:
    from app.inference.service import open_classifier

    base = Settings(model_path=model_path, providers="cpu", ort_threads=2)
    assert open_classifier(base).has_solo_session
    assert not open_classifier(dataclasses.replace(base, solo_run=False)).has_solo_session
    assert not open_classifier(dataclasses.replace(base, ort_threads=1)).has_solo_session
    # a worker process cannot see whether another one is using the cores
    assert not open_classifier(dataclasses.replace(base, workers=2)).has_solo_session
    assert not Settings.from_env({"APP_SOLO_RUN": "0"}).solo_run
    assert Settings.from_env({}).solo_run
