"""create_app(settings) -> Litestar: the one place things are wired."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from app.config import Settings
from app.errors import exception_to_response
from app.inference.classifier import Classifier
from app.routes import health

log = logging.getLogger(__name__)


def load_classifier(settings: Settings) -> Classifier:
    """Load and warm the model; raises ModelLoadError with a one-line reason."""
    classifier = Classifier(settings.model_path, settings.providers, settings.ort_threads)
    classifier.warm_up()
    return classifier


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def model_lifespan(app: Litestar) -> AsyncIterator[None]:
        # Loaded once per process, before readiness; inference never waits for it.
        app.state.ready = False
        app.state.classifier = await asyncio.to_thread(load_classifier, settings)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False

    return Litestar(
        route_handlers=[*health.handlers],
        lifespan=[model_lifespan],
        state=State({"settings": settings, "ready": False, "classifier": None}),
        exception_handlers={Exception: exception_to_response},
        request_max_body_size=settings.max_upload_bytes,
        openapi_config=OpenAPIConfig(
            title="Skin lesion classification service",
            version="0.1.0",
            description="A second opinion on dermoscopic images, not a diagnosis.",
        ),
        debug=False,  # stack traces never reach clients, dev mode included
    )
