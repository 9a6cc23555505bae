"""Bytes in, prediction out: decode on a bounded thread pool, infer through the micro-batcher.

The one entry point every caller uses (JSON API, WebSocket, web pages), so they all share the
same preprocessing, queue bound and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from app.config import Settings
from app.errors import OverloadedError
from app.inference.batching import (
    BatchResult,
    InferenceObserver,
    MicroBatcher,
    lower_worker_priority,
)
from app.inference.classifier import Classifier, ModelLoadError, Prediction
from app.inference.explain import (
    Explainer,
    Explanation,
    ExplanationUnavailableError,
    cam_model_path,
)
from app.inference.gate import (
    FEATURES,
    Gate,
    GateFileError,
    GateResult,
    ImageRejectedError,
    gate_path,
)
from app.inference.preprocess import (
    ImageError,
    ImageTooLargeError,
    prepare,
)

log = logging.getLogger(__name__)

GPU_MAX_BATCH = 8  # on a GPU bigger batches pay (tests/gpu, benchmarks.providers)
BACKLOG_BATCH = 8  # whatever the chosen batch, when more than this wait (MicroBatcher)
# Gate scores that say what field_of_view.py changed: the share of the upload a small round
# field of view was cropped to, and the share of the model's picture filled.
CROPPED, FILLED = "field_of_view_cropped", "field_of_view_filled"


@dataclass(frozen=True, slots=True)
class Analysis:
    """One classified image with the timings the API reports."""

    prediction: Prediction
    decode_ms: float
    inference_ms: float
    queue_ms: float
    batch_size: int
    gate: GateResult


RejectionObserver = Callable[[Sequence[str]], None]  # the names of the failed checks


class ItemFailedError(ImageError):
    """One image of a batch failed for a reason of the server's: the others still answer."""

    status = 500
    code = "internal_error"


class InferenceService:
    """Owns the classifier, the decode pool and the micro-batcher for one process."""

    def __init__(
        self,
        classifier: Classifier,
        settings: Settings,
        observer: InferenceObserver | None = None,
        gate: Gate | None = None,
        on_rejected: RejectionObserver | None = None,
    ) -> None:
        self.classifier = classifier
        self.gate = gate or load_gate(settings, classifier)
        self._on_rejected = on_rejected
        self.spec = classifier.spec
        self.max_pixels = settings.max_pixels
        self.max_upload_bytes = settings.max_upload_bytes
        workers = max(1, settings.ort_threads)
        self._observer = observer
        # Decodes are bounded like inference: 100 concurrent uploads never decode 100 images at
        # once (memory), and OpenCV releases the GIL, so `workers` threads use `workers` cores.
        self._decode_pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix="decode",
            initializer=functools.partial(lower_worker_priority, settings.worker_nice),
        )
        self._decoding = 0  # images admitted to the decode stage and not yet decoded
        self._cam_path = cam_model_path(settings.model_path, self.spec)
        self._explainer: Explainer | None = None
        self._explainer_loading = asyncio.Lock()
        self._measure_batch = settings.microbatch_max == 0
        self._measuring: asyncio.Task[int] | None = None
        # intra_op=1 per session.run and `workers` runs in flight beat one run with intra_op=N
        # on 2 cores (PITFALLS.md); the classifier is created with threads=1 for this reason.
        self.batcher = MicroBatcher(
            classifier.run,
            max_batch=settings.microbatch_max or 1,  # 0 (auto): measured in start()
            backlog_batch=BACKLOG_BATCH,
            max_wait_ms=settings.microbatch_wait_ms,
            # A full batch upload must fit in the queue, or the batch endpoint could never succeed.
            queue_max=max(settings.queue_max, settings.batch_max),
            concurrency=workers,
            observer=observer,
            nice=settings.worker_nice,
            # Alone, one image may use every core (the classifier's solo session, if any):
            # at concurrency 1 the other core would otherwise idle through the model.
            run_solo=functools.partial(classifier.run, solo=True)
            if classifier.has_solo_session
            else None,
            busy=lambda: self.decoding > 0,
        )

    async def start(self) -> None:
        await self.batcher.start()
        if self._measure_batch:
            # Off the start-up path: ready at once with single runs (bigger ones for a
            # backlog), the measured batch about 0.1-0.3 s later.
            self._measuring = asyncio.get_running_loop().create_task(self.measure_batch())

    async def measure_batch(self) -> int:
        """APP_MICROBATCH_MAX=auto: choose_max_batch on this machine, then batch that much
        (single runs if the measurement fails: serving goes on either way)."""
        try:
            chosen = await asyncio.to_thread(
                choose_max_batch, self.classifier, self._decode_pool, self.batcher.concurrency
            )
        except Exception:
            log.exception("micro-batching: the measurement failed; single runs")
            return self.batcher.max_batch
        self.batcher.max_batch = chosen
        return chosen

    async def stop(self) -> None:
        if self._measuring is not None:
            self._measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._measuring
        await self.batcher.stop()
        self._decode_pool.shutdown(wait=True)

    def prepare(self, data: bytes, override: bool) -> tuple[np.ndarray, float, GateResult]:
        """Decode, run the gate's quality checks, resize: the serving ``preprocess`` with the
        gate between decode and resize (blocking; raises ImageRejectedError unless
        ``override``). Returns the model input, the milliseconds it took and the gate so far."""
        t0 = time.perf_counter()
        upload = prepare(data, self.spec, self.max_pixels)
        gate = self.gate.check_quality(upload.rgb, upload.seen_size, override, upload.resized)
        changed = {}  # said, not hidden: an integrator sees what was changed
        if upload.box:
            width, height = upload.size
            changed[CROPPED] = round(upload.box[2] * upload.box[3] / (width * height), 4)
        if upload.filled:
            changed[FILLED] = round(upload.filled, 4)
        if changed:
            gate = dataclasses.replace(gate, scores={**gate.scores, **changed})
        return upload.tensor, (time.perf_counter() - t0) * 1000, gate

    def _gated(self, decode: Callable[[], Any]) -> Any:
        """Count a rejection by its checks, then let it propagate."""
        try:
            return decode()
        except ImageRejectedError as exc:
            if self._on_rejected is not None:
                self._on_rejected([r.check for r in exc.result.reasons])
            raise

    @contextlib.contextmanager
    def _admitted(self, images: int) -> Iterator[None]:
        """Hold ``images`` places in the decode stage, or refuse them all (503).

        The decode pool's own queue is unbounded: without this, overload would queue uploads
        for decoding and answer 503 only afterwards, at the inference queue.
        """
        if self._decoding + images > self.batcher.queue_max:
            raise OverloadedError(
                f"too many images waiting to be decoded ({self._decoding})",
                headers={"Retry-After": "1"},
            )
        self._decoding += images
        try:
            yield
        finally:
            self._decoding -= images

    async def decode(
        self, data: bytes, override: bool = False
    ) -> tuple[np.ndarray, float, GateResult]:
        """Validate, decode, gate and resize off the event loop; raises ImageError (4xx)."""
        with self._admitted(1):
            return await self._decode_admitted(data, override)

    def _refuse_oversized(self, data: bytes) -> None:
        if len(data) > self.max_upload_bytes:
            raise ImageTooLargeError(
                f"image is {len(data)} bytes; the limit is {self.max_upload_bytes}"
            )

    async def _decode_admitted(
        self, data: bytes, override: bool = False
    ) -> tuple[np.ndarray, float, GateResult]:
        self._refuse_oversized(data)
        loop = asyncio.get_running_loop()
        tensor, ms, gate = await loop.run_in_executor(
            self._decode_pool, self._gated, lambda: self.prepare(data, override)
        )
        if self._observer is not None:
            self._observer.observe_decode(ms / 1000)
        return tensor, ms, gate

    def _finish(self, result: BatchResult, decode_ms: float, gate: GateResult) -> Analysis:
        """The prediction, after the gate's distribution check (ImageRejectedError)."""
        score = self.classifier.distribution_score(result.probabilities)
        gate = self._gated(lambda: self.gate.check_distribution(gate, score))
        return Analysis(
            self.classifier.describe(result.probabilities),
            decode_ms,
            result.inference_ms,
            result.queue_ms,
            result.batch_size,
            gate,
        )

    async def analyse(self, data: bytes, override: bool = False) -> Analysis:
        """Classify one image; raises ImageError for bad input (ImageRejectedError when the
        gate refuses it, unless ``override``) and OverloadedError when full."""
        tensor, decode_ms, gate = await self.decode(data, override)
        result = await self.batcher.submit(tensor)
        return self._finish(result, decode_ms, gate)

    async def explain(self, data: bytes, label: str) -> Explanation:
        """Grad-CAM heat map of ``label`` for an image; 501 without a CAM model.

        Runs on the decode pool under the same admission bound: decode, one model run, and
        drawing the overlay.
        """
        explainer = await self._load_explainer()
        with self._admitted(1):
            self._refuse_oversized(data)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._decode_pool, explainer.explain, data, label, self.max_pixels
            )

    @property
    def decoding(self) -> int:
        """Images admitted to the decode stage and not yet decoded."""
        return self._decoding

    @property
    def explanations_available(self) -> bool:
        return self._explainer is not None or self._cam_path.is_file()

    async def _load_explainer(self) -> Explainer:
        async with self._explainer_loading:  # one load, however many ask at once
            if self._explainer is None:
                if not self._cam_path.is_file():
                    raise ExplanationUnavailableError(
                        f"explanations are not available: no {self._cam_path.name} beside the "
                        "served model (build it with `python -m conversion cam`)"
                    )
                self._explainer = await asyncio.to_thread(Explainer, self._cam_path, self.spec)
                log.info("loaded the explanation model %s", self._cam_path)
            return self._explainer

    async def analyse_many(
        self, images: Sequence[bytes], override: bool = False
    ) -> list[Analysis | ImageError]:
        """Classify several images in order; a bad one yields its ImageError, not a failure.

        Admission to the inference queue is all-or-nothing (OverloadedError for the lot).
        """
        with self._admitted(len(images)):  # all or none, like the inference queue
            decoded = await asyncio.gather(
                *(self._decode_admitted(data, override) for data in images),
                return_exceptions=True,
            )
        out: list[Analysis | ImageError | None] = [None] * len(images)
        good: list[tuple[int, np.ndarray, float, GateResult]] = []
        for i, item in enumerate(decoded):
            if isinstance(item, ImageError):
                out[i] = item
            elif isinstance(item, Exception):  # a fault with one image is that item's error
                log.error("image %d of a batch failed", i, exc_info=item)
                out[i] = ItemFailedError("internal error while reading this image")
            elif isinstance(item, BaseException):  # cancellation: the request is gone
                raise item
            else:
                good.append((i, *item))
        results = await self.batcher.submit_many([tensor for _, tensor, _, _ in good])
        for (i, _, decode_ms, gate), result in zip(good, results, strict=True):
            try:
                out[i] = self._finish(result, decode_ms, gate)
            except ImageRejectedError as exc:
                out[i] = exc
        return [r for r in out if r is not None]


def load_gate(settings: Settings, classifier: Classifier) -> Gate:
    """The model's intended-use gate from its gate file; raises ModelLoadError without one."""
    path = gate_path(settings.model_path, classifier.spec)
    try:
        gate = Gate.load(path)
    except GateFileError as exc:
        raise ModelLoadError(str(exc)) from exc
    if gate.distribution is not None and not classifier.has_features:
        raise ModelLoadError(
            f"{path.name} has a distribution check but {classifier.path.name} has no "
            f"{FEATURES!r} output: rebuild them together with `python -m conversion gate`"
        )
    if gate.distribution is None:
        log.warning(
            "intended-use gate: quality checks only (%s has no distribution check)", path.name
        )
    else:
        log.info("intended-use gate: quality checks and distribution check (%s)", path.name)
    classifier.distribution = gate.distribution
    return gate


def open_classifier(settings: Settings) -> Classifier:
    """The served model's sessions; raises ModelLoadError.

    One intra-op thread per run, ``ort_threads`` runs at once (PITFALLS.md), and, with
    ``solo_run``, a second session with ``ort_threads`` threads for a request that has the
    machine to itself. Its threads stop spinning when a run ends (an earlier version without
    that was measured and dropped: they spun between requests, 2x the CPU at concurrency 1).
    Not with several worker processes: one cannot tell whether another is using the cores.
    """
    solo = settings.ort_threads if settings.solo_run and settings.workers == 1 else 1
    return Classifier(settings.model_path, settings.providers, threads=1, solo_threads=solo)


def load_service(
    settings: Settings,
    observer: InferenceObserver | None = None,
    classifier: Classifier | None = None,
    on_rejected: RejectionObserver | None = None,
) -> InferenceService:
    """Load (unless given) and warm the model, then wrap it; raises ModelLoadError."""
    # Two cores are better spent on two requests than on one image's parallel resize.
    cv2.setNumThreads(1)
    if classifier is None:
        classifier = open_classifier(settings)
    # Batches of 1 and 2, what a kiosk sees. Memory follows load: warming the largest
    # micro-batch too held 5 MB more RSS (measured, startup suite) for a one-off allocation
    # that the first busy batch of that size pays instead.
    gate = load_gate(settings, classifier)
    classifier.warm_up()
    return InferenceService(classifier, settings, observer, gate, on_rejected)


def _cpu_per_image(
    classifier: Classifier, pool: Executor, batch: np.ndarray, runs: int, workers: int
) -> float:
    """CPU seconds per image when ``workers`` threads of ``pool`` each run ``batch`` ``runs``
    times at once, by each thread's own CPU time."""

    def work() -> float:
        started = time.thread_time()
        for _ in range(runs):
            classifier.run(batch)
        return time.thread_time() - started

    spent = [running.result() for running in [pool.submit(work) for _ in range(workers)]]
    return sum(spent) / (workers * runs * len(batch))


def choose_max_batch(
    classifier: Classifier,
    pool: Executor,
    workers: int = 1,
    rounds: int = 3,
    batch: int = 4,
    margin: float = 0.95,
) -> int:
    """The micro-batcher's largest batch on this machine: ``batch`` when runs of that many
    images cost less CPU per image than single runs by at least ``1 - margin``, else 1.

    Measured as the server runs them, ``workers`` threads at once (their caches compete: on
    an Intel Xeon a batch of 4 cost 3-7 % less per image on one thread and 8-32 % more on
    two), on ``pool``'s threads (the service's own, none started for it), interleaved, by
    each thread's own CPU time (one intra-op thread runs there), which other work on the
    machine moves less than the wall clock; about 0.1 s on an AVX-512 CPU. On a GPU:
    GPU_MAX_BATCH, unmeasured.
    """
    if classifier.providers[0] != "CPUExecutionProvider":
        return GPU_MAX_BATCH
    inputs = {n: np.zeros((n, *classifier.input_shape), np.float32) for n in (1, batch)}
    classifier.run(inputs[batch])  # its first run allocates
    per_image: dict[int, list[float]] = {1: [], batch: []}
    for _ in range(rounds):
        for n, x in inputs.items():
            per_image[n].append(_cpu_per_image(classifier, pool, x, batch // n, workers))
    # The concurrent batches grew the memory arena: give it back, or the idle server keeps
    # it until its first quiet spell (create_app's _return_memory_when_idle).
    classifier.release_memory()
    single, batched = (float(np.median(per_image[n])) for n in (1, batch))
    chosen = batch if batched < margin * single else 1
    log.info(
        "micro-batching: largest batch %d (CPU ms per image, %d worker(s) at once: %.2f alone, "
        "%.2f in a batch of %d)",
        chosen,
        workers,
        single * 1000,
        batched * 1000,
        batch,
    )
    return chosen
