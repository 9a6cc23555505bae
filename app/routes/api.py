"""The JSON API under /api/v1: single and batch prediction, and live WebSocket prediction.

Three controllers (one image, a batch, the live socket) on ONE Router built by
:func:`build_api_router`, which gives each its body limit from the settings. To protect
the API, pass ``guards=[...]`` there (``app/main.py`` does, in one line); the guards apply to the
HTTP endpoints and to the WebSocket alike. The API is token-authenticated, so it is excluded from
CSRF (``API_PREFIX``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Router, WebSocket, post, websocket
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.status_codes import WS_1013_TRY_AGAIN_LATER
from litestar.types import Guard
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from app import deps
from app.api_models import (
    BatchItem,
    BatchResponse,
    ErrorBody,
    ExplainResponse,
    ExplanationBody,
    HeatMap,
    PredictResponse,
    RejectedBody,
    View,
    gate_body,
    model_info,
    to_response,
)
from app.auth.tokens import SECURITY
from app.config import Settings
from app.errors import AppError
from app.inference import formats
from app.inference.gate import ImageRejectedError
from app.inference.preprocess import ImageError
from app.inference.service import InferenceService
from app.live_session import LiveSession
from app.metrics import Metrics

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
IMAGE_FIELD = "image"
BATCH_FIELD = "images"
_MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries around a maximal image


class MissingImageError(AppError):
    status = 400
    code = "missing_image"


class TooManyImagesError(AppError):
    status = 400
    code = "too_many_images"


class PayloadTooLargeError(AppError):
    status = 413
    code = "payload_too_large"


class NotMultipartError(AppError):
    status = 415
    code = "unsupported_media_type"


# ---------------------------------------------------------------- multipart, in memory


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str | None
    data: bytes


async def read_uploads(
    request: Request[Any, Any, Any], field_name: str, max_files: int, max_file_bytes: int
) -> list[Upload]:
    """Stream a multipart body into memory and return the parts named ``field_name``.

    Our own parser instead of ``request.form()``: no spooled temp files, a clear 4xx for every
    malformed request (Litestar 2.25 answers 500 to a multipart body without a file part), and
    a per-image size limit that answers 413.
    """
    media_type, options = request.content_type
    if media_type != "multipart/form-data":
        stream = request.stream()
        first = await anext(stream, b"")
        if not first:
            raise MissingImageError(
                f"empty request body; send multipart/form-data with field {field_name!r}"
            )
        raise NotMultipartError(
            f"send multipart/form-data with the image in field {field_name!r}, not {media_type!r}"
        )
    boundary = options.get("boundary")
    if not boundary:
        raise AppError("multipart boundary missing in Content-Type")
    uploads: list[Upload] = []
    others: set[str] = set()
    segment: MultipartSegment | None = None
    chunks: list[bytes] = []
    saw_body = False
    try:
        with PushMultipartParser(
            boundary.encode(), max_segment_size=max_file_bytes, max_segment_count=max_files + 16
        ) as parser:
            async for chunk in request.stream():
                saw_body = saw_body or bool(chunk)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment, chunks = event, []
                    elif event:
                        if segment is not None and segment.name == field_name:
                            chunks.append(bytes(event))
                    elif segment is not None:  # end of a part
                        if segment.name == field_name:
                            if len(uploads) >= max_files:
                                raise TooManyImagesError(f"at most {max_files} images per request")
                            uploads.append(Upload(segment.filename, b"".join(chunks)))
                        else:
                            others.add(segment.name)
                        segment, chunks = None, []
                if parser.closed:
                    break
    except ParserLimitReached as exc:
        # The parser has one exception for every limit; only the part size is "too large".
        if "segment size" in str(exc):
            raise PayloadTooLargeError(
                f"each image may be at most {max_file_bytes // (1024 * 1024)} MB"
            ) from exc
        raise AppError(f"multipart body over a limit: {exc}") from exc
    except ParserError as exc:
        if not saw_body:
            raise MissingImageError("empty request body") from exc
        raise AppError(f"malformed multipart body: {exc}") from exc
    if not uploads:
        got = f"; got fields {sorted(others)}" if others else ""
        raise MissingImageError(f"no image in multipart field {field_name!r}{got}")
    return uploads


# ---------------------------------------------------------------- OpenAPI request bodies


def _multipart_operation(field_name: str, many: bool) -> type[Operation]:
    binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
    prop = Schema(type=OpenAPIType.ARRAY, items=binary) if many else binary
    body = RequestBody(
        required=True,
        content={
            "multipart/form-data": OpenAPIMediaType(
                schema=Schema(
                    type=OpenAPIType.OBJECT, properties={field_name: prop}, required=[field_name]
                )
            )
        },
        description=f"{formats.listing('or')}, recognised by content (the file name is ignored).",
    )

    @dataclass
    class MultipartOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return MultipartOperation


_ERRORS = {
    400: ResponseSpec(ErrorBody, description="Missing or unreadable image"),
    413: ResponseSpec(ErrorBody, description="Upload or image over the size/pixel budget"),
    415: ResponseSpec(
        ErrorBody,
        description=f"Not {formats.listing('or', notes=True)}, or not multipart/form-data",
    ),
    422: ResponseSpec(
        RejectedBody,
        description="Outside the model's intended use (image_rejected): the failed checks",
    ),
    503: ResponseSpec(
        ErrorBody, description="Not ready, or the inference queue is full (Retry-After)"
    ),
}


# ---------------------------------------------------------------- handlers


class PredictionController(Controller):
    """One image in (multipart field ``image``): its class, or its class and evidence map."""

    @post(
        "/predict",
        status_code=200,
        summary="Classify one image",
        operation_class=_multipart_operation(IMAGE_FIELD, many=False),
        responses=_ERRORS,
    )
    async def predict(
        self, request: Request[Any, Any, Any], service: InferenceService
    ) -> PredictResponse:
        """One image as multipart field ``image`` -> class, 7 probabilities, melanoma flag."""
        # The service, not ``settings``, gives the limit: Litestar resolves two independent
        # dependencies in an anyio task group (about a tenth of the event loop's GIL samples
        # at concurrency 8, py-spy); one is awaited directly.
        uploads = await read_uploads(request, IMAGE_FIELD, 1, service.max_upload_bytes)
        analysis = await service.analyse(uploads[0].data)
        return to_response(analysis, model_info(service.classifier))

    @post(
        "/explain",
        status_code=200,
        summary="Classify one image and show where the model found its evidence (Grad-CAM)",
        operation_class=_multipart_operation(IMAGE_FIELD, many=False),
        responses={
            **_ERRORS,
            501: ResponseSpec(ErrorBody, description="No CAM model deployed beside the model"),
        },
    )
    async def explain(
        self,
        request: Request[Any, Any, Any],
        service: InferenceService,
        label: str | None = None,
    ) -> ExplainResponse:
        """Multipart field ``image``; ``?label=`` explains another class than the top one."""
        if label is not None and label not in service.spec.labels:
            raise AppError(f"label must be one of {', '.join(service.spec.labels)}")
        uploads = await read_uploads(request, IMAGE_FIELD, 1, service.max_upload_bytes)
        analysis = await service.analyse(uploads[0].data)
        shown = await service.explain(uploads[0].data, label or analysis.prediction.label)
        return ExplainResponse(
            prediction=to_response(analysis, model_info(service.classifier)),
            explanation=ExplanationBody(
                label=shown.label,
                method=shown.method,
                grid=list(shown.grid),
                evidence=shown.evidence,
                map=HeatMap(
                    rows=shown.grid[0],
                    cols=shown.grid[1],
                    values=[[round(float(v), 4) for v in row] for row in shown.values],
                ),
                view=View(crop=list(shown.crop)),
                image_png_base64=base64.b64encode(shown.png).decode("ascii"),
            ),
        )


class BatchController(Controller):
    """Several images in one request (repeated multipart field ``images``)."""

    @post(
        "/predict/batch",
        status_code=200,
        summary="Classify up to APP_BATCH_MAX images (32 by default)",
        operation_class=_multipart_operation(BATCH_FIELD, many=True),
        responses=_ERRORS,
    )
    async def predict_batch(
        self, request: Request[Any, Any, Any], service: InferenceService, settings: Settings
    ) -> BatchResponse:
        """Repeated multipart fields ``images``; results in order, bad images get own errors."""
        uploads = await read_uploads(
            request, BATCH_FIELD, settings.batch_max, settings.max_upload_bytes
        )
        outcomes = await service.analyse_many([u.data for u in uploads])
        model = model_info(service.classifier)
        items: list[BatchItem] = []
        for i, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True)):
            if isinstance(outcome, ImageRejectedError):
                reasons = gate_body(outcome.result).reasons
                items.append(
                    BatchItem(
                        i, upload.filename, error=outcome.code, detail=str(outcome), reasons=reasons
                    )
                )
            elif isinstance(outcome, ImageError):
                items.append(BatchItem(i, upload.filename, error=outcome.code, detail=str(outcome)))
            else:
                items.append(BatchItem(i, upload.filename, result=to_response(outcome, model)))
        failed = sum(1 for item in items if item.error)
        return BatchResponse(count=len(items), failed=failed, results=items)


# The live sockets' (this one and app/routes/live.py's): not ready, they close with 1013 (try
# again later) rather than answer 503.
LIVE = {
    "service": Provide(deps.ready_service_or_none, sync_to_thread=False),
    "metrics": Provide(deps.metrics, sync_to_thread=False),
}


class LiveController(Controller):
    """A kiosk's camera stream: frames in, predictions out, over one WebSocket."""

    dependencies = LIVE

    @websocket("/live")
    async def live(
        self,
        socket: WebSocket[Any, Any, Any],
        service: InferenceService | None,
        metrics: Metrics | None,
    ) -> None:
        """Binary JPEG/PNG frames in, one JSON prediction per processed frame out.

        Only the newest unprocessed frame is kept: when frames arrive faster than the model
        runs, older ones are dropped (never queued) and each reply says how many.
        """
        if service is None:
            await socket.close(code=WS_1013_TRY_AGAIN_LATER, reason="model is loading")
            return
        await socket.accept()
        await LiveSession(socket, service, metrics).run()


def _with_body_limit(controller: type[Controller], max_bytes: int) -> type[Controller]:
    """``controller`` with the request body limit the settings decide (a layer attribute that
    Litestar reads from the class, so a subclass per limit)."""
    return type(controller.__name__, (controller,), {"request_max_body_size": max_bytes})


def build_api_router(settings: Settings, guards: Sequence[Guard] = ()) -> Router:
    """All JSON API endpoints on one Router: attach auth here via ``guards``.

    Args:
        guards: Litestar guards (e.g. an API-token check) applied to every API route,
            WebSocket included.
    """
    one_image = settings.max_upload_bytes + _MULTIPART_OVERHEAD
    # A batch is many images but not many maximal ones: bound the whole body too.
    batch = 4 * settings.max_upload_bytes + _MULTIPART_OVERHEAD
    return Router(
        path=API_PREFIX,
        route_handlers=[
            _with_body_limit(PredictionController, one_image),
            _with_body_limit(BatchController, batch),
            LiveController,
        ],
        guards=list(guards),
        security=SECURITY if guards else None,  # declared in the schema when it is required
        dependencies={
            "service": Provide(deps.ready_service, sync_to_thread=False),
            "settings": Provide(deps.settings, sync_to_thread=False),
        },
        tags=["api"],
    )
