"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app import deps
from app.admission import ReadyAnswer, front_door, json_answer
from app.db.engine import DatabaseProbe, Probe
from app.inference.service import InferenceService

STARTING = {"status": "starting"}  # /health/ready before the model is loaded and warmed up
RETRY_AFTER_1 = (b"retry-after", b"1")


def _database_check(result: Probe) -> dict[str, Any]:
    check: dict[str, Any] = {"ok": result.ok, "ms": round(result.ms, 1)}
    if result.detail:
        check["detail"] = result.detail
    if result.age_ms:
        check["age_ms"] = result.age_ms
    return check


async def dependency_checks(probe: DatabaseProbe | None) -> dict[str, dict[str, Any]]:
    """Each dependency a request needs: ``{"ok": bool, "ms": float, "detail"?: str,
    "age_ms"?: float}`` (``age_ms``: a recent good answer, given while the server is busy)."""
    checks: dict[str, dict[str, Any]] = {}
    if probe is not None:
        gate = front_door()
        # within 1 s, shared by concurrent probes; under overload a good answer < 2 s old
        checks["database"] = _database_check(await probe.check(busy=gate is not None and gate.busy))
    return checks


def readiness(
    service: InferenceService, checks: dict[str, dict[str, Any]]
) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """/health/ready's status, body and headers once the model is loaded."""
    down = [name for name, check in checks.items() if not check["ok"]]
    classifier = service.classifier
    body = {
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
    }
    status = HTTP_503_SERVICE_UNAVAILABLE if down else HTTP_200_OK
    return status, body, {"Retry-After": "5"} if down else None


def ready_at_once(state: State, headers: list[tuple[bytes, bytes]]) -> ReadyAnswer | None:
    """/health/ready's answer when it needs no wait: the model ready and a good database check
    under 2 s old (its refresh started behind it); None otherwise, and the route answers.

    app.http_protocol writes it itself while admission is full, so an overloaded server's probe
    waits for no ASGI task and no Litestar (``headers``: what the middleware adds to every
    answer, Cache-Control and the CSP).
    """
    service = deps.ready_service_or_none(state)
    if service is None:
        return None
    checks: dict[str, dict[str, Any]] = {}
    probe = deps.database_probe(state)
    if probe is not None:
        recent = probe.recent()
        if recent is None:
            return None
        checks["database"] = _database_check(recent)
    status, body, _ = readiness(service, checks)  # only good checks reach here: never down
    return json_answer(status, body, *headers)


async def ready_answer(state: State, headers: list[tuple[bytes, bytes]]) -> ReadyAnswer:
    """/health/ready's whole answer as the route gives it, with the database check (a recent
    good one reused under overload), for the probe port's thread (app.probe_port), which
    answers from the last one the loop published."""
    service = deps.ready_service_or_none(state)
    if service is None:
        return json_answer(HTTP_503_SERVICE_UNAVAILABLE, STARTING, RETRY_AFTER_1, *headers)
    status, body, extra = readiness(service, await dependency_checks(deps.database_probe(state)))
    retry = [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    return json_answer(status, body, *retry, *headers)


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
                STARTING,
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "1"},
            )
        checks = await dependency_checks(probe)
        status, body, headers = readiness(service, checks)
        return Response(body, status_code=status, headers=headers)


handlers: list[Any] = [HealthController]
