"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.di import Provide
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app import deps
from app.admission import front_door
from app.db.engine import DatabaseProbe
from app.inference.service import InferenceService


async def dependency_checks(probe: DatabaseProbe | None) -> dict[str, dict[str, Any]]:
    """Each dependency a request needs: ``{"ok": bool, "ms": float, "detail"?: str,
    "age_ms"?: float}`` (``age_ms``: a recent good answer, given while the server is busy)."""
    checks: dict[str, dict[str, Any]] = {}
    if probe is not None:
        gate = front_door()
        # within 1 s, shared by concurrent probes; under overload a good answer < 2 s old
        result = await probe.check(busy=gate is not None and gate.full)
        checks["database"] = {"ok": result.ok, "ms": round(result.ms, 1)}
        if result.detail:
            checks["database"]["detail"] = result.detail
        if result.age_ms:
            checks["database"]["age_ms"] = result.age_ms
    return checks


class HealthController(Controller):
    """``/health/live`` (the process answers) and ``/health/ready`` (it can serve)."""

    path = "/health"
    tags = ("health",)

    @get("/live", sync_to_thread=False)
    def live(self) -> dict[str, str]:
        """The process is up and the event loop answers."""
        return {"status": "ok"}

    @get(
        "/ready",
        dependencies={
            # The probe answers "starting" itself rather than the API's 503 not_ready.
            "service": Provide(deps.ready_service_or_none, sync_to_thread=False),
            "probe": Provide(deps.database_probe, sync_to_thread=False),
        },
    )
    async def ready(
        self, service: InferenceService | None, probe: DatabaseProbe | None
    ) -> Response[dict[str, Any]]:
        """200 once the model is loaded and warmed up and the database answers; 503 naming what
        is not (``down``), with each check under ``checks``."""
        if service is None:
            return Response(
                {"status": "starting"},
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "1"},
            )
        checks = await dependency_checks(probe)
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


handlers: list[Any] = [HealthController]
