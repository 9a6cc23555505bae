"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app.db.engine import DatabaseProbe
from app.deps import ready_service_or_none


@get("/health/live", sync_to_thread=False, tags=["health"])
def live() -> dict[str, str]:
    """The process is up and the event loop answers."""
    return {"status": "ok"}


async def dependency_checks(state: State) -> dict[str, dict[str, Any]]:
    """Each dependency a request needs: ``{"ok": bool, "ms": float, "detail"?: str}``."""
    checks: dict[str, dict[str, Any]] = {}
    probe: DatabaseProbe | None = state.get("database_probe")
    if probe is not None:
        result = await probe.check()  # SELECT 1 within 1 s, shared by concurrent probes
        checks["database"] = {"ok": result.ok, "ms": round(result.ms, 1)}
        if result.detail:
            checks["database"]["detail"] = result.detail
    return checks


@get("/health/ready", tags=["health"])
async def ready(state: State) -> Response[dict[str, Any]]:
    """200 once the model is loaded and warmed up and the database answers; 503 naming what
    is not (``down``), with each check under ``checks``."""
    service = ready_service_or_none(state)
    if service is None:
        return Response(
            {"status": "starting"},
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    checks = await dependency_checks(state)
    down = [name for name, check in checks.items() if not check["ok"]]
    classifier = service.classifier
    return Response(
        {
            "status": "unavailable" if down else "ready",
            "down": down,
            "checks": checks,
            "model": classifier.spec.name,
            "version": classifier.spec.version,
            "sha256": classifier.sha256,
            "providers": classifier.providers,
            "queue_depth": service.batcher.depth,
            # "quality only" when the model has no features output (the upstream model)
            "gate": service.gate.mode,
        },
        status_code=HTTP_503_SERVICE_UNAVAILABLE if down else HTTP_200_OK,
        headers={"Retry-After": "5"} if down else None,
    )


handlers = [live, ready]
