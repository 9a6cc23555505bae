"""Prometheus metrics: one registry per app, so tests can build many apps in one process."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from litestar import Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from app.error_responses import answer_for

# The *_created series double the exposition for no use on a scrape-based dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from app.inference.classifier import Classifier

# Sub-10 ms buckets matter here: a request on this service is meant to take a few ms.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
INFERENCE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class Metrics:
    """The service's collectors; also the micro-batcher's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to response end",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Images per session.run (micro-batching)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "inference_batch_duration_seconds",
            "Wall time of one session.run",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "image_decode_duration_seconds",
            "Decode + resize of one upload",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("inference_queue_depth", "Images waiting for a batch", registry=r)
        self.ws_frames_dropped = Counter(
            "live_frames_dropped",
            "WebSocket frames dropped because a newer one arrived",
            registry=r,
        )
        self.upload_refusals = Counter(
            "upload_refusals",
            "API uploads refused 503 by admission control, by where: at their headers (the "
            "protocol, no ASGI task) or in the ASGI stack (admission middleware)",
            ["stage"],
            registry=r,
        )
        self.gate_rejections = Counter(
            "gate_rejections",
            "Images refused by the intended-use gate, by failed check (one image may fail several)",
            ["check"],
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "The loaded model (value is always 1)",
            ["name", "version", "sha256", "provider", "input"],
            registry=r,
        )

    # BatchObserver
    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def observe_decode(self, seconds: float) -> None:
        self.decode_seconds.observe(seconds)

    def observe_rejection(self, checks: Sequence[str]) -> None:
        for check in checks:
            self.gate_rejections.labels(check=check).inc()

    def set_model(self, classifier: Classifier) -> None:
        spec = classifier.spec
        self.model_info.clear()
        self.model_info.labels(
            name=spec.name,
            version=spec.version,
            sha256=classifier.sha256,
            provider=classifier.providers[0],
            input=f"{spec.input_width}x{spec.input_height} {spec.layout}",
        ).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Litestar middleware factory: counts and times every routed HTTP request."""

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "GET")
            status = 500
            start = time.perf_counter()

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            except Exception as exc:
                # Raised past this middleware (Litestar's CSRF check sits inside it): count the
                # status the exception handler outside will answer, not a 500.
                status = answer_for(exc).status
                raise
            finally:
                self.requests.labels(route, method, str(status)).inc()
                self.latency.labels(route, method).observe(time.perf_counter() - start)

        return middleware


@get(
    "/metrics",
    sync_to_thread=False,
    tags=["health"],
    summary="Prometheus metrics",
    media_type=CONTENT_TYPE_LATEST,
    include_in_schema=True,
)
def metrics_endpoint(state: State) -> Response[bytes]:
    """Prometheus text exposition format."""
    metrics: Metrics = state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
