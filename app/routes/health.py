"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE


@get("/health/live", sync_to_thread=False, tags=["health"])
def live() -> dict[str, str]:
    """The process is up and the event loop answers."""
    return {"status": "ok"}


@get("/health/ready", sync_to_thread=False, tags=["health"])
def ready(state: State) -> Response[dict[str, Any]]:
    """200 once the model is loaded and warmed up, 503 before."""
    service = state.get("inference")
    if not state.get("ready") or service is None:
        return Response(
            {"status": "starting"},
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    classifier = service.classifier
    return Response(
        {
            "status": "ready",
            "model": classifier.spec.name,
            "version": classifier.spec.version,
            "sha256": classifier.sha256,
            "providers": classifier.providers,
            "queue_depth": service.batcher.depth,
        },
        status_code=HTTP_200_OK,
    )


handlers = [live, ready]
