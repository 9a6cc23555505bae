"""Dynamic micro-batching: concurrent single-image requests share one ``session.run``.

Modelled on Triton's ``dynamic_batching``: requests wait in a bounded queue; a collector forms
batches of up to ``max_batch`` items and runs them in a small thread pool, off the event loop.
When the queue is full, callers get :class:`~app.errors.OverloadedError` (503 + Retry-After)
instead of the process growing its memory.

Waiting policy: an idle server dispatches at once, so a lone request never pays ``max_wait_ms``,
and a batch with the machine to itself (nothing else running, queued or, per ``busy``, being
decoded) goes to ``run_solo``, which may spread one image over every core.
The collector waits (at most ``max_wait_ms``) for a fuller batch only while another batch is
running, when the cores are busy anyway; otherwise it takes whatever is queued (greedy batching:
items that arrive during a run form the next batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.errors import OverloadedError

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]


def lower_worker_priority(nice: int = 0) -> None:
    """Thread initializer for the CPU-bound worker pools (decode, inference).

    SCHED_BATCH: a worker woken with new work no longer preempts the thread that woke it. That
    thread is usually the event loop, holding the GIL, and the preempted loop stalled every
    thread waiting for the GIL (A/B at concurrency 8: +1.7 % and +2.5 % req/s; concurrency 1
    unchanged).

    ``nice`` (APP_WORKER_NICE): the workers' niceness above the process's, so that when the
    cores are short the loop (refusals, health probes, reading requests) runs first and the
    queued work waits. At 1,000 clients on 2 cores, nice 10 took the 503s' p50 from 277-323 to
    192-207 ms, at the cost of 28 % fewer 200s in the burst (benchmarks/RESULTS.md, "Overload").
    On Linux nice is per thread. Elsewhere, or where a sandbox forbids it, workers stay as
    they are.
    """
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)


class InferenceObserver(Protocol):
    """What inference reports; :class:`app.metrics.Metrics` implements it."""

    def observe_batch(self, size: int, seconds: float) -> None: ...

    def set_queue_depth(self, depth: int) -> None: ...

    def observe_decode(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One item's output and how it was computed."""

    probabilities: np.ndarray  # (classes,) float32
    batch_size: int
    inference_ms: float  # the whole batch's session.run
    queue_ms: float  # from submit to the start of its batch


@dataclass(slots=True)
class _Item:
    tensor: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float


class MicroBatcher:
    """Groups concurrent ``submit`` calls into batched ``run`` calls.

    Args:
        run: the blocking batch function (float32 (N, ...) -> (N, classes)); thread-safe.
        max_batch: most items per ``run`` call while the queue is short.
        backlog_batch: most items per call when more than that many wait (None, or less
            than ``max_batch``: ``max_batch``). A backlog means the event loop is short of
            time, and each batch costs it one turn however large (at 1,000 clients, batches
            of 1 alone halved the answers that were predictions).
        max_wait_ms: longest a partial batch waits for company while all slots are busy.
        queue_max: most items waiting; beyond it ``submit`` raises OverloadedError.
        concurrency: ``run`` calls in flight at once (each on its own thread).
        run_solo: what to call instead of ``run`` for a batch with the machine to itself.
        busy: whether other work (decoding) is using the cores; decides ``run_solo``.
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int = 8,
        backlog_batch: int | None = None,
        max_wait_ms: float = 2.0,
        queue_max: int = 64,
        concurrency: int = 1,
        observer: InferenceObserver | None = None,
        nice: int = 0,
        run_solo: RunBatch | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        if max_batch < 1 or queue_max < 1 or concurrency < 1:
            raise ValueError("max_batch, queue_max and concurrency must be >= 1")
        self._run = run
        self._run_solo = run_solo
        self._busy = busy or (lambda: False)
        self.max_batch = max_batch
        self.backlog_batch = max(backlog_batch or max_batch, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.queue_max = queue_max
        self.concurrency = concurrency
        self._observer = observer
        self._nice = nice
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()  # something was queued
        self._full = asyncio.Event()  # a whole batch is queued
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight = 0
        self._executor: ThreadPoolExecutor | None = None
        self._collector: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not yet running)."""
        return len(self._pending)

    async def start(self) -> None:
        if self._collector is not None:
            return
        self._executor = ThreadPoolExecutor(
            self.concurrency,
            thread_name_prefix="infer",
            initializer=functools.partial(lower_worker_priority, self._nice),
        )
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Stop collecting, let running batches finish, fail whatever still waits."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(OverloadedError("service is shutting down"))
        self._report_depth()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, tensor: np.ndarray) -> BatchResult:
        """Queue one model input (no batch axis) and wait for its probabilities."""
        return (await self.submit_many([tensor]))[0]

    async def submit_many(self, tensors: Sequence[np.ndarray]) -> list[BatchResult]:
        """Queue several inputs at once, all or none: a batch upload is never half-admitted."""
        if self._collector is None:
            raise OverloadedError("inference is not running")
        if not tensors:
            return []
        if len(self._pending) + len(tensors) > self.queue_max:
            raise OverloadedError(
                f"inference queue is full ({self.queue_max} images waiting)",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(t, loop.create_future(), now) for t in tensors]
        self._pending.extend(items)
        self._report_depth()
        self._wakeup.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except asyncio.CancelledError:
            # The caller went away: drop its queued items, which would otherwise hold places
            # in the bound (refusing live requests) and in the depth gauge until collected.
            gone = {id(item) for item in items}
            for item in items:
                item.future.cancel()
            kept = [item for item in self._pending if id(item) not in gone]
            self._pending.clear()
            self._pending.extend(kept)
            self._report_depth()
            raise

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.set_queue_depth(len(self._pending))

    async def _collect(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                while not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if len(self._pending) < self.max_batch and self._in_flight > 0 and self.max_wait:
                    # Another batch is running: a short wait fills this one for free.
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.max_wait)
                batch: list[_Item] = []
                size = (
                    self.backlog_batch
                    if len(self._pending) > self.backlog_batch
                    else self.max_batch
                )
                while self._pending and len(batch) < size:
                    item = self._pending.popleft()
                    if not item.future.done():  # skip cancelled requests
                        batch.append(item)
                self._report_depth()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _dispatch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            tensors = [item.tensor for item in batch]
            alone = self._in_flight == 1 and not self._pending and not self._busy()
            run = self._run_solo if alone and self._run_solo is not None else self._run
            loop = asyncio.get_running_loop()
            probs, seconds = await loop.run_in_executor(
                self._executor, self._timed_run, run, tensors
            )
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._in_flight -= 1
            self._slots.release()
        if self._observer is not None:
            self._observer.observe_batch(len(batch), seconds)
        for i, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(
                    BatchResult(
                        probabilities=probs[i],
                        batch_size=len(batch),
                        inference_ms=seconds * 1000,
                        queue_ms=(started - item.enqueued) * 1000,
                    )
                )

    @staticmethod
    def _timed_run(run: RunBatch, tensors: list[np.ndarray]) -> tuple[np.ndarray, float]:
        # Batched on the worker thread: the copy (and its page faults) stays off the event
        # loop, and a batch of one is a view, not a copy.
        inputs = tensors[0][None] if len(tensors) == 1 else np.stack(tensors)
        t0 = time.perf_counter()
        probs = run(inputs)
        return probs, time.perf_counter() - t0
